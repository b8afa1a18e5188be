"""Control plane demo data: a deterministic, realistic tenant for ``serve --demo``.

Contoso has four departments, teams with environments and device groups, layered policy
bundles, a few thousand devices with 150-300 packages each, and devices drifting in every
category (plus stale and never-reporting ones in state unknown).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import insert, select

from controlplane.access import hash_token
from controlplane.api.tenancy import create_tenant_records, issue_token
from controlplane.models import (
    ApiToken,
    Device,
    DeviceScope,
    PolicyBundle,
    Principal,
    Scope,
    Tenant,
    new_id,
    utcnow,
)
from controlplane.policy_store import bump_revision
from controlplane.recompute import recompute_tenant
from controlplane.signing import digest
from controlplane.state import ServiceState

log = logging.getLogger(__name__)

TENANT: Final = "contoso"
DEVICES: Final = 3000
SEED: Final = 20261122

PRINCIPALS: Final = (
    # name, roles, scope (dotted path of names below the organization; "" = whole org)
    ("ana", ["platform_admin", "cab_approver", "endpoint_ops"], ""),
    ("li", ["cab_approver", "auditor"], ""),
    ("sam", ["endpoint_ops"], "engineering"),
    ("priya", ["operator"], "engineering.platform"),
    ("omar", ["publisher", "packaging_engineer"], ""),
    ("vera", ["viewer"], "finance"),
    ("aud", ["auditor"], ""),
    ("sara", ["security_reviewer"], ""),
    ("fleet-agent", ["operator"], ""),
)
GATEWAY: Final = "goodbot-gateway"

TREE: Final = {
    "engineering": {
        "platform": {"workstations": ["canary-macs"], "build-agents": []},
        "web": {"workstations": ["frontend-lab"]},
        "mobile": {"workstations": []},
        "data": {"workstations": [], "notebooks": []},
    },
    "finance": {"accounting": {"workstations": []}},
    "design": {"brand": {"workstations": []}},
    "sales": {"field": {"laptops": []}},
}

COMMON: Final = [
    ("brew", "git", "2.47.1"),
    ("brew", "openssl@3", "3.4.0"),
    ("brew", "curl", "8.11.1"),
    ("brew", "jq", "1.7.1"),
    ("brew", "wget", "1.25.0"),
    ("brew", "gnupg", "2.4.7"),
    ("brew", "node", "22.12.0"),
    ("brew", "python@3.12", "3.12.8"),
    ("brew", "go", "1.23.4"),
    ("brew", "terraform", "1.9.5"),
    ("brew", "kubectl", "1.31.3"),
    ("brew", "awscli", "2.22.20"),
    ("brew", "firefox", "133.0"),
    ("brew", "google-chrome", "131.0.6778.140"),
    ("npm", "typescript", "5.7.2"),
    ("npm", "eslint", "9.17.0"),
    ("npm", "pnpm", "9.15.0"),
    ("pip", "requests", "2.32.3"),
    ("pip", "boto3", "1.35.86"),
    ("pip", "black", "24.10.0"),
]


@dataclass(frozen=True)
class DemoScopes:
    ids: dict[str, str]
    """Dotted name path (``engineering.platform.workstations``) → scope id."""


def _bundles(s: dict[str, str], root: str) -> list[dict[str, Any]]:
    return [
        {
            "policy_id": "org-baseline",
            "policy_version": 3,
            "scope_bindings": [root],
            "description": "Baseline for every managed Mac at Contoso.",
            "required_packages": [
                {"manager": "brew", "name": "git", "versions": ">=2.40"},
                {"manager": "brew", "name": "openssl@3"},
            ],
            "denied_packages": [
                {"manager": "brew", "name": "telnet"},
                {"manager": "brew", "name": "openssl@1.1"},
                {"manager": "npm", "name": "event-stream", "versions": "==3.3.6"},
            ],
            "allowed_packages": [{"manager": "brew", "name": "node", "versions": ">=20"}],
            "guarded_action_rules": [
                {"action": "upgrade_all"},
                {"action": "uninstall", "manager": "brew", "name": "git"},
            ],
            "managed_managers": ["brew", "npm", "pip"],
            "auto_remediation_mode": "observe",
            "upgrade_windows": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "start": "18:00",
                    "end": "07:00",
                    "timezone": "Europe/Berlin",
                }
            ],
        },
        {
            "policy_id": "engineering-tools",
            "policy_version": 7,
            "scope_bindings": [s["engineering"]],
            "description": "Toolchains engineering supports.",
            "required_packages": [{"manager": "brew", "name": "jq"}],
            "allowed_packages": [
                {"manager": "brew", "name": "python@3.12", "versions": ">=3.12.4"},
                {"manager": "brew", "name": "go", "versions": ">=1.22"},
            ],
            "auto_remediation_mode": "assist",
        },
        {
            "policy_id": "platform-team",
            "policy_version": 12,
            "scope_bindings": [s["engineering.platform"]],
            "description": "Platform engineers pin terraform for state compatibility.",
            "required_packages": [
                {"manager": "brew", "name": "terraform"},
                {"manager": "brew", "name": "kubectl", "versions": ">=1.30"},
            ],
            "pin_rules": [{"manager": "brew", "name": "terraform", "version": "1.9.5"}],
        },
        {
            "policy_id": "finance-lockdown",
            "policy_version": 2,
            "scope_bindings": [s["finance"]],
            "description": "Finance machines: no developer toolchains.",
            "denied_packages": [
                {"manager": "brew", "name": "node"},
                {"manager": "brew", "name": "go"},
            ],
            "auto_remediation_mode": "enforce",
        },
        {
            "policy_id": "canary-node",
            "policy_version": 1,
            "scope_bindings": [s["engineering.platform.workstations.canary-macs"]],
            "description": "Canary group may run the newest node.",
            "allowed_packages": [{"manager": "brew", "name": "node", "versions": ">=23"}],
        },
    ]


async def ensure_demo(state: ServiceState) -> Path:
    """Create the demo tenant once; (re)write the demo tokens file if it is missing."""
    tokens_file = state.settings.data_dir / "demo-tokens.json"
    async with state.sessions() as session:
        tenant = (
            await session.execute(select(Tenant).where(Tenant.name == TENANT))
        ).scalar_one_or_none()
    if tenant is None:
        tokens = await _create(state)
        await recompute_tenant(state, tokens["tenant_id"])
    elif not tokens_file.exists():
        tokens = await _reissue(state, tenant.id)
    else:
        return tokens_file
    tokens_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(tokens, out, indent=2)
    return tokens_file


async def _reissue(state: ServiceState, tenant_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant_id": tenant_id, "tokens": {}}
    async with state.writing() as session:
        principals = (
            await session.execute(select(Principal).where(Principal.tenant_id == tenant_id))
        ).scalars()
        for principal in principals:
            secret = issue_token()
            session.add(
                ApiToken(
                    id=new_id("tok"),
                    tenant_id=tenant_id,
                    principal_id=principal.id,
                    token_hash=hash_token(secret),
                    name="demo",
                )
            )
            out["tokens"][principal.name] = {"token": secret, "roles": principal.roles}
    return out


async def _create(state: ServiceState) -> dict[str, Any]:
    rng = random.Random(SEED)
    now = utcnow()
    async with state.writing() as session:
        created = await create_tenant_records(
            session, TENANT, "owner", "demo-seed", tenant_id="ten_contoso"
        )
        tenant_id, root = created.id, created.root_scope_id
        ids: dict[str, str] = {}
        rows: list[dict[str, Any]] = []
        levels = ("department", "team", "environment", "device_group")

        def add(path: str, name: str, level: str, parent: str, parent_path: str) -> None:
            scope_id = "scp_" + path.replace(".", "_").replace("-", "_")[:36]
            ids[path] = scope_id
            rows.append(
                {
                    "id": scope_id,
                    "tenant_id": tenant_id,
                    "parent_id": parent,
                    "level": level,
                    "name": name,
                    "path": f"{parent_path}{scope_id}/",
                    "created_at": now,
                }
            )

        def walk(node: Any, prefix: str, depth: int, parent: str, parent_path: str) -> None:
            items = node.items() if isinstance(node, dict) else ((n, None) for n in node)
            for name, child in items:
                path = f"{prefix}.{name}" if prefix else name
                add(path, name, levels[depth], parent, parent_path)
                if child is not None:
                    walk(child, path, depth + 1, ids[path], rows[-1]["path"])

        walk(TREE, "", 0, root, f"/{root}/")
        await session.execute(insert(Scope), rows)
        tokens: dict[str, Any] = {
            "tenant_id": tenant_id,
            "tokens": {"owner": {"token": created.owner_token, "roles": ["owner"]}},
        }
        for name, roles, where in (*PRINCIPALS, (GATEWAY, ["viewer"], "")):
            principal = Principal(
                id=f"prn_{name.replace('-', '_')}",
                tenant_id=tenant_id,
                name=name,
                kind="service" if name == GATEWAY else "user",
                roles=roles,
                scope_id=ids[where] if where else root,
                may_act_for_others=name == GATEWAY,
            )
            session.add(principal)
            await session.flush()
            secret = issue_token()
            session.add(
                ApiToken(
                    id=new_id("tok"),
                    tenant_id=tenant_id,
                    principal_id=principal.id,
                    token_hash=hash_token(secret),
                    name="demo",
                )
            )
            tokens["tokens"][name] = {"token": secret, "roles": roles}
        await session.flush()
        for doc in _bundles(ids, root):
            session.add(
                PolicyBundle(
                    id=new_id("pb"),
                    tenant_id=tenant_id,
                    policy_id=doc["policy_id"],
                    policy_version=doc["policy_version"],
                    content=doc,
                    digest=digest(doc),
                    key_id=state.signer.key_id,
                    signature=state.signer.sign(doc),
                    created_by="ana",
                )
            )
        await bump_revision(session, tenant_id)
        devices, members = _devices(rng, tenant_id, ids, now)
        for start in range(0, len(devices), 500):
            await session.execute(insert(Device), devices[start : start + 500])
        await session.execute(insert(DeviceScope), members)
    return tokens


def _leaf_groups(ids: dict[str, str]) -> list[str]:
    leaves = [p for p in ids if not any(o.startswith(p + ".") for o in ids)]
    return sorted(p for p in leaves if p.count(".") >= 2)


def _ring(n: int, leaf: str) -> int:
    """Rollout ring of demo device ``n``: a small lab, 5 % canary, 15 % pilot, 30 % department."""
    if leaf.endswith("canary-macs") and n % 10 == 0:
        return 0
    bucket = (n * 37) % 100
    return 1 if bucket < 5 else 2 if bucket < 20 else 3 if bucket < 50 else 4


def _devices(
    rng: random.Random, tenant_id: str, ids: dict[str, str], now: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    catalog = [
        (
            "brew",
            f"formula-{i:04d}",
            f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
        )
        for i in range(2500)
    ]
    catalog += [
        ("npm", f"pkg-{i:04d}", f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.0") for i in range(1500)
    ]
    catalog += [
        ("pip", f"py-{i:04d}", f"{rng.randint(0, 5)}.{rng.randint(0, 40)}") for i in range(1000)
    ]
    leaves = _leaf_groups(ids)
    devices: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    for n in range(DEVICES):
        leaf = leaves[n % len(leaves)]
        device_id = f"dev_{n:06d}"
        installed = {(m, p): v for m, p, v in COMMON}
        for m, p, v in rng.sample(catalog, rng.randint(130, 280)):
            installed[(m, p)] = v
        if leaf.startswith("finance"):
            installed.pop(("brew", "node"))  # finance machines carry no developer toolchains
            installed.pop(("brew", "go"))
        if leaf.endswith("canary-macs"):
            installed[("brew", "node")] = "23.3.0"  # the canary group runs the newest node
        pinned = {("brew", "terraform")} if leaf.startswith("engineering.platform") else set()
        drift = n % 25  # one device in 25 drifts, each kind in turn
        if drift == 1:
            installed.pop(("brew", "git"))  # missing_required
        elif drift == 2:
            installed[("brew", "telnet")] = "0.17"  # present_denied
        elif drift == 3:
            installed[("brew", "node")] = "18.20.5"  # version_out_of_range
        elif drift == 4:
            pinned.discard(("brew", "terraform"))  # pin_mismatch (platform team only)
            installed[("brew", "terraform")] = "1.10.3"
        elif drift == 5:
            installed[("cargo", "ripgrep")] = "14.1.1"  # unmanaged_toolchain
        if leaf.startswith("finance") and drift == 6:
            installed[("brew", "go")] = "1.23.4"  # denied in finance
        last = now - timedelta(minutes=rng.randint(1, 60 * 24))
        seq = rng.randint(1, 500)
        if n % 97 == 0:
            last = now - timedelta(days=30)  # stale check-in: unknown
        inventory = sorted([m, p, v, (m, p) in pinned] for (m, p), v in installed.items())
        never = n % 211 == 0  # never reported: unknown
        devices.append(
            {
                "id": device_id,
                "tenant_id": tenant_id,
                "name": f"mac-{n:05d}",
                "platform": "macos",
                "site_class": rng.choice(["online"] * 8 + ["intermittent"] * 2),
                "managed_mode": "managed-enforced" if n % 3 else "managed-readonly",
                "ring": _ring(n, leaf),
                "last_checkin_at": None if never else last,
                "inventory_seq": -1 if never else seq,
                "inventory": [] if never else inventory,
                "created_at": now,
                "updated_at": now,
            }
        )
        members.append({"device_id": device_id, "scope_id": ids[leaf], "tenant_id": tenant_id})
    return devices, members
