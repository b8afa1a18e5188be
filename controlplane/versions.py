"""Control plane version ranges: comparison across package managers' version schemes.

Written by hand because ``packaging.version`` accepts only PEP 440 and would reject the brew,
npm, apt and winget versions an inventory carries. Segments compare numerically when both are
numbers, textually otherwise; a pre-release suffix sorts after its release (documented limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

_SEGMENT = re.compile(r"\d+|[A-Za-z]+")
_CLAUSE = re.compile(r"^\s*(==|!=|>=|<=|>|<)?\s*([A-Za-z0-9][A-Za-z0-9.+~_:-]*)\s*$")
OPERATORS: Final = ("==", "!=", ">=", "<=", ">", "<")

type VersionKey = tuple[tuple[int, int, str], ...]


@lru_cache(maxsize=65536)
def version_key(version: str) -> VersionKey:
    """A sortable key for any manager's version string."""
    return tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part.lower())
        for part in _SEGMENT.findall(version)
    )


@dataclass(frozen=True, slots=True)
class VersionRange:
    """A conjunction of comparisons, written like ``>=1.2,<2``."""

    text: str
    clauses: tuple[tuple[str, VersionKey], ...]

    def contains(self, version: str) -> bool:
        key = version_key(version)
        for op, bound in self.clauses:
            if op == "==" and key != bound:
                return False
            if op == "!=" and key == bound:
                return False
            if op == ">=" and key < bound:
                return False
            if op == "<=" and key > bound:
                return False
            if op == ">" and key <= bound:
                return False
            if op == "<" and key >= bound:
                return False
        return True


@lru_cache(maxsize=4096)
def parse_range(text: str) -> VersionRange:
    """Parse ``>=1.2,<2`` (a bare version means ``==``); ValueError names the bad clause."""
    clauses = []
    for raw in text.split(","):
        match = _CLAUSE.match(raw)
        if match is None:
            raise ValueError(f"bad version clause {raw.strip()!r}")
        clauses.append((match.group(1) or "==", version_key(match.group(2))))
    return VersionRange(text, tuple(clauses))
