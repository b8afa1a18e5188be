"""Hypothesis settings for the fuzzers: modest and reproducible in CI, long in ``bench/``.

``GOODBOT_FUZZ_EXAMPLES`` raises the example count (``bench/fuzz.py`` sets it) and
``GOODBOT_FUZZ_RANDOM=1`` draws new examples instead of the same ones every run.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_settings(examples: int) -> settings:
    """``examples`` draws (or ``GOODBOT_FUZZ_EXAMPLES``), no deadline, no example database."""
    return settings(
        max_examples=int(os.environ.get("GOODBOT_FUZZ_EXAMPLES", examples)),
        deadline=None,
        database=None,
        derandomize=not os.environ.get("GOODBOT_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
    )


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, small."""


def shaped(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with the template's keys, each value either the template's or any JSON value,
    plus the odd extra key: close enough to the real shape to get past the first checks."""
    fields = {
        k: (v if isinstance(v, st.SearchStrategy) else st.just(v)) | JSON
        for k, v in template.items()
    }
    return st.fixed_dictionaries({}, optional=fields | {"extra": JSON}) | st.fixed_dictionaries(
        fields
    )
