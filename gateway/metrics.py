"""Gateway metrics: Prometheus counters and histograms served at ``/metrics`` (gateway).

One ``CollectorRegistry`` per application, so that several gateways in one process (tests,
benchmarks) never share or collide on series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    """Every series the gateway exports."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter(
            "goodbot_messages",
            "Inbound messages by channel and outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "goodbot_policy_decisions", "Policy decisions by outcome", ["outcome"], registry=r
        )
        self.tool_seconds = Histogram(
            "goodbot_tool_seconds",
            "Tool call latency by tool and status",
            ["tool", "status"],
            buckets=_FAST,
            registry=r,
        )
        self.confirmations = Counter(
            "goodbot_confirmations", "Confirmation transitions by state", ["state"], registry=r
        )
        self.model_seconds = Histogram(
            "goodbot_model_seconds",
            "Time waiting for the route per turn",
            ["route"],
            buckets=_SLOW,
            registry=r,
        )
        self.model_tokens = Counter(
            "goodbot_model_tokens", "Model tokens by kind", ["kind"], registry=r
        )
        self.turn_seconds = Histogram(
            "goodbot_turn_seconds",
            "Whole turn latency by channel",
            ["channel"],
            buckets=_FAST,
            registry=r,
        )
        self.turns_in_flight = Gauge(
            "goodbot_turns_in_flight", "Turns admitted and not yet answered", registry=r
        )
        self.notifications = Counter(
            "goodbot_notifications",
            "Notifications by channel and outcome",
            ["channel", "outcome"],
            registry=r,
        )

        self.queue_depth = Gauge(
            "goodbot_queue_depth",
            "Work waiting in the shared database, read at each scrape",
            ["queue"],
            registry=r,
        )
        self.duty_held = Gauge(
            "goodbot_duty_lease_held",
            "1 while this replica holds the background duty's lease",
            ["duty"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
