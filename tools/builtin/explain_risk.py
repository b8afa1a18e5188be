"""Tool ``explain_risk``: a version's risk score, factor by factor (agent → tools → control
plane)."""

from __future__ import annotations

from tools.builtin.render import measure, quoted, ring_label, table
from tools.builtin.resolve import (
    IN_FLIGHT,
    common_scope_path,
    find_app,
    pick_version,
    version_key,
)
from tools.errors import NotFoundError
from tools.registry import Json, ToolContext, ToolInputError, ToolResult, tool


@tool(
    "risk.read",
    examples=(
        "Why does zoom need CAB approval?",
        "Explain the risk score of crowdstrike-falcon 7.18",
        "How risky is google-chrome 131?",
    ),
)
async def explain_risk(ctx: ToolContext, app: str, version: str | None = None) -> ToolResult:
    """Explain a version's risk score: each factor's input and points, and which rings need
    CAB approval and why.

    Args:
        app: The application's name (``zoom``, ``crowdstrike-falcon``, or a short name such as
            ``falcon``) or id.
        version: The version, exactly (``6.2.5``) or by prefix (``6``). Omit it to mean the
            version the app is rolling out (or its only version).
    """
    app_doc = await find_app(ctx, app)
    versions = await ctx.cp.versions(ctx.act_as, app_doc["id"], request_id=ctx.request_id)
    if version is not None:
        chosen = pick_version(app_doc, versions, version)
    else:
        chosen = await _current(ctx, app_doc, versions)
    label = f"{app_doc['name']} {chosen['version']}"
    try:
        risk = await ctx.cp.version_risk(ctx.act_as, chosen["id"], request_id=ctx.request_id)
    except NotFoundError:
        raise ToolInputError(f"{label} has no risk assessment yet") from None
    path = await common_scope_path(ctx, app_doc.get("allowed_scope_ids") or [])
    verdict = (
        "so CAB approval is required for the rings marked below"
        if risk.get("requires_cab")
        else "so the score alone requires no CAB approval"
    )
    privileged = " It is privileged tooling." if risk.get("privileged") else ""
    factors = table(
        ("Factor", "Input", "Weight", "Points", "Explanation"),
        [
            (
                f.get("name"),
                measure(f.get("input")) if not isinstance(f.get("input"), dict) else _pairs(f),
                f.get("weight"),
                measure(f.get("contribution")),
                f.get("explanation"),
            )
            for f in risk.get("factors") or []
        ],
    )
    rings = table(
        ("Ring", "CAB approval", "Why"),
        [
            (ring_label(int(r["ring"])), "required" if r.get("required") else "no", r.get("reason"))
            for r in risk.get("cab_by_ring") or []
        ],
    )
    justification = (risk.get("inputs") or {}).get("justification")
    text = (
        f"Risk of {label}: **{measure(risk.get('score'))}** against a CAB threshold of "
        f"{measure(risk.get('threshold'))}, {verdict}.{privileged} Assessed by "
        f"{quoted(risk.get('created_by'), 100)} at {risk.get('created_at')} (model "
        f"{risk.get('model_version')})."
    )
    if justification:
        text += f" Justification given: {quoted(justification)}."
    text += f"\n\n{factors}\n\n{rings}"
    data = {"app": {"id": app_doc["id"], "name": app_doc["name"]}, "version": chosen, "risk": risk}
    return ToolResult(data=data, text=text, scope_path=path)


def _pairs(factor: Json) -> str:
    value = factor.get("input")
    assert isinstance(value, dict)
    return ", ".join(f"{k} {measure(v)}" for k, v in value.items())


async def _current(ctx: ToolContext, app: Json, versions: list[Json]) -> Json:
    """The version an app is rolling out, or its only version; else ask which."""
    if len(versions) == 1:
        return versions[0]
    rollouts = await ctx.cp.rollouts(ctx.act_as, app_id=app["id"], request_id=ctx.request_id)
    moving = {r["version_id"] for r in rollouts if r["intent_state"] in IN_FLIGHT}
    found = [v for v in versions if v["id"] in moving]
    if len(found) == 1:
        return found[0]
    listed = ", ".join(sorted((str(v["version"]) for v in found or versions), key=version_key))
    raise ToolInputError(f"which version of {app['name']}? It has {listed}")
