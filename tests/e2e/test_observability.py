"""Observability: one correlation id from the request to the audit chain and the control
plane's events; the Prometheus series a turn leaves; JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid

import orjson
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from gateway.observability import JsonFormatter, correlation_id
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest


async def audit_records(gw: GatewayUnderTest) -> list[dict[str, object]]:
    return [orjson.loads(line) async for line in gw.gateway.store.export_audit()]


def cp_events(cp: DemoControlPlane) -> list[dict[str, object]]:
    response = requests.get(
        f"{cp.url}/api/v1/events/export",
        headers={"Authorization": f"Bearer {cp.tokens['ana']}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


class UrandomIds(IdGenerator):
    """Span and trace ids from ``os.urandom``. The provider set here stays for the rest of the
    session, and the SDK's default ids come from the process-wide ``random``, which Hypothesis
    forbids any thread to touch while it draws examples (the fuzzers run beside a server)."""

    def generate_span_id(self) -> int:
        return int.from_bytes(os.urandom(8)) or 1

    def generate_trace_id(self) -> int:
        return int.from_bytes(os.urandom(16)) or 1

    def is_trace_id_random(self) -> bool:
        return True


async def test_a_correlation_id_joins_the_audit_and_the_control_planes_events_and_metrics(
    gw: GatewayUnderTest, demo_cp: DemoControlPlane
) -> None:
    # Tracing as `opentelemetry-instrument` would configure it: an SDK provider, set once.
    spans = InMemorySpanExporter()
    provider = TracerProvider(id_generator=UrandomIds())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    asked = "corr-" + uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {gw.token('ana')}", "X-Request-Id": asked}
    body = {"text": "promote google-chrome to pilot", "event_id": uuid.uuid4().hex}
    async with gw.http.post(f"{gw.url}/cli/v1/turns", json=body, headers=headers) as r:
        assert r.status == 200 and r.headers["X-Request-Id"] == asked  # echoed while streaming
        events = [json.loads(line) async for line in r.content if line.strip()]
    (done,) = [e for e in events if e["type"] == "done"]
    confirmation = done["result"]["confirmation"]["id"]
    records = await audit_records(gw)
    by_type = {str(r["type"]): r for r in records}
    assert by_type["message.received"]["data"]["request_id"] == asked  # type: ignore[index]
    assert by_type["message.replied"]["data"]["request_id"] == asked  # type: ignore[index]

    # The turn is a span carrying the correlation id; the tool call is its child.
    finished = {span.name: span for span in spans.get_finished_spans()}
    turn_span, tool_span = finished["goodbot.turn"], finished["goodbot.tool"]
    assert turn_span.attributes is not None and tool_span.attributes is not None
    assert turn_span.attributes["goodbot.correlation_id"] == asked
    assert tool_span.attributes["goodbot.tool"] == "promote_rollout"
    assert tool_span.parent is not None
    assert tool_span.parent.span_id == turn_span.context.span_id
    spans.shutdown()  # silent from now on; the provider stays (it can be set once)

    # The series the turn left (scraped as Prometheus does).
    status, text = await gw.get("/metrics")
    assert status == 200
    assert 'goodbot_messages_total{channel="cli",outcome="accepted"} 1.0' in text
    assert 'goodbot_policy_decisions_total{outcome="allowed"}' in text
    assert 'goodbot_confirmations_total{state="pending"} 1.0' in text
    assert 'goodbot_model_seconds_count{route="rules"} 1.0' in text
    assert 'goodbot_turn_seconds_count{channel="cli"} 1.0' in text
    assert 'goodbot_queue_depth{queue="confirmations_pending"} 1.0' in text
    assert 'goodbot_queue_depth{queue="inbox"} 0.0' in text
    assert 'goodbot_duty_lease_held{duty="confirmations.expiry"} 1.0' in text

    clicked = "corr-" + uuid.uuid4().hex
    async with gw.http.post(
        f"{gw.url}/cli/v1/confirmations/{confirmation}",
        json={"decision": "confirm"},
        headers={**headers, "X-Request-Id": clicked},
    ) as r:
        assert (await r.json())["outcome"] == "confirmed"
        assert r.headers["X-Request-Id"] == clicked
    changed = [e for e in cp_events(demo_cp) if e.get("correlation_id") == clicked]
    assert changed, "the control plane's events carry the click's correlation id"
    assert any("rollout" in str(e["type"]) for e in changed)

    # A header that is not a sane id is replaced, not trusted.
    async with gw.http.get(f"{gw.url}/healthz", headers={"X-Request-Id": "bad id\u00e9"}) as r:
        assert r.headers["X-Request-Id"] != "bad id\u00e9" and len(r.headers["X-Request-Id"]) == 32
    assert correlation_id() is None  # nothing leaks out of a request


def test_json_log_lines_carry_the_structured_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.observability.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("duty lease taken", extra={"duty": "recovery", "replica": 2})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("background duty failed", extra={"duty": "retention"})
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "duty lease taken" and first["level"] == "WARNING"
    assert first["duty"] == "recovery" and first["replica"] == 2
    assert first["logger"] == "tests.observability.json" and first["time"].endswith("+00:00")
    assert second["duty"] == "retention" and "RuntimeError: boom" in second["exception"]
