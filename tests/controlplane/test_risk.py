"""Risk model v1.0 and the CAB rules as pure functions: weights, rubrics, worked examples."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, get_args

import pytest

from controlplane.cab import approval_ring, cab_requirement, ring_reason
from controlplane.models_release import Approval
from controlplane.risk import (
    MODEL_VERSION,
    RUBRICS,
    TITLES,
    WEIGHTS,
    BlastRadius,
    Complexity,
    DataAccess,
    Exploitability,
    History,
    Privilege,
    RiskInputError,
    RiskInputs,
    SupplyChain,
    Vulnerability,
    assess,
)


def inputs(**changes: Any) -> RiskInputs:
    """The privileged-agent example below, with some answers changed."""
    return replace(AGENT, **changes)


# A signed endpoint agent from an unknown vendor, going to 500 pilot devices.
AGENT = RiskInputs(
    privilege_impact="admin_required",  # 1.0 x 20 = 20
    supply_chain_trust="signed_unknown",  # 0.4 x 15 = 6
    exploitability="user_listener_or_scripting",  # 0.6 x 10 = 6
    data_access="wide_filesystem",  # 0.7 x 10 = 7
    sbom_vulnerability="high",  # 0.7 x 15 = 10.5
    blast_radius=BlastRadius(ring=2, target_devices=500),  # (0.5 + 0.5) / 2 x 10 = 5
    operational_complexity="reboot_required",  # 0.5 x 10 = 5
    history="first_release",  # 0.4 x 10 = 4
)

# A well-known browser in user context, going everywhere (15,000 devices).
BROWSER = RiskInputs(
    privilege_impact="user_context",  # 0.2 x 20 = 4
    supply_chain_trust="signed_known",  # 0.1 x 15 = 1.5
    exploitability="none",  # 0.2 x 10 = 2
    data_access="user_files",  # 0.3 x 10 = 3
    sbom_vulnerability="none",  # 0
    blast_radius=BlastRadius(ring=4, target_devices=15_000),  # (1 + 1) / 2 x 10 = 10
    operational_complexity="simple",  # 0.1 x 10 = 1
    history="clean",  # 0
)


def test_weights_are_the_seeds_and_sum_to_100() -> None:
    assert WEIGHTS == {
        "privilege_impact": 20,
        "supply_chain_trust": 15,
        "exploitability": 10,
        "data_access": 10,
        "sbom_vulnerability": 15,
        "blast_radius": 10,
        "operational_complexity": 10,
        "history": 10,
    }
    assert sum(WEIGHTS.values()) == 100
    assert set(TITLES) == set(WEIGHTS)
    assert set(RUBRICS) == set(WEIGHTS) - {"blast_radius"}


@pytest.mark.parametrize(
    ("factor", "literal"),
    [
        ("privilege_impact", Privilege),
        ("supply_chain_trust", SupplyChain),
        ("exploitability", Exploitability),
        ("data_access", DataAccess),
        ("sbom_vulnerability", Vulnerability),
        ("operational_complexity", Complexity),
        ("history", History),
    ],
)
def test_api_categories_are_the_rubrics(factor: str, literal: Any) -> None:
    assert set(get_args(literal)) == set(RUBRICS[factor])


@pytest.mark.parametrize(
    ("factor", "category", "normalized"),
    [
        # seed 002 §9.2.1, verbatim
        ("privilege_impact", "user_context", 0.2),
        ("privilege_impact", "admin_required", 1.0),
        ("privilege_impact", "system_extension", 1.0),
        ("supply_chain_trust", "signed_known", 0.1),
        ("supply_chain_trust", "signed_unknown", 0.4),
        ("supply_chain_trust", "unsigned", 0.9),
        ("exploitability", "none", 0.2),
        ("exploitability", "user_listener_or_scripting", 0.6),
        ("exploitability", "privileged_listener", 1.0),
        ("sbom_vulnerability", "none", 0.0),
        ("sbom_vulnerability", "high", 0.7),
        ("sbom_vulnerability", "critical", 1.0),
        # this model's own rubrics
        ("data_access", "none", 0.0),
        ("data_access", "credential_store", 1.0),
        ("operational_complexity", "simple", 0.1),
        ("operational_complexity", "offline_import", 1.0),
        ("history", "clean", 0.0),
        ("history", "difficult_rollback", 1.0),
    ],
)
def test_rubric_values(factor: str, category: str, normalized: float) -> None:
    line = {f.name: f for f in assess(inputs(**{factor: category})).factors}[factor]
    assert line.normalized == normalized
    assert line.contribution == round(WEIGHTS[factor] * normalized, 4)
    assert line.input == category
    assert category in line.explanation


def test_every_rubric_value_is_in_the_unit_interval_and_explained() -> None:
    for factor, rubric in RUBRICS.items():
        for category, (value, why) in rubric.items():
            assert 0.0 <= value <= 1.0, (factor, category)
            assert why, (factor, category)


def test_worked_example_privileged_agent() -> None:
    result = assess(AGENT)
    assert result.model_version == MODEL_VERSION == "1.0"
    assert [f.contribution for f in result.factors] == [20, 6, 6, 7, 10.5, 5, 5, 4]
    assert result.score == 63.5
    assert cab_requirement(result.score, False, 2, 50)[0] is True
    assert cab_requirement(result.score, False, 1, 50)[0] is False


def test_worked_example_browser() -> None:
    result = assess(BROWSER)
    assert [f.contribution for f in result.factors] == [4, 1.5, 2, 3, 0, 10, 1, 0]
    assert result.score == 21.5
    assert cab_requirement(result.score, False, 4, 50)[0] is False


def test_a_score_of_exactly_50_needs_no_cab_at_ring_2() -> None:
    result = assess(
        inputs(
            supply_chain_trust="unsigned",  # 13.5
            exploitability="none",  # 2
            data_access="user_files",  # 3
            sbom_vulnerability="none",  # 0
            history=0.15,  # 1.5 (explicit)
        )
    )
    assert result.score == 50.0
    assert cab_requirement(result.score, False, 2, 50.0) == (
        False,
        "risk score 50 is at or below the CAB threshold 50, so ring 2 (pilot) needs no CAB "
        "approval",
    )


def test_explanations_name_factor_input_and_points() -> None:
    result = assess(AGENT)
    assert [f.name for f in result.factors] == list(WEIGHTS)
    for line in result.factors:
        assert line.explanation.startswith(TITLES[line.name] + ": ")
        assert f"weight {line.weight}" in line.explanation
        assert line.explanation.endswith(f"= {line.contribution:g} points.")
        assert line.as_json()["explanation"] == line.explanation
    blast = result.factors[5]
    assert blast.input == {"ring": 2, "target_devices": 500}
    assert "ring 2 (pilot)" in blast.explanation and "500 target devices" in blast.explanation
    assert result.inputs_json()["privilege_impact"] == "admin_required"


def test_explicit_values_are_used_and_said_to_be_explicit() -> None:
    result = assess(inputs(privilege_impact=0.5, blast_radius=0.3))
    privilege, blast = result.factors[0], result.factors[5]
    assert (privilege.normalized, privilege.contribution) == (0.5, 10.0)
    assert "explicit value 0.5" in privilege.explanation
    assert (blast.input, blast.contribution) == (0.3, 3.0)


@pytest.mark.parametrize(
    ("ring", "devices", "normalized"),
    [
        (0, 5, 0.0),
        (0, 10, 0.0),
        (1, 11, 0.25),
        (2, 1_000, 0.5),
        (3, 10_000, 0.75),
        (3, 10_001, 0.875),
        (4, 1, 0.5),
        (4, 1_000_000, 1.0),
    ],
)
def test_blast_radius_is_the_mean_of_reach_and_size(
    ring: int, devices: int, normalized: float
) -> None:
    line = assess(inputs(blast_radius=BlastRadius(ring, devices))).factors[5]
    assert line.normalized == normalized


def test_clamped_to_0_and_100() -> None:
    top = RiskInputs(*([1.0] * 8))
    bottom = RiskInputs(*([0.0] * 8))
    assert assess(top).score == 100.0
    assert assess(bottom).score == 0.0


def test_deterministic_and_free_of_float_noise() -> None:
    first, second = assess(BROWSER), assess(BROWSER)
    assert first == second
    # 15 * 0.1 is 1.5000000000000002 in binary floating point.
    assert first.factors[1].contribution == 1.5
    assert math.isclose(sum(f.contribution for f in first.factors), first.score)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"privilege_impact": "root"}, "privilege_impact: 'root' is not one of"),
        ({"history": 1.5}, "history: 1.5 is outside"),
        ({"history": -0.1}, "outside"),
        ({"history": math.nan}, "outside"),
        ({"data_access": True}, "give a rubric category or a number"),
        ({"blast_radius": BlastRadius(7, 10)}, "not a ring"),
        ({"blast_radius": BlastRadius(1, -1)}, "must not be negative"),
    ],
)
def test_bad_inputs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RiskInputError, match=message):
        assess(inputs(**changes))


@pytest.mark.parametrize(
    ("score", "privileged", "ring", "required", "says"),
    [
        (50.0, False, 2, False, "at or below"),
        (51.0, False, 2, True, "above the CAB threshold 50"),
        (50.01, False, 3, True, "above"),
        (90.0, False, 1, False, "risk gate applies from ring 2"),
        (10.0, True, 1, True, "privileged tooling"),
        (10.0, True, 4, True, "privileged tooling"),
        (None, False, 2, True, "fail closed"),
        (None, False, 1, False, "from ring 2"),
        (None, True, 0, False, "never"),
        (100.0, True, 0, False, "ring 0 (lab) never needs CAB approval"),
        (0.0, False, 4, False, "at or below"),
    ],
)
def test_cab_requirement(
    score: float | None, privileged: bool, ring: int, required: bool, says: str
) -> None:
    needed, reason = cab_requirement(score, privileged, ring, 50.0)
    assert needed is required
    assert says in reason


def test_cab_requirement_refuses_an_unknown_ring() -> None:
    with pytest.raises(ValueError, match="ring 5"):
        cab_requirement(10, False, 5, 50)


def test_ring_round_trips_through_the_reason() -> None:
    reason = ring_reason(3, "risk score 72 is above the CAB threshold 50")
    assert reason == "ring 3 (department): risk score 72 is above the CAB threshold 50"
    approval = Approval(subject_type="intent", reason=reason)
    assert approval_ring(approval) == 3
    assert approval_ring(Approval(subject_type="exception", reason=reason)) is None
    assert approval_ring(Approval(subject_type="intent", reason="no ring here")) is None
