"""Operator commands on the local configuration and store: policy explain, audit, retention."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from gateway.app import database_url
from gateway.settings import ConfigError, GatewaySettings
from policy.loader import PolicyError, PolicySource
from policy.model import CHANNELS
from sessions.store import SessionStore


def policy_file(settings: GatewaySettings) -> Path:
    """The policy file ``serve`` uses with these settings."""
    path = settings.policy_file or settings.data_dir / "policy.yaml"
    if not path.exists():
        raise ConfigError("policy_file", f"no policy file at {path} (start `goodbot serve` once)")
    return path


def explain(
    settings: GatewaySettings, principal: str, tool: str, channel: str, scopes: list[str]
) -> int:
    """``goodbot policy explain``: print the deciding rule; exit 0 when allowed, 1 when denied."""
    try:
        policy = PolicySource.load(policy_file(settings)).current
    except PolicyError as exc:
        print(f"policy error: {exc.where}: {exc.reason}", file=sys.stderr)
        return 2
    if channel not in CHANNELS:
        print(
            f"goodbot: unknown channel {channel!r} (one of {', '.join(CHANNELS)})", file=sys.stderr
        )
        return 2
    action = tool
    if "." not in tool:
        from gateway.app import default_registry

        spec = default_registry().get(tool)
        if spec is None:
            print(f"goodbot: no tool named {tool!r}", file=sys.stderr)
            return 2
        action = spec.action
    ref = policy.principal(principal)
    decision = policy.decide(ref, action, channel, tuple(scopes))
    verdict = "allowed" if decision.allowed else "denied"
    print(f"{verdict}: {principal} {action} on {channel}")
    print(f"  rule: {decision.rule}")
    print(f"  reason: {decision.reason}")
    print(f"  policy revision: {policy.revision}")
    return 0 if decision.allowed else 1


async def _open(settings: GatewaySettings) -> SessionStore:
    return await SessionStore.open(database_url(settings), schema=settings.database.schema_name)


async def verify(settings: GatewaySettings) -> int:
    """``goodbot audit verify``: 0 when the chain is intact, 1 naming the first bad record."""
    store = await _open(settings)
    try:
        check = await store.verify_audit()
    finally:
        await store.close()
    if check.ok:
        print(f"audit chain OK: {check.checked} records, head seq {check.head_seq}")
        return 0
    print(f"audit chain BROKEN at seq {check.first_bad_seq}: {check.problem}")
    return 1


async def export(settings: GatewaySettings, after: int | None) -> int:
    """``goodbot audit export --format jsonl``: the chain on stdout."""
    store = await _open(settings)
    try:
        async for line in store.export_audit(after_seq=after):
            sys.stdout.write(line)
    finally:
        await store.close()
    return 0


async def purge(settings: GatewaySettings, older_than: timedelta) -> int:
    """``goodbot sessions purge --older-than``: apply retention and print the counts."""
    store = await _open(settings)
    try:
        purged = await store.purge(older_than)
        notifications = await store.notifications.purge_delivered(older_than)
    finally:
        await store.close()
    print(
        f"purged {purged.messages} messages, {purged.processed_events} delivery ids, "
        f"{purged.confirmations} confirmations, {purged.conversations} conversations, "
        f"{notifications} delivered notifications"
    )
    return 0


async def migrate(settings: GatewaySettings) -> int:
    """``goodbot migrate``: bring the gateway's tables to the newest migration and exit.

    The step a deployment runs before starting replicas with ``database.migrate_on_start``
    off (the Kubernetes Job in ``deploy/k8s``); concurrent runs queue on an advisory lock.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from sessions.db import create_engine, current_revision
    from sessions.db import migrate as upgrade

    engine = create_engine(database_url(settings), settings.database.schema_name)
    try:
        await upgrade(engine)
        revision = await current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"goodbot: migration failed: {reason}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(f"gateway schema is up to date (revision {revision})")
    return 0


def demo_init(settings: GatewaySettings, controlplane_tokens: Path | None) -> int:
    """``goodbot policy demo``: write the demo policy and tokens into the data directory.

    What ``goodbot serve`` writes at its first start with the embedded control plane, for
    replicas that share one policy (compose, a volume). With ``--controlplane-tokens`` (the
    demo control plane's ``demo-tokens.json``) the gateway's credential is also written to
    ``DATA_DIR/controlplane-token`` for ``controlplane.token_file``. Never overwrites.
    """
    import json

    from gateway.bootstrap import demo_policy, write_secret

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = demo_policy(settings.data_dir)
    print(f"policy: {path}")
    if controlplane_tokens is not None:
        target = settings.data_dir / "controlplane-token"
        if not target.exists():
            tokens = json.loads(controlplane_tokens.read_text())["tokens"]
            write_secret(target, tokens["goodbot-gateway"]["token"])
        print(f"controlplane token file: {target}")
    return 0
