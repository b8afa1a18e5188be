"""Links in model-written replies: only to allowed hosts."""

from __future__ import annotations

import pytest

from policy.links import guard_links


@pytest.mark.parametrize(
    ("text", "expected", "removed"),
    [
        ("see https://evil.example/c?d=secret now", "see (link removed: evil.example) now", 1),
        ("[audit](https://evil.example/c?d=x)", "audit (link removed: evil.example)", 1),
        ("![](http://evil.example/p.png?d=x)", "(link removed: evil.example)", 1),
        ("//evil.example/x?d=1", "(link removed: evil.example)", 1),
        ("https://user:pw@evil.example:8443/x", "(link removed: evil.example)", 1),
        ("[cp](https://cp.contoso.example/ro_1) ok", "[cp](https://cp.contoso.example/ro_1) ok", 0),
        ("https://docs.cp.contoso.example/a", "https://docs.cp.contoso.example/a", 0),
        (
            "https://cp.contoso.example.evil.example/a",
            "(link removed: cp.contoso.example.evil.example)",
            1,
        ),
        ("no links here: a/b and ratio 1//2", "no links here: a/b and ratio 1//2", 0),
    ],
)
def test_links_to_other_hosts_are_removed(text: str, expected: str, removed: int) -> None:
    guarded = guard_links(text, ["cp.contoso.example"])
    assert guarded.text == expected
    assert len(guarded.removed) == removed
