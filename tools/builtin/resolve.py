"""Tool name resolution: apps, versions, rollouts, scopes and devices as people name them
(tools → control plane).

Every lookup goes through the control plane as the acting principal, so a person never
resolves a name they could not read. A name that fits nothing, or fits several things, is a
``ToolInputError`` that lists what does exist or what it could mean, so the person (or the
model) can say which; nothing is guessed. ``explain_error`` renders a control-plane refusal as
sentences for people.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from tools.builtin.render import RINGS, one_line, ring_label
from tools.errors import ControlPlaneError, NotAllowedError, NotFoundError
from tools.registry import Json, ToolContext, ToolInputError

log = logging.getLogger(__name__)

LAST_RING: Final = max(RINGS)
IN_FLIGHT: Final = ("active", "paused")
"""Intent states of a rollout that is still moving (the ring verbs apply)."""
REASON_MAX: Final = 500
"""The control plane's limit on a pause, resume or rollback reason."""
SHOWN: Final = 10
"""Most candidates an ambiguity or not-found message lists."""
_LEVEL_WORDS: Final = {
    "organization": "organization",
    "organisation": "organization",
    "org": "organization",
    "department": "department",
    "dept": "department",
    "team": "team",
    "environment": "environment",
    "env": "environment",
    "group": "device_group",
    "device group": "device_group",
    "device_group": "device_group",
}
_RING_ALIASES: Final = {"broad": 3, "dept": 3, "general": 4, "ga": 4}
"""What people also call rings 3 and 4 (the rules route's words among them)."""
_SEPARATORS: Final = re.compile(r"[\s_]+")
_WORDS: Final = re.compile(r"[-._+]")


@dataclass(frozen=True, slots=True)
class RolloutTarget:
    """A rollout resolved from an app (and maybe a version), with what names it."""

    rollout: Json
    """The rollout as ``GET /rollouts`` lists it (ring, status, intent state, last gates)."""
    app: Json
    """Its application."""
    version: Json
    """Its version."""
    scope_path: tuple[str, ...]
    """Scope ids from the organization root down to the rollout's target scope."""

    @property
    def label(self) -> str:
        """``google-chrome 131.0.6778``."""
        return f"{self.app['name']} {self.version['version']}"


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _norm(name: str) -> str:
    return _SEPARATORS.sub("-", name.strip().casefold())


# -- applications and versions --------------------------------------------------------------


async def find_app(ctx: ToolContext, name: str) -> Json:
    """The application ``name`` means: an ``app_…`` id, its name in any case, or an unambiguous
    short name (``chrome`` for ``google-chrome``: a prefix of the name or of one of its words,
    else a part of the name).

    Raises:
        ToolInputError: Nothing matches (the catalog's names are listed) or several do.
    """
    wanted = _norm(name)
    if not wanted:
        raise ToolInputError("name the application, such as firefox or google-chrome")
    if name.strip().casefold().startswith("app_"):
        try:
            return await ctx.cp.app(ctx.act_as, name.strip(), request_id=ctx.request_id)
        except NotFoundError:
            raise ToolInputError(f"there is no application with id {name.strip()!r}") from None
    apps = await ctx.cp.apps(ctx.act_as, request_id=ctx.request_id)
    names = {a["id"]: _norm(str(a["name"])) for a in apps}
    tiers = (
        [a for a in apps if names[a["id"]] == wanted],
        [
            a
            for a in apps
            if names[a["id"]].startswith(wanted)
            or any(w.startswith(wanted) for w in _WORDS.split(names[a["id"]]))
        ],
        [a for a in apps if len(wanted) >= 3 and wanted in names[a["id"]]],
    )
    for found in tiers:
        if len(found) == 1:
            return found[0]
        if found:
            listed = _listing(sorted(str(a["name"]) for a in found))
            raise ToolInputError(f"{name.strip()!r} could mean {listed}; say which application")
    known = _listing(sorted(str(a["name"]) for a in apps))
    raise ToolInputError(f"no application matches {name.strip()!r}; the catalog has {known}")


