"""The Grafana dashboard and the Prometheus alerts use only series the gateway exports, and
every alert is explained in the runbook (docs/operations.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
_SERIES = re.compile(r"\b(goodbot_[a-z_]+)")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def exported() -> set[str]:
    """Every series name the gateway's registry produces."""
    names: set[str] = set()
    for collector in Metrics().registry.collect():
        names.add(collector.name)
        names.update(sample.name for sample in collector.samples)
    return names


def used(expr: str) -> set[str]:
    return set(_SERIES.findall(expr))


def test_the_dashboard_queries_only_exported_series() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "goodbot-gateway.json").read_text())
    series = exported()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    for expr in exprs:
        for name in used(expr):
            base = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
            assert name in series or base in series, f"{name} is not exported"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("messages", "decisions", "tool latency", "confirmations", "model latency"):
        assert topic in titles
    assert "tokens" in titles and "delivery" in titles and "queue depth" in titles


def test_every_alert_uses_exported_series_and_has_a_runbook_entry() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    runbook = (ROOT / "docs" / "operations.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#{2,4} (\S+)\s*$", runbook, re.M)}
    series = exported() | {"up"}
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert len(alerts) >= 6
    for rule in alerts:
        for name in used(rule["expr"]):
            base = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
            assert name in series or base in series, f"{rule['alert']}: {name} is not exported"
        assert rule["labels"]["severity"] in {"page", "warn", "info"}
        assert rule["alert"].lower() in headings, f"{rule['alert']} is not in the runbook"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
