"""Tool ``device_compliance``: one device's compliance and drift findings (agent → tools →
control plane)."""

from __future__ import annotations

from tools.builtin.render import table
from tools.builtin.resolve import common_scope_path, find_device
from tools.registry import ToolContext, ToolResult, tool


@tool(
    "compliance.read",
    examples=(
        "Is mac-00001 compliant?",
        "What is wrong with dev_000042?",
        "Show the drift findings on mac-00017",
    ),
)
async def device_compliance(ctx: ToolContext, device: str) -> ToolResult:
    """Show one device's compliance state and each violation or drift finding on it.

    Args:
        device: The device's name, such as ``mac-00001``, or its id, such as ``dev_000001``.
    """
    found = await find_device(ctx, device)
    record = await ctx.cp.device_compliance(ctx.act_as, found["id"], request_id=ctx.request_id)
    path = await common_scope_path(ctx, found.get("scope_ids") or [])
    violations = list(record.get("violations") or [])
    head = f"Compliance of device {found['id']}:\n\n" + table(
        ("Device", "Platform", "Ring", "State", "Policy", "Evaluated", "Reason"),
        [
            (
                found["name"],
                found.get("platform"),
                found.get("ring"),
                record.get("state", "unknown"),
                record.get("policy_version") or "none",
                record.get("evaluated_at") or "never",
                record.get("reason") or "",
            )
        ],
    )
    if violations:
        rows = [
            (
                v.get("category"),
                v.get("manager"),
                v.get("package"),
                v.get("action"),
                v.get("expected"),
                v.get("actual"),
                _origin(v.get("origin")),
            )
            for v in violations
        ]
        headers = ("Finding", "Manager", "Package", "Fix", "Expected", "Actual", "Required by")
        text = f"{head}\n\n{table(headers, rows)}"
    else:
        text = f"{head}\n\nNo violation or drift finding."
    data = {
        "device": {
            k: found.get(k) for k in ("id", "name", "platform", "ring", "scope_ids", "site_class")
        },
        "compliance": record,
    }
    return ToolResult(data=data, text=text, scope_path=path)


def _origin(origin: object) -> str:
    if not isinstance(origin, dict):
        return "—"
    return (
        f"{origin.get('policy_id')}@{origin.get('policy_version')} "
        f"({origin.get('level')} {origin.get('scope_id')})"
    )
