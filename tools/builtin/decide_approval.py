"""Tool ``decide_approval``: approve or deny a CAB request or a risk exception (agent → tools
→ control plane)."""

from __future__ import annotations

from typing import Any, Final, Literal

from tools.builtin.render import quoted
from tools.builtin.resolve import best_effort_path, common_scope_path, scope_path
from tools.errors import ControlPlaneError, NotFoundError
from tools.registry import Json, Proposal, ToolContext, ToolInputError, ToolResult, tool

COMMENT_MAX: Final = 2000
"""The control plane's limit on a decision's comment."""


@tool(
    "approval.decide",
    mutating=True,
    examples=(
        "Approve the zoom CAB request apr_c10a22a7f6744be3a05e",
        "Deny apr_19d352e5a5a146d8a19f: the sensor update has no rollback plan",
        "Approve the pending exception exc_0123 with comment 'scanner false positive'",
    ),
)
async def decide_approval(
    ctx: ToolContext,
    approval_id: str,
    decision: Literal["approve", "deny"],
    comment: str = "",
) -> Proposal:
    """Approve or deny a CAB request or risk exception that waits for your decision.

    Only what pending_approvals lists for you can be decided: never your own request, and
    only with the role it needs. The decision is proposed first and made once you confirm.

    Args:
        approval_id: The id pending_approvals shows, such as ``apr_…`` for a CAB request or
            ``exc_…`` for a risk exception.
        decision: ``approve`` or ``deny``.
        comment: Why, in the person's words; recorded with the decision (at most 2000
            characters, may be empty).
    """
    wanted = approval_id.strip()
    if len(comment) > COMMENT_MAX:
        raise ToolInputError(f"the comment is {len(comment)} characters; at most {COMMENT_MAX}")
    pending = await ctx.cp.pending_approvals(ctx.act_as, request_id=ctx.request_id)
    item = next((i for i in pending.items if i["id"] == wanted), None)
    if item is None:
        raise ToolInputError(await _why_not(ctx, wanted))
    kind = str(item["kind"])
    if kind == "exception":
        path = await _exception_path(ctx, str(item["version_id"]))
    else:
        intent = await ctx.cp.intent(ctx.act_as, item["subject_id"], request_id=ctx.request_id)
        path = await scope_path(ctx, intent["target_scope_id"])
    verb = "Approve" if decision == "approve" else "Deny"
    what = "risk exception" if kind == "exception" else "CAB request"
    return Proposal(
        arguments={
            "approval_id": wanted,
            "kind": kind,
            "decision": decision,
            "comment": comment,
        },
        summary=f"{verb} {what} {wanted}: {quoted(item['summary'], 200)}",
        scope_path=path,
    )


@decide_approval.executor
async def _decide(ctx: ToolContext, arguments: Json) -> ToolResult:
    approval_id, decision = arguments["approval_id"], arguments["decision"]
    doc: dict[str, Any]
    if arguments["kind"] == "exception":
        doc = await ctx.cp.decide_exception(
            ctx.act_as,
            approval_id,
            decision,
            arguments["comment"],
            idempotency_key=ctx.idempotency_key,
            request_id=ctx.request_id,
        )
        try:
            path = await _exception_path(ctx, str(doc["version_id"]))
        except ControlPlaneError:
            path = ()  # the decision is made; a failed read must not hide that
        state = doc.get("state", decision)
    else:
        doc = await ctx.cp.decide_approval(
            ctx.act_as,
            approval_id,
            decision,
            arguments["comment"],
            idempotency_key=ctx.idempotency_key,
            request_id=ctx.request_id,
        )
        path = await _approval_path(ctx, doc)
        state = doc.get("decision", decision)
    text = f"{approval_id} is {state}"
    if doc.get("expires_at") and state == "approved":
        text += f" until {doc['expires_at']}"
    return ToolResult(data=doc, text=text + ".", scope_path=path)


async def _approval_path(ctx: ToolContext, approval: Json) -> tuple[str, ...]:
    if approval.get("subject_type") != "intent":
        return ()
    try:
        intent = await ctx.cp.intent(ctx.act_as, approval["subject_id"], request_id=ctx.request_id)
    except NotFoundError:
        return ()
    return await best_effort_path(ctx, [intent["target_scope_id"]])


async def _exception_path(ctx: ToolContext, version_id: str) -> tuple[str, ...]:
    """Where an exception's version may go: the deepest scope holding the app's scopes."""
    version = await ctx.cp.version(ctx.act_as, version_id, request_id=ctx.request_id)
    app = await ctx.cp.app(ctx.act_as, version["application_id"], request_id=ctx.request_id)
    return await common_scope_path(ctx, app["allowed_scope_ids"])


async def _why_not(ctx: ToolContext, approval_id: str) -> str:
    """Why ``approval_id`` is not among the caller's pending decisions, as a sentence."""
    fallback = f"{approval_id!r} is not among what you may decide now; pending_approvals lists it"
    if not approval_id.startswith("apr_"):
        return fallback
    try:
        doc = await ctx.cp.approval(ctx.act_as, approval_id, request_id=ctx.request_id)
    except NotFoundError:
        return f"there is no approval {approval_id!r} that you can see"
    if doc["decision"] != "pending":
        by = f" by {quoted(doc['approver'], 100)}" if doc.get("approver") else ""
        return f"approval {approval_id} is {doc['decision']} already{by}"
    requester = str(doc["requested_by"]).split(" (via ", 1)[0]
    if requester == ctx.act_as:
        return (
            f"you requested approval {approval_id}; someone else must decide it "
            "(separation of duties)"
        )
    return f"{fallback}; it needs the {doc['required_role']} role"