def pick_version(app: Json, versions: Sequence[Json], wanted: str) -> Json:
    """The version ``wanted`` means among ``versions``: its id, its exact string, or a prefix
    of it (``131`` for ``131.0.6778``; whole components first, then any prefix).

    Raises:
        ToolInputError: No version or several versions match.
    """
    text = wanted.strip()
    if text[:1] in ("v", "V") and text[1:2].isdigit():
        text = text[1:]
    if not text:
        raise ToolInputError("name the version, such as 131.0.6778 or 131")
    strings = [str(v["version"]) for v in versions]
    tiers = (
        [v for v in versions if text in (v["id"], v["version"])],
        [
            v
            for v, s in zip(versions, strings, strict=True)
            if s.startswith((f"{text}.", f"{text}-"))
        ],
        [v for v, s in zip(versions, strings, strict=True) if s.startswith(text)],
    )
    for found in tiers:
        if len(found) == 1:
            return found[0]
        if found:
            listed = _listing(sorted((str(v["version"]) for v in found), key=version_key))
            raise ToolInputError(f"{app['name']} {text} could mean {listed}; say which version")
    known = _listing(sorted(strings, key=version_key)) or "none"
    raise ToolInputError(f"{app['name']} has no version {text!r}; its versions: {known}")


async def find_version(ctx: ToolContext, app: Json, wanted: str) -> Json:
    """The version of ``app`` that ``wanted`` means (see ``pick_version``)."""
    versions = await ctx.cp.versions(ctx.act_as, app["id"], request_id=ctx.request_id)
    return pick_version(app, versions, wanted)


# -- rollouts -------------------------------------------------------------------------------


async def app_rollouts(
    ctx: ToolContext, app: str, version: str | None = None
) -> tuple[Json, dict[str, Json], list[Json]]:
    """An application, its versions by id, and its rollouts the principal can see (only the
    named version's when ``version`` is given).

    Raises:
        ToolInputError: The app or version does not resolve, or the version has no rollout.
    """
    app_doc = await find_app(ctx, app)
    versions = await ctx.cp.versions(ctx.act_as, app_doc["id"], request_id=ctx.request_id)
    rollouts = await ctx.cp.rollouts(ctx.act_as, app_id=app_doc["id"], request_id=ctx.request_id)
    by_id = {v["id"]: v for v in versions}
    if version is not None:
        chosen = pick_version(app_doc, versions, version)
        rollouts = [r for r in rollouts if r["version_id"] == chosen["id"]]
        if not rollouts:
            raise ToolInputError(f"{app_doc['name']} {chosen['version']} has no rollout")
    return app_doc, by_id, rollouts


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sorts versions as people expect: ``9.1`` before ``10.0``, numbers before words."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"[.+-]", version)
    )


def version_of(rollout: Json, versions: dict[str, Json]) -> Json:
    """The rollout's version, or a stand-in naming it by id when it was not listed."""
    return versions.get(rollout["version_id"]) or {
        "id": rollout["version_id"],
        "version": rollout["version_id"],
    }


async def find_rollout(
    ctx: ToolContext, app: str, version: str | None, *, completed: bool = False
) -> RolloutTarget:
    """The one rollout a ring verb acts on: the app's rollout in flight (active or paused),
    or, with ``version``, that version's (also a completed one when ``completed``).

    Raises:
        ToolInputError: Nothing in flight, or several rollouts fit (listed with versions).
    """
    app_doc, versions, rollouts = await app_rollouts(ctx, app, version)
    states = (*IN_FLIGHT, "completed") if completed else IN_FLIGHT
    found = [r for r in rollouts if r["intent_state"] in states]
    name = app_doc["name"]
    if not found:
        if version is None:
            raise ToolInputError(f"{name} has no rollout in flight")
        label = f"{name} {version_of(rollouts[0], versions)['version']}"
        raise ToolInputError(f"the rollout of {label} is {rollouts[0]['intent_state']}")
    if len(found) > 1:
        found.sort(key=lambda r: version_key(version_of(r, versions)["version"]))
        listed = "; ".join(
            f"{version_of(r, versions)['version']} in {ring_label(r['ring'])}, {r['status']} "
            f"(rollout {r['id']}, target {r['target_scope_id']})"
            for r in found
        )
        raise ToolInputError(f"{name} has several rollouts: {listed}; name the version")
    rollout = found[0]
    path = await scope_path(ctx, rollout["target_scope_id"])
    return RolloutTarget(rollout, app_doc, version_of(rollout, versions), path)


def verb_arguments(target: RolloutTarget, reason: str) -> Json:
    """The exact arguments of a pause, resume or rollback proposal."""
    ring = int(target.rollout["ring"])
    return {
        "rollout_id": target.rollout["id"],
        "app": target.app["name"],
        "version": target.version["version"],
        "ring": ring,
        "ring_name": RINGS.get(ring, str(ring)),
        "reason": reason,
    }


