"""Rules route grammar: one chat message → the tool calls it asks for (used by ``agent.rules``).

Why a hand-written grammar and no NLP library: the embedded route must be deterministic (the
same words always make the same calls), auditable (every call traces back to one pattern in
the table below, whose examples say what it is for), and run with no model, no network and no
download. The requests are few and formulaic, so a short ordered table of patterns covers
them; anything else gets an honest "I didn't understand" instead of a guess.

How a message is read:

1. ``normalize``: curly quotes straightened, whitespace collapsed, courtesy stripped from both
   ends ("can you", "please", "thanks", trailing ``?!.``).
2. ``split_tail``: the text after "because" or ":" is the free-text reason or comment, kept as
   written, for the rules that take one.
3. The head is matched in full (``fullmatch``, case-insensitive) against ``RULES`` in order;
   the first match wins. Identifiers (apps, versions, rings, ``apr_``/``exc_``/``dev_`` ids,
   ``mac-NNNNN`` names) are lowercased, because the control plane spells them that way; scope
   phrases, reasons and comments are kept as written. App names are never expanded ("chrome"
   stays "chrome"): the tools resolve aliases.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Args = dict[str, Any]

RINGS: Final = ("lab", "canary", "pilot", "department", "global", "broad", "general")
"""Ring names as the control plane says them (0 lab … 4 global), and common synonyms."""
"""Ring names in order (ring 0 to ring 4)."""
CHANGES: Final = frozenset(
    {
        "decide_approval",
        "promote_rollout",
        "pause_rollout",
        "resume_rollout",
        "rollback_rollout",
        "book_meeting",
    }
)
"""Tools that propose a change; the loop lets a message propose only one."""

# Words that read like an app name in "promote the …" but never are one.
_RESERVED: Final = (
    "the|a|an|to|for|of|in|on|it|this|that|all|my|me|status|rollouts?|roll-outs?"
    "|deployments?|ring|version|risk|device|approvals?|events?|drift|compliance"
)
_FRAGMENTS: Final = {
    # An app: one token with at least one letter ("zoom", "google-chrome", "1password").
    "{APP}": rf"(?!(?:{_RESERVED})(?![\w+-]))(?P<app>(?=[\w+-]*[a-z])[a-z0-9][\w+-]*)",
    # A version: "131", "v131", "version 131.0.6778", "6.2.5".
    "{VER}": r"(?:v|version |ver )?(?P<version>\d+(?:\.\d+){0,4}(?:[-+][\w.]+)?)",
    # The word that may follow an app: "the zoom rollout".
    "{ROLL}": r"(?:roll-?outs?|deployments?|releases?|updates?|upgrades?)",
    "{RING}": (
        r"(?:ring ?-?(?P<ring_n>[0-4])"
        r"|(?P<ring>lab|canary|pilot|department|global|broad|general)(?: ring)?)"
    ),
    # A device: "dev_000001" or "mac-00042", or any name after the word "device".
    "{DEVICE}": r"(?:device (?=[\w.-])|(?=dev_|(?:mac|win|lnx|pc)-\d))(?P<device>[\w.-]+)",
    # Two to four device ids: "mac-00001 and mac-00002".
    "{DEVICES}": r"(?P<devices>(?:dev_\w+|(?:mac|win|lnx|pc)-\d+)"
    r"(?:(?:,? and |, | & )(?:dev_\w+|(?:mac|win|lnx|pc)-\d+)){1,3})",
    # A scope phrase as written, minus a leading "the": "web team", "scp_engineering_web".
    "{SCOPE}": r"(?:the )?(?P<scope>[\w.&'-]+(?: [\w.&'-]+){0,4}?)",
    # Where events happened: a device (by name or after "device") or a scope phrase.
    "{TARGET}": r"(?:device (?P<named>[\w.-]+)|(?:the )?(?P<target>[\w.&'-]+(?: [\w.&'-]+){0,4}?))",
    "{SHOW}": r"(?:(?:show|list|get|give|check|see|view|display|tell|explain)(?: me)?(?: all)? )?",
    "{WHAT}": r"(?:what(?:'?s| is| are)(?: the)? )?",
    # What waits for a decision: "pending CAB requests", "approvals or exceptions".
    "{QUEUE}": r"(?:(?:pending|open|outstanding|waiting|new) )?(?:cab |change |risk )?"
    r"(?:approvals?|requests?|exceptions?|decisions?)"
    r"(?: (?:or|and) (?:cab |risk )?(?:approvals?|requests?|exceptions?|decisions?))?",
}
_DEVICE_ID: Final = re.compile(r"dev_\w+|(?:mac|win|lnx|pc)-\d+", re.IGNORECASE)
APPROVAL_ID: Final = re.compile(r"(?:apr|exc)_\w+", re.IGNORECASE)
"""A CAB request (``apr_…``) or a risk exception (``exc_…``); decide_approval takes both."""


def _compile(template: str) -> re.Pattern[str]:
    for key, value in _FRAGMENTS.items():
        template = template.replace(key, value)
    return re.compile(template, re.IGNORECASE)


# --- argument builders: match → one arguments dict per call ------------------------------


def _no_args(m: re.Match[str]) -> list[Args]:
    del m
    return [{}]


def _app(m: re.Match[str]) -> Args:
    args: Args = {"app": m["app"].lower()}
    if m.groupdict().get("version"):
        args["version"] = m["version"].lower()
    return args


def _app_version(m: re.Match[str]) -> list[Args]:
    return [_app(m)]


def _promote(m: re.Match[str]) -> list[Args]:
    args = _app(m)
    groups = m.groupdict()
    if groups.get("ring_n"):
        args["to_ring"] = groups["ring_n"]
    elif groups.get("ring"):
        args["to_ring"] = groups["ring"].lower()
    return [args]


def _decide(m: re.Match[str]) -> list[Args]:
    verb = m["verb"].lower()
    decision = "approve" if verb.startswith(("approv", "accept", "ok", "allow", "lgtm")) else "deny"
    ids = [found.lower() for found in APPROVAL_ID.findall(m["ids"])]
    return [{"approval_id": found, "decision": decision} for found in dict.fromkeys(ids)]


def _device_name(name: str) -> str:
    return name.lower() if _DEVICE_ID.fullmatch(name) else name


def _device(m: re.Match[str]) -> list[Args]:
    return [{"device": _device_name(m["device"])}]


def _devices(m: re.Match[str]) -> list[Args]:
    names = dict.fromkeys(found.lower() for found in _DEVICE_ID.findall(m["devices"]))
    return [{"device": name} for name in names]


def _scope(m: re.Match[str]) -> list[Args]:
    scope = m["scope"]
    return [{"scope": scope.lower() if scope.lower().startswith("scp_") else scope}]


def _events(m: re.Match[str]) -> list[Args]:
    groups = m.groupdict()
    args: Args = {}
    if groups.get("named"):
        args["device"] = _device_name(groups["named"])
    elif groups.get("target"):
        target = groups["target"]
        if _DEVICE_ID.fullmatch(target):
            args["device"] = target.lower()
        else:
            args["scope"] = target.lower() if target.lower().startswith("scp_") else target
    if groups.get("limit"):
        args["limit"] = int(groups["limit"])
    return [args]


# --- the table ---------------------------------------------------------------------------


def _booking(m: re.Match[str]) -> list[Args]:
    people = re.split(r",? and |, | & ", m["people"])
    subject = " ".join("CAB" if w.lower() == "cab" else w for w in m["subject"].split())
    day = re.sub(r"^(?:this|on) ", "", m["day"].lower())
    return [{"attendees": people, "subject": subject[:1].upper() + subject[1:], "day": day}]


def _slots(m: re.Match[str]) -> list[Args]:
    people = re.split(r",? and |, | & ", m["who"] or m["people"])
    args: Args = {"attendees": people}
    if m["day"]:
        args["day"] = re.sub(r"^(?:this|on) ", "", m["day"].lower())
    return [args]


@dataclass(frozen=True, slots=True)
class Rule:
    """One way of asking for one tool."""

    tool: str
    """The tool the request is for."""
    pattern: re.Pattern[str]
    """Matched in full against the normalized message (or its head, when ``tail`` is set)."""
    build: Callable[[re.Match[str]], list[Args]]
    """The arguments of each call (usually one) from the match."""
    examples: tuple[str, ...]
    """Messages this rule is for; the tests check that each one parses by this rule."""
    tail: str | None = None
    """The argument that receives the text after "because" or ":" ("reason", "comment")."""


def _rule(
    tool: str,
    template: str,
    build: Callable[[re.Match[str]], list[Args]],
    *examples: str,
    tail: str | None = None,
) -> Rule:
    return Rule(tool, _compile(template), build, examples, tail)


_ROLLOUT_TARGET: Final = (
    r"(?:the )?(?:(?:paused|stuck|halted|stopped|current|active|running|ongoing|latest|new) )?"
    r"{APP}(?: {VER})?(?: {ROLL})?"
)
# How far a pause, resume or rollback goes adds nothing the tool needs: "stop firefox where
# it is", "undo chrome 131 everywhere".
_IN_PLACE: Final = r"(?: (?:where it is|in place|for now|everywhere|for everyone|completely))?"

RULES: Final[tuple[Rule, ...]] = (
    # Decisions name their ids, so they go first: "approve apr_…" is never a question. Any
    # few words may sit between the verb and the id ("approve the zoom CAB request apr_…").
    _rule(
        "decide_approval",
        r"(?P<verb>approve|accept|ok|okay|allow|lgtm|deny|reject|decline|refuse|veto)"
        r" (?:[\w-]+ ){0,6}?(?P<ids>(?:apr|exc)_\w+(?:(?:,? and |, | & | )(?:apr|exc)_\w+)*)",
        _decide,
        "approve apr_d26fcb05636447169ba5",
        "deny apr_x because too risky",
        "reject apr_x: not in the change window",
        "approve apr_a and apr_b",
        "Approve the zoom CAB request apr_c10a22a7f6744be3a05e",
        "Approve the pending exception exc_0123 with comment 'scanner false positive'",
        tail="comment",
    ),
    # Rollout changes: verb, app, optional version, optional "rollout".
    _rule(
        "promote_rollout",
        r"(?:promote|push|move|advance|graduate|roll ?out|ship|bump) "
        + _ROLLOUT_TARGET
        + r"(?: (?:to|into|onto|towards?) (?:the )?(?:{RING}|next ring|next stage))?",
        _promote,
        "promote google-chrome to pilot",
        "promote firefox 131 to pilot",
        "push chrome 131 to ring 2",
        "move zoom to broad",
        "roll out slack to the canary ring",
    ),
    _rule(
        "pause_rollout",
        r"(?:pause|halt|stop|freeze|suspend|hold) " + _ROLLOUT_TARGET + _IN_PLACE,
        _app_version,
        "pause firefox 132",
        "halt the zoom rollout because crashes",
        "Stop firefox 131 where it is: users report crashes",
        tail="reason",
    ),
    _rule(
        "resume_rollout",
        r"(?:resume|unpause|un-pause|continue|unfreeze|unhalt|restart) "
        + _ROLLOUT_TARGET
        + _IN_PLACE,
        _app_version,
        "resume firefox 132",
        "unpause chrome",
        "Resume the paused firefox rollout: the crash was a test device",
        tail="reason",
    ),
    _rule(
        "rollback_rollout",
        r"(?:roll ?back|roll-back|revert|undo|back ?out) (?:(?:of|on) )?"
        + _ROLLOUT_TARGET
        + _IN_PLACE,
        _app_version,
        "roll back firefox 132",
        "rollback chrome because users report crashes",
        "revert the zoom rollout",
        "Undo google-chrome 131.0.6778 everywhere",
        tail="reason",
    ),
    # Risk of an app version.
    _rule(
        "explain_risk",
        r"why (?:is|are) (?:the )?{APP}(?: {VER})?(?: {ROLL})?"
        r" (?:so |considered |rated |flagged as |marked )?(?:risky|high[- ]risk|dangerous|flagged)",
        _app_version,
        "why is zoom risky?",
        "why is zoom 6.2.5 considered high-risk",
    ),
    _rule(
        "explain_risk",
        r"why (?:does|do) (?:the )?{APP}(?: {VER})? (?:need|needs|require|requires)"
        r" (?:a |an )?(?:cab )?(?:approval|review|exception)",
        _app_version,
        "Why does zoom need CAB approval?",
    ),
    _rule(
        "explain_risk",
        r"{SHOW}{WHAT}(?:the )?risk(?: (?:score|level|rating|assessment|profile))?"
        r" (?:of|for|on) (?:the )?{APP}(?: {VER})?",
        _app_version,
        "explain the risk of zoom 6.2.5",
        "risk score for crowdstrike-falcon",
        "what's the risk of jetbrains-toolbox",
    ),
    _rule(
        "explain_risk",
        r"how risky (?:is|are) (?:the )?{APP}(?: {VER})?",
        _app_version,
        "how risky is zoom 6.2.5",
    ),
    _rule(
        "explain_risk",
        r"is (?:the )?{APP}(?: {VER})? (?:risky|safe|dangerous|high[- ]risk)",
        _app_version,
        "is zoom 6.2.5 risky",
    ),
    _rule(
        "explain_risk",
        r"{SHOW}(?:the )?{APP}(?: {VER})? risk(?: (?:score|level|rating|assessment))?",
        _app_version,
        "zoom 6.2.5 risk",
        "explain the zoom risk score",
    ),
    # One device's compliance. The device must look like one (dev_…, mac-NNNNN) or follow
    # the word "device", so these never swallow scope phrases.
    _rule(
        "device_compliance",
        r"why (?:is|isn't|is not) {DEVICE}(?: still)? (?:non-?compliant|non compliant"
        r"|not compliant|compliant|out of compliance|failing(?: compliance)?|drifting|drifted)",
        _device,
        "why is mac-00042 non-compliant?",
        "why isn't dev_000001 compliant",
    ),
    _rule(
        "device_compliance",
        r"{SHOW}{WHAT}(?:the )?(?:device )?(?:compliance|drift|status|posture|state)"
        r"(?: (?:status|report|details|state|findings|violations|issues))?"
        r" (?:of|for|on) (?:the )?{DEVICE}",
        _device,
        "compliance of dev_000001",
        "drift on mac-00001",
        "show the compliance status for device ana-laptop",
        "Show the drift findings on mac-00017",
    ),
    _rule(
        "device_compliance",
        r"what(?:'?s| is) (?:wrong|up|going on) with {DEVICE}",
        _device,
        "What is wrong with dev_000042?",
    ),
    _rule(
        "device_compliance",
        r"(?:is|are) {DEVICE} (?:compliant|non-?compliant|in compliance|drifting|drifted|healthy)",
        _device,
        "is mac-00007 compliant",
    ),
    _rule(
        "device_compliance",
        r"(?:(?:show|check|inspect|describe|get|look ?up|examine)(?: me)? (?:the )?)?{DEVICE}"
        r"(?: (?:compliance|drift|status|details))?",
        _device,
        "show device mac-00001",
        "check mac-00042 compliance",
        "dev_000001",
    ),
    _rule(
        "device_compliance",
        r"(?:{SHOW}{WHAT}(?:the )?(?:compliance|drift|status)(?: (?:of|for|on))? |(?:is|are) )?"
        r"{DEVICES}(?: (?:compliance|drift|status|compliant))?",
        _devices,
        "compliance of mac-00001 and mac-00002",
        "are mac-00001 and dev_000002 compliant",
    ),
    # Recent events, for a device, a scope or everything.
    _rule(
        "recent_events",
        r"{SHOW}(?:the )?(?:(?:last|latest|recent|most recent|past) )?(?:(?P<limit>\d{1,4}) )?"
        r"(?:(?:recent|latest|last|audit) )?(?:events?|activity|audit(?: (?:trail|log|history))?"
        r"|history|changes|log)(?: (?:for|in|on|of|at|about|from|within|across) {TARGET})?",
        _events,
        "recent events for mac-00001",
        "last 5 events for engineering",
        "audit trail for dev_000003",
        "show me the 10 latest events in the web team",
        "recent events",
    ),
    _rule(
        "recent_events",
        r"what(?:'?s| has)?(?: been)? (?:happened|happening|changed)(?: recently| lately| today)?"
        r"(?: (?:in|on|to|for|at|with|within|across) {TARGET})?(?: recently| lately| today)?",
        _events,
        "what happened in the web team",
        "what changed on mac-00001 recently",
        "what happened",
    ),
    # Drift and compliance of a scope: the phrase goes to the tool as written.
    _rule(
        "scope_drift",
        r"{SHOW}{WHAT}(?:the )?(?:drift|compliance)(?: (?:summary|report|status|overview"
        r"|score|rate|state|counts?|findings))? (?:for|in|of|on|across|at|within) {SCOPE}",
        _scope,
        "show drift for the web team",
        "drift in engineering",
        "drift summary for scp_engineering_web",
        "compliance for the platform team",
        "Show drift counts for scp_engineering_web",
    ),
    _rule(
        "scope_drift",
        r"how (?:compliant|drifted) (?:is|are) {SCOPE}",
        _scope,
        "how compliant is finance?",
        "how compliant are the web team",
    ),
    _rule(
        "scope_drift",
        r"how much drift (?:is )?(?:there )?(?:in|for|on) {SCOPE}",
        _scope,
        "how much drift is there in the platform team",
    ),
    _rule(
        "scope_drift",
        r"how much drift (?:does|do) {SCOPE} have",
        _scope,
        "How much drift does the web team have?",
    ),
    _rule(
        "scope_drift",
        r"(?:is|are) {SCOPE} (?:compliant|drifting|in compliance)",
        _scope,
        "is finance compliant",
    ),
    _rule(
        "scope_drift",
        r"(?:what|which devices?)(?:'?s| is| are) (?:drifting|drifted|non-?compliant"
        r"|not compliant|out of compliance) (?:in|for|on|across|within) {SCOPE}",
        _scope,
        "what is drifting in engineering",
        "which devices are non-compliant in finance",
    ),
    _rule(
        "scope_drift",
        r"{SHOW}(?:the )?{SCOPE} (?:drift|compliance)(?: (?:summary|report|status|overview))?",
        _scope,
        "engineering drift",
        "show the web team compliance report",
    ),
    # The caller's approval queue.
    _rule(
        "pending_approvals",
        r"{SHOW}(?:all |any )?(?:of )?(?:my |the )?{QUEUE}(?: requests?| queue| inbox)?"
        r"(?: (?:pending|waiting|for me|to do|to review|to decide))?",
        _no_args,
        "pending approvals",
        "show my approvals",
        "any approvals for me?",
        "Show me the pending CAB requests",
    ),
    _rule(
        "pending_approvals",
        r"(?:do i have|have i got|are there|is there) (?:any(?:thing)? )?{QUEUE}"
        r"(?: (?:to (?:decide|approve|review)(?: on)?|pending|waiting(?: for me)?|for me))?",
        _no_args,
        "Do I have any approvals or exceptions to decide?",
        "are there any pending approvals",
    ),
    _rule(
        "pending_approvals",
        r"(?:what|which \w+|anything|is there anything|are there any \w+|do i have any \w+)"
        r"(?:'?s| is| are)? (?:still )?(?:waiting|pending|awaiting|needing|needs|requiring"
        r"|requires)(?:(?: on| for)? (?:my |an |your )?(?:approval|sign-?off|decision)s?"
        r"(?: from me)?| (?:on|for) me)",
        _no_args,
        "what is waiting for my approval?",
        "what's pending my approval",
        "what needs my approval",
        "is there anything waiting on me",
    ),
    _rule(
        "pending_approvals",
        r"(?:anything|something|is there anything|what(?:'?s| is)?(?: there)?"
        r"|what do i (?:need|have)|do i have anything)(?: left| else)?(?: for me)?"
        r" to (?:approve|review|sign off|decide)(?: on)?",
        _no_args,
        "anything to approve?",
        "what do I need to approve",
    ),
    # A meeting on a day: book_meeting takes the best common slot and shows it for confirming.
    _rule(
        "book_meeting",
        r"(?:book|schedule|set up|arrange|organi[sz]e|plan) (?:me )?(?:a |an |the )?"
        r"(?P<subject>[\w'-]+(?: [\w'-]+){0,5}?) with "
        r"(?P<people>[\w.@+'-]+(?:(?:,? and |, | & )[\w.@+'-]+){0,19}) (?:on |this )?"
        r"(?P<day>today|tomorrow|(?:next )?(?:monday|tuesday|wednesday|thursday|friday)"
        r"|\d{4}-\d{2}-\d{2})",
        _booking,
        "book a CAB review with ana and li next tuesday",
        "schedule a release sync with li@contoso.com, omar and sam tomorrow",
    ),
    # Calendars: common free times, and the CAB meetings coming up.
    _rule(
        "propose_slots",
        r"(?:when can (?P<who>[\w.@+'-]+(?:(?:,? and |, | & )[\w.@+'-]+){0,19}) meet"
        r"|(?:find|propose|suggest) (?:me )?(?:a |some )?(?:times?|slots?)(?: for a meeting)? "
        r"with (?P<people>[\w.@+'-]+(?:(?:,? and |, | & )[\w.@+'-]+){0,19}))"
        r"(?: (?:on |this )?(?P<day>today|tomorrow|(?:next )?(?:monday|tuesday|wednesday"
        r"|thursday|friday)|\d{4}-\d{2}-\d{2}))?",
        _slots,
        "when can ana and li meet next tuesday?",
        "find a slot with li, omar and sam tomorrow",
    ),
    _rule(
        "list_cab_meetings",
        r"{SHOW}{WHAT}(?:my |the )?(?:upcoming |next |coming )?cab (?:meetings?|reviews?)"
        r"(?: coming up)?|when(?:'?s| is) (?:my |the )?next cab(?: meeting| review)?",
        _no_args,
        "list my CAB meetings",
        "when is the next CAB meeting?",
    ),
    # Rollout status, of one app or of everything.
    _rule(
        "rollout_status",
        r"{SHOW}{WHAT}(?:the )?(?:current )?(?:status|progress|state) (?:of|for|on) "
        + _ROLLOUT_TARGET,
        _app_version,
        "status of the chrome rollout",
        "what is the progress of firefox 132",
    ),
    _rule(
        "rollout_status",
        r"how(?:'?s| is| are) " + _ROLLOUT_TARGET + r"(?: (?:doing|going|progressing|looking"
        r"|coming along))?",
        _app_version,
        "how is firefox 132 doing?",
        "how is the google-chrome rollout going",
        "how's zoom",
    ),
    _rule(
        "rollout_status",
        r"why (?:is|are) " + _ROLLOUT_TARGET + r" (?:still )?(?:paused|stuck|blocked|halted"
        r"|stopped|on hold|not progressing|not moving|failing|slow)",
        _app_version,
        "Why is firefox 132 paused?",
        "why is the chrome rollout stuck",
    ),
    _rule(
        "rollout_status",
        r"(?:where|what ring|which ring) is " + _ROLLOUT_TARGET + r"(?: (?:at|in|now))?",
        _app_version,
        "where is chrome 131",
        "which ring is the zoom rollout in",
    ),
    _rule(
        "rollout_status",
        r"{SHOW}{WHAT}(?:the )?(?:roll-?outs?|deployments?)(?: (?:status|progress))?"
        r" (?:of|for|on) (?:the )?{APP}(?: {VER})?",
        _app_version,
        "rollout status for chrome",
        "list rollouts of firefox 132",
    ),
    _rule(
        "rollout_status",
        r"{SHOW}{WHAT}(?:the )?{APP}(?: {VER})? (?:roll-?out|deployment)(?: (?:status|progress))?",
        _app_version,
        "chrome rollout status",
        "show the firefox 132 rollout",
    ),
    _rule(
        "rollout_status",
        r"{SHOW}{WHAT}(?:(?:what|which) )?(?:the |all the )?"
        r"(?:(?:active|current|running|ongoing|open) )?"
        r"(?:roll-?outs?|deployments?)(?: (?:status|progress|overview|summary))?"
        r"(?: (?:are )?(?:running|in progress|in flight|underway|active|going on))?",
        _no_args,
        "rollout status",
        "list rollouts",
        "show rollouts",
        "what rollouts are running",
        "What rollouts are in flight?",
    ),
)


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a message asks for."""

    tool: str
    """The tool to call."""
    calls: tuple[Args, ...]
    """The arguments of each call (one, or one per id for "approve apr_a and apr_b")."""
    rule: int
    """Index of the matching rule in ``RULES`` (for logs and the audit)."""


