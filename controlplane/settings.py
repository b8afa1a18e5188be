"""Control plane settings: one tree, read from ``GOODBOT_CP_`` environment variables."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControlPlaneSettings(BaseSettings):
    """Everything the control plane service can be told; defaults run it embedded on SQLite."""

    model_config = SettingsConfigDict(env_prefix="GOODBOT_CP_", env_nested_delimiter="__")

    data_dir: Path = Path(".goodbot/controlplane")
    """Directory for the SQLite database, the signing key and the demo tokens file."""

    database_url: str = ""
    """SQLAlchemy async URL; empty means SQLite (WAL) at ``data_dir/controlplane.db``."""

    database_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema to keep the tables in (the connection's search_path); None for default."""

    migrate_on_start: bool = True
    """Apply the migrations when serving starts; off when ``goodbot controlplane migrate``
    runs them as a step of its own (the Kubernetes Job), so the service needs no DDL rights."""

    host: str = "127.0.0.1"
    """Address to listen on."""

    port: int = 8081
    """Port to listen on; 0 picks a free one."""

    bootstrap_token: SecretStr | None = None
    """Platform token allowed to create tenants (``POST /api/v1/tenants``); unset disables it."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 naming this limit."""

    rate_limit_per_second: float = Field(default=200.0, gt=0)
    """Sustained requests per second allowed for one principal."""

    rate_limit_burst: int = Field(default=400, ge=1)
    """Requests a principal may make in a burst before the sustained rate applies."""

    auth_cache_seconds: float = Field(default=2.0, ge=0)
    """How long an authenticated token is trusted without a database lookup. A revocation takes
    effect at once on the replica that revoked and within this time on the others; 0 disables."""

    stale_checkin_after: timedelta = timedelta(days=7)
    """A device whose last check-in is older than this is in compliance state ``unknown``."""

    snapshot_ttl: timedelta = timedelta(days=30)
    """How long a signed offline policy snapshot stays valid for an endpoint agent."""

    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the webhook sender looks for due deliveries."""

    webhook_max_attempts: int = Field(default=8, ge=1)
    """Deliveries that keep failing are given up after this many attempts."""

    webhook_backoff_base_seconds: float = Field(default=2.0, gt=0)
    """First retry delay; each further attempt doubles it (capped at one hour)."""

    webhook_allow_private_networks: bool = False
    """Let webhooks target loopback and private addresses (tests, closed networks only)."""

    cab_risk_threshold: float = Field(default=50.0, ge=0, le=100)
    """Risk scores above this need CAB approval before publishing beyond Ring 1 (seed 002 §9.3)."""

    gate_success_rate: dict[int, float] = {1: 0.98, 2: 0.97, 3: 0.99, 4: 0.99}
    """Install success rate a ring must reach before promotion out of it (seed 002 §10.2)."""

    gate_min_devices: dict[int, int] = {0: 1, 1: 20, 2: 50, 3: 100, 4: 100}
    """Devices that must have reported before a ring's success rate counts (else inconclusive)."""

    time_to_compliance: dict[str, timedelta] = {
        "online": timedelta(hours=24),
        "intermittent": timedelta(hours=72),
        "air_gapped": timedelta(days=7),
    }
    """Longest a device of each site class may take to install (seed 002 §10.2)."""

    simulator_success_rate: float = Field(default=0.995, ge=0, le=1)
    """Fleet simulator: share of installs that succeed."""

    simulator_tick_seconds: float = Field(default=2.0, gt=0)
    """Fleet simulator: how often it advances installs (0 < tick)."""

    simulator_enabled: bool = True
    """Run the built-in fleet simulator as the execution plane."""

    def resolved_database_url(self) -> str:
        """The database URL to connect to, defaulting to SQLite inside ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'controlplane.db').resolve()}"
