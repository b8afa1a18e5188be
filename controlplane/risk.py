"""Control plane risk model v1.0 (seed 002 §9): pure, deterministic scoring of a version.

Sits behind ``POST /versions/{id}/risk`` (``controlplane.api.approvals``) and in front of the
CAB rules (``controlplane.cab``): explicit inputs in, a score with one explained line per
factor out, no I/O and no clock::

    RiskScore = clamp(0..100, Σ weight_i * normalized_i)

Every factor takes a category of its rubric (the tables below, each value with the sentence
that justifies it) or, for a case the rubric does not name, an explicit normalized value in
[0.0, 1.0]; the factor's explanation says which was used. The privilege, supply-chain,
exploitability and vulnerability rubrics are the seed's (§9.2.1); data access, blast radius,
operational complexity and history are this model's own, documented here. Changing a weight,
a rubric value or the blast-radius rule changes ``MODEL_VERSION`` (§9.2.1 calibration rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from controlplane.release import RINGS

MODEL_VERSION: Final = "1.0"
"""Stored with every assessment; bumped whenever weights or rubrics change."""

WEIGHTS: Final[dict[str, int]] = {
    "privilege_impact": 20,
    "supply_chain_trust": 15,
    "exploitability": 10,
    "data_access": 10,
    "sbom_vulnerability": 15,
    "blast_radius": 10,
    "operational_complexity": 10,
    "history": 10,
}
"""Factor → weight (seed 002 §9.2); they sum to 100, so the score is already on 0..100."""

TITLES: Final[dict[str, str]] = {
    "privilege_impact": "Privilege impact",
    "supply_chain_trust": "Supply chain trust",
    "exploitability": "Exploitability",
    "data_access": "Data access",
    "sbom_vulnerability": "SBOM/vulnerability",
    "blast_radius": "Blast radius",
    "operational_complexity": "Operational complexity",
    "history": "History",
}
"""Factor → the name a person reads (the seed's table)."""

Privilege = Literal["user_context", "admin_required", "system_extension"]
SupplyChain = Literal["signed_known", "signed_unknown", "unsigned"]
Exploitability = Literal["none", "user_listener_or_scripting", "privileged_listener"]
DataAccess = Literal["none", "user_files", "wide_filesystem", "credential_store"]
Vulnerability = Literal["none", "high", "critical"]
Complexity = Literal["simple", "reboot_required", "special_sequencing", "offline_import"]
History = Literal["clean", "first_release", "past_failures", "prior_incident", "difficult_rollback"]

RUBRICS: Final[dict[str, dict[str, tuple[float, str]]]] = {
    "privilege_impact": {
        "user_context": (0.2, "installs in the user's context without elevation"),
        "admin_required": (1.0, "needs administrator rights or installs a service"),
        "system_extension": (1.0, "installs a driver, kernel or system extension"),
    },
    "supply_chain_trust": {
        "signed_known": (0.1, "signed by a known vendor with consistent provenance"),
        "signed_unknown": (0.4, "signed, but by an unknown or unverified vendor"),
        "unsigned": (0.9, "unsigned, or its provenance is uncertain"),
    },
    "exploitability": {
        "none": (0.2, "no network listener and no macro or scripting capability"),
        "user_listener_or_scripting": (
            0.6,
            "a user-space network listener or an embedded scripting engine",
        ),
        "privileged_listener": (
            1.0,
            "a privileged listener or a service exposed with elevated rights",
        ),
    },
    "data_access": {
        "none": (0.0, "reads and writes only its own files"),
        "user_files": (0.3, "reads the user's documents or a few named folders"),
        "wide_filesystem": (0.7, "needs full-disk or otherwise wide filesystem access"),
        "credential_store": (1.0, "reads a credential store (keychain, saved passwords, tokens)"),
    },
    "sbom_vulnerability": {
        "none": (0.0, "no High or Critical findings in its dependencies"),
        "high": (0.7, "High findings and no Critical; compensating controls are possible"),
        "critical": (1.0, "Critical findings; blocked unless an exception is approved"),
    },
    "operational_complexity": {
        "simple": (0.1, "silent install and uninstall, no reboot, no ordering"),
        "reboot_required": (0.5, "needs a reboot or a restart of the user's session"),
        "special_sequencing": (
            0.7,
            "must install in a set order, with dependencies or a migration step",
        ),
        "offline_import": (1.0, "content must be imported by hand into offline sites"),
    },
    "history": {
        "clean": (0.0, "earlier releases went out without incidents or rollbacks"),
        "first_release": (0.4, "no release history yet, and unknown is not assumed safe"),
        "past_failures": (0.6, "an earlier rollout missed its install success gate"),
        "prior_incident": (0.8, "an earlier release caused a security or service incident"),
        "difficult_rollback": (1.0, "an earlier incident whose rollback was hard or impossible"),
    },
}
"""Factor → category → (normalized value, why). Blast radius has a rule instead: see below."""

RING_REACH: Final[dict[int, float]] = {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
"""Blast radius, ring part: how far out the version is meant to go (seed 002 §10.1)."""

SIZE_BANDS: Final[tuple[tuple[int, float], ...]] = (
    (10, 0.0),
    (100, 0.25),
    (1_000, 0.5),
    (10_000, 0.75),
)
"""Blast radius, size part: (at most this many target devices, value); more than the last
band is 1.0. Blast radius is the mean of the ring part and the size part."""


class RiskInputError(ValueError):
    """An input is not a category of its factor's rubric or not a value in [0.0, 1.0]."""


@dataclass(frozen=True, slots=True)
class BlastRadius:
    """Where the version is meant to go: the furthest ring and how many devices it targets."""

    ring: int
    """Furthest ring of the planned rollout (0 lab … 4 global)."""
    target_devices: int
    """Devices in the target scope at that ring."""


@dataclass(frozen=True, slots=True)
class RiskInputs:
    """The assessor's answers, one per factor: a rubric category or a value in [0.0, 1.0]."""

    privilege_impact: str | float
    """``Privilege`` category or a normalized value."""
    supply_chain_trust: str | float
    """``SupplyChain`` category (publisher trust) or a normalized value."""
    exploitability: str | float
    """``Exploitability`` category or a normalized value."""
    data_access: str | float
    """``DataAccess`` category or a normalized value."""
    sbom_vulnerability: str | float
    """``Vulnerability`` category or a normalized value."""
    blast_radius: BlastRadius | float
    """Planned reach, or a normalized value."""
    operational_complexity: str | float
    """``Complexity`` category or a normalized value."""
    history: str | float
    """``History`` category or a normalized value."""


@dataclass(frozen=True, slots=True)
class FactorScore:
    """One factor's share of the score, with the sentence that explains it."""

    name: str
    """Factor key, such as ``privilege_impact``."""
    input: Any
    """The input as given (category, number, or ``{"ring", "target_devices"}``), JSON-ready."""
    normalized: float
    """The input on 0.0 (no risk) … 1.0 (maximum risk)."""
    weight: int
    """The factor's weight."""
    contribution: float
    """``weight * normalized``, in score points."""
    explanation: str
    """A sentence a CAB member can read."""

    def as_json(self) -> dict[str, Any]:
        """The stored form (``RiskAssessment.factors`` items)."""
        return {
            "name": self.name,
            "input": self.input,
            "normalized": self.normalized,
            "weight": self.weight,
            "contribution": self.contribution,
            "explanation": self.explanation,
        }


@dataclass(frozen=True, slots=True)
class RiskResult:
    """A computed score with every factor's share."""

    model_version: str
    """``MODEL_VERSION`` at the time of scoring."""
    score: float
    """0..100, two decimals."""
    factors: tuple[FactorScore, ...]
    """One per factor, in ``WEIGHTS`` order."""

    def inputs_json(self) -> dict[str, Any]:
        """The inputs as stored (``RiskAssessment.inputs``), factor → input."""
        return {f.name: f.input for f in self.factors}


def assess(inputs: RiskInputs) -> RiskResult:
    """Score a version from its inputs; the same inputs always give the same result.

    Args:
        inputs: One answer per factor.

    Returns:
        The score (clamped to 0..100, rounded to two decimals) and each factor explained.

    Raises:
        RiskInputError: An unknown category, a value outside [0.0, 1.0] or a ring outside 0..4.
    """
    factors = []
    for name, weight in WEIGHTS.items():
        value = getattr(inputs, name)
        given: Any
        if isinstance(value, BlastRadius):
            normalized, given, why = _blast_radius(value)
        else:
            normalized, given, why = _rubric(name, value)
        # Rounded so that float noise (15 * 0.1 = 1.5000000000000002) never moves a score
        # across the threshold; four decimals keep every rubric value exact.
        contribution = round(weight * normalized, 4)
        factors.append(
            FactorScore(
                name=name,
                input=given,
                normalized=normalized,
                weight=weight,
                contribution=contribution,
                explanation=(
                    f"{TITLES[name]}: {why} → {normalized:g} at weight {weight} = "
                    f"{contribution:g} points."
                ),
            )
        )
    total = math.fsum(f.contribution for f in factors)
    score = round(min(100.0, max(0.0, total)), 2)
    return RiskResult(model_version=MODEL_VERSION, score=score, factors=tuple(factors))


def _rubric(name: str, value: str | float) -> tuple[float, str | float, str]:
    if isinstance(value, str):
        entry = RUBRICS[name].get(value)
        if entry is None:
            raise RiskInputError(
                f"{name}: {value!r} is not one of {sorted(RUBRICS[name])} "
                "(or give a normalized value in [0.0, 1.0])"
            )
        normalized, meaning = entry
        return normalized, value, f"{value} ({meaning})"
    normalized = _unit(name, value)
    return normalized, normalized, f"explicit value {normalized:g} (no rubric category applies)"


def _blast_radius(value: BlastRadius) -> tuple[float, dict[str, int], str]:
    if value.ring not in RING_REACH:
        raise RiskInputError(f"blast_radius.ring: {value.ring} is not a ring 0..4")
    if value.target_devices < 0:
        raise RiskInputError("blast_radius.target_devices: must not be negative")
    reach = RING_REACH[value.ring]
    size = next((v for limit, v in SIZE_BANDS if value.target_devices <= limit), 1.0)
    normalized = round((reach + size) / 2, 4)
    why = (
        f"ring {value.ring} ({RINGS[value.ring]}) → {reach:g} and {value.target_devices} "
        f"target devices → {size:g}, mean"
    )
    return normalized, {"ring": value.ring, "target_devices": value.target_devices}, why


def _unit(name: str, value: float) -> float:
    # bool is an int: True would silently mean 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RiskInputError(f"{name}: give a rubric category or a number in [0.0, 1.0]")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise RiskInputError(f"{name}: {value!r} is outside [0.0, 1.0]")
    return float(value)