# --- normalization -----------------------------------------------------------------------

_STRAIGHTEN: Final = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)
_LEAD: Final = re.compile(
    r"^(?:please|pls|plz|kindly|hey|hi|hello|yo|so|goodbot|@goodbot|bot|can you|could you"
    r"|would you|will you|can u|would you mind|i want to|i'd like to|i would like to"
    r"|i need to|let's|lets|go ahead and|quickly|just)(?:[\s,:!]+|$)",
    re.IGNORECASE,
)
_TRAIL: Final = re.compile(
    r"(?:[\s,]+(?:please|pls|plz|for me|thanks|thank you|thx|now|asap|right now))+$"
    r"|[\s?!.,;]+$",
    re.IGNORECASE,
)
_TAIL: Final = re.compile(
    r",?\s+(?:because|since|reason(?: being)?:?|comment:?|with (?:the )?(?:reason|comment):?)\s+"
    r"|\s*[:;]\s*|\s+-\s+",
    re.IGNORECASE,
)
_QUOTES: Final = re.compile(r"[\"`]|(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """The message with whitespace collapsed and courtesy stripped from both ends."""
    text = " ".join(text.translate(_STRAIGHTEN).split())
    previous = None
    while previous != text:
        previous = text
        text = _LEAD.sub("", text)
        text = _TRAIL.sub("", text)
    return text


def split_tail(text: str) -> tuple[str, str | None]:
    """``(head, tail)``: the text before and after the first "because" or ":" (tail as written)."""
    found = _TAIL.search(text)
    if found is None:
        return text, None
    tail = text[found.end() :].strip()
    if len(tail) > 1 and tail[0] == tail[-1] and tail[0] in "'\"":
        tail = tail[1:-1].strip()  # "with comment 'scanner false positive'"
    return text[: found.start()].strip(), tail or None


def _clean(head: str) -> str:
    return " ".join(_QUOTES.sub("", _TRAIL.sub("", head)).split())


def head_of(text: str) -> str:
    """The message as the rules that take a reason see it: normalized, before "because"."""
    return _clean(split_tail(normalize(text))[0])


def parse(text: str) -> Parsed | None:
    """The tool calls a message asks for, or None when no rule matches it."""
    full = normalize(text)
    head, tail = split_tail(full)
    whole, head = _clean(full), _clean(head)
    for index, rule in enumerate(RULES):
        subject = head if rule.tail else whole
        match = rule.pattern.fullmatch(subject)
        if match is None:
            continue
        calls = rule.build(match)
        if rule.tail and tail:
            calls = [{**args, rule.tail: tail} for args in calls]
        return Parsed(rule.tool, tuple(calls), index)
    return None