def check_reason(reason: str, *, required: bool) -> str:
    """A reason for a rollout's history, trimmed, within the control plane's limit.

    Raises:
        ToolInputError: It is empty and ``required``, or longer than ``REASON_MAX``.
    """
    text = reason.strip()
    if required and not text:
        raise ToolInputError("give a reason; it is recorded in the rollout's history")
    if len(text) > REASON_MAX:
        raise ToolInputError(f"the reason is {len(text)} characters; at most {REASON_MAX}")
    return text


def parse_ring(text: str) -> int:
    """A ring from its name (``pilot``) or number (``2``, ``ring 2``).

    Raises:
        ToolInputError: Neither.
    """
    words = text.strip().casefold().replace("ring", " ").split()
    wanted = " ".join(words)
    for number, ring_name in RINGS.items():
        if wanted in (str(number), ring_name):
            return number
    if wanted in _RING_ALIASES:
        return _RING_ALIASES[wanted]
    rings = ", ".join(ring_label(n) for n in RINGS)
    raise ToolInputError(f"{text.strip()!r} is not a ring; the rings are {rings}")


# -- scopes and devices ---------------------------------------------------------------------


def path_ids(path: str) -> tuple[str, ...]:
    """``("scp_root", …, "scp_x")`` from a scope's ``/scp_root/…/scp_x/`` path."""
    return tuple(p for p in path.split("/") if p)


async def scope_path(ctx: ToolContext, scope_id: str) -> tuple[str, ...]:
    """Scope ids from the organization root down to ``scope_id``.

    A principal may read rollouts that target an ancestor of their own scope but not that
    ancestor itself; then the path is cut from their own scope's path.
    """
    try:
        doc = await ctx.cp.scope(ctx.act_as, scope_id, request_id=ctx.request_id)
    except NotAllowedError:
        me = await ctx.cp.whoami(ctx.act_as, request_id=ctx.request_id)
        own = await ctx.cp.scope(ctx.act_as, me.scope_id, request_id=ctx.request_id)
        ids = path_ids(str(own["path"]))
        if scope_id not in ids:
            raise
        return ids[: ids.index(scope_id) + 1]
    return path_ids(str(doc["path"]))


async def common_scope_path(ctx: ToolContext, scope_ids: Iterable[str]) -> tuple[str, ...]:
    """The path to the deepest scope holding all of ``scope_ids`` (their own path if one)."""
    paths = [await scope_path(ctx, s) for s in dict.fromkeys(scope_ids)]
    if not paths:
        return ()
    common: list[str] = []
    for ids in zip(*paths, strict=False):
        if len(set(ids)) != 1:
            break
        common.append(ids[0])
    return tuple(common)


async def best_effort_path(ctx: ToolContext, scope_ids: Iterable[str]) -> tuple[str, ...]:
    """``common_scope_path`` after a change was made: a failed read must not turn a done
    change into an error, so it gives ``()`` and logs."""
    try:
        return await common_scope_path(ctx, scope_ids)
    except ControlPlaneError as exc:
        log.warning(
            "scope path unavailable after a change",
            extra={"request_id": ctx.request_id, "error": exc.code},
        )
        return ()


async def find_scope(ctx: ToolContext, text: str) -> Json:
    """The scope ``text`` means: an ``scp_…`` id, or a name as people say it (``web``,
    ``the web team``, ``Engineering department``); a trailing level word narrows by level.

    Raises:
        ToolInputError: No scope or several scopes fit (listed with their level and parent).
    """
    raw = " ".join(text.split())
    if raw.casefold().startswith("scp_"):
        try:
            return await ctx.cp.scope(ctx.act_as, raw, request_id=ctx.request_id)
        except NotFoundError:
            raise ToolInputError(f"there is no scope with id {raw!r}") from None
    full = raw.split()
    if full[:1] and full[0].casefold() == "the":
        full = full[1:]
    words, level = full, None
    for size in (2, 1):
        tail = " ".join(full[-size:]).casefold()
        if len(full) > size and tail in _LEVEL_WORDS:
            level, words = _LEVEL_WORDS[tail], full[:-size]
            break
    name = " ".join(words)
    if not name:
        raise ToolInputError("name the scope, such as web, engineering or scp_engineering_web")
    found = await _scopes_named(ctx, name)
    if level is not None:
        found = [s for s in found if s["level"] == level]
        if not found:
            # The level word may be part of the name itself ("web team").
            found = await _scopes_named(ctx, " ".join(full))
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"{level.replace('_', ' ')} " if level else ""
        raise ToolInputError(f"there is no {what}scope named {name!r} that you can see")
    described = await asyncio.gather(*(_describe_scope(ctx, s) for s in found[:SHOWN]))
    raise ToolInputError(
        f"{raw!r} could mean several scopes: {_listing(described)}; use the id or add the level"
    )


async def _scopes_named(ctx: ToolContext, name: str) -> list[Json]:
    found = list((await ctx.cp.find_scopes(ctx.act_as, name, request_id=ctx.request_id)).items)
    if not found and " " in name:
        # Scope names are often hyphenated (``build-agents``); people type a space.
        hyphened = name.replace(" ", "-")
        found = list(
            (await ctx.cp.find_scopes(ctx.act_as, hyphened, request_id=ctx.request_id)).items
        )
    return found


async def _describe_scope(ctx: ToolContext, scope: Json) -> str:
    where = str(scope.get("parent_id") or "")
    if where:
        try:
            parent = await ctx.cp.scope(ctx.act_as, where, request_id=ctx.request_id)
            where = f"{parent['level']} {parent['name']}"
        except ControlPlaneError:
            pass
    return f"{scope['id']} ({scope['level']} {scope['name']} under {where or 'nothing'})"


async def find_device(ctx: ToolContext, text: str) -> Json:
    """The device ``text`` means: a ``dev_…`` id or a device name (any case).

    Raises:
        ToolInputError: No device or several devices fit.
    """
    raw = text.strip()
    if not raw:
        raise ToolInputError("name the device, such as mac-00001 or dev_000001")
    if raw.casefold().startswith("dev_"):
        try:
            return await ctx.cp.device(ctx.act_as, raw, request_id=ctx.request_id)
        except NotFoundError:
            raise ToolInputError(f"there is no device with id {raw!r} that you can see") from None
    found = (await ctx.cp.find_devices(ctx.act_as, raw, request_id=ctx.request_id)).items
    if not found:
        raise ToolInputError(f"there is no device named {raw!r} that you can see")
    if len(found) > 1:
        raise ToolInputError(
            f"{raw!r} could mean several devices: {_listing(d['id'] for d in found)}; use the id"
        )
    return found[0]


# -- errors ---------------------------------------------------------------------------------


def explain_error(exc: ControlPlaneError) -> str:
    """A control-plane refusal as sentences for people: what was refused, each failed gate
    with its reason, the CAB approval it waits for, the rule of a denial and the request id.
    """
    details = exc.details
    failed = _failed_gates(details)
    headline = exc.message
    if failed:
        headline = headline.split(": gates failed", 1)[0]
    parts = [_sentence(one_line(headline))]
    if failed:
        parts.append(_sentence("Gates that failed: " + "; ".join(failed)))
    waiting = details.get("waiting_for")
    if isinstance(waiting, int) and waiting > 0:
        parts.append(f"It waits for {waiting} more devices to report.")
    if details.get("approval_id"):
        parts.append(
            f"It waits for CAB approval {one_line(details['approval_id'], 60)}; "
            "a CAB approver can decide it."
        )
    if isinstance(exc, NotAllowedError) and details.get("rule"):
        parts.append(f"Deciding rule: {one_line(details['rule'], 80)}.")
    if details.get("retry_after") is not None:
        parts.append(f"Try again in {one_line(details['retry_after'], 20)} s.")
    if exc.request_id:
        parts.append(f"Request id: {one_line(exc.request_id, 100)}.")
    return " ".join(parts)


def _failed_gates(details: Json) -> list[str]:
    rollout = details.get("rollout")
    recorded = rollout.get("gates") if isinstance(rollout, dict) else None
    gates = recorded if isinstance(recorded, list) else details.get("gates")
    if not isinstance(gates, list):
        return []
    failed = []
    for gate in gates:
        if not isinstance(gate, dict) or gate.get("verdict") != "failed":
            continue
        name = one_line(gate.get("name"), 60)
        if gate.get("reason"):
            failed.append(f"{name} ({one_line(gate['reason'])})")
        else:
            failed.append(
                f"{name} (measured {one_line(gate.get('measured'), 60)}, "
                f"needs {one_line(gate.get('threshold'), 60)})"
            )
    return failed


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", "…")) else text + "."
