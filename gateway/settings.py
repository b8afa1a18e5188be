"""Gateway configuration: one YAML file plus ``GOODBOT_`` environment overrides.

Precedence, highest first: environment variables (``GOODBOT_SERVER__PORT=9000``), then the YAML
file, then defaults. Unknown keys are refused, so a typo is an error naming the key. Secrets
never come from the YAML file: each secret has an environment variable and a ``…_file`` key
naming a file that holds it (a mounted Kubernetes secret, say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SECRET_KEYS: Final = (
    ("controlplane", "token"),
    ("model", "api_key"),
    ("slack", "signing_secret"),
    ("slack", "bot_token"),
    ("slack", "app_token"),
    ("graph", "client_secret"),
    ("email", "imap_password"),
    ("email", "smtp_password"),
    ("email", "code_secret"),
    ("teams", "client_secret"),
)
"""Settings that hold secrets: refused in the YAML file, read from the environment or a file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port the gateway listens on; 0 picks a free one."""
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    """Reverse proxies (addresses or networks) whose ``X-Forwarded-For`` names the client,
    such as the load balancer's; from other peers the header is ignored."""


class ControlPlaneSettings(Section):
    url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """Where the control plane answers; None starts the embedded one with demo data."""
    token: SecretStr | None = None
    """The gateway's service credential (environment: ``GOODBOT_CONTROLPLANE__TOKEN``)."""
    token_file: Path | None = None
    """A file holding the credential, read at start."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Longest a tool waits for the control plane."""
    embedded_port: int = Field(default=8081, ge=0, le=65535)
    """Loopback port of the embedded demo control plane (no ``url``); 0 picks a free one."""


class DatabaseSettings(Section):
    url: str = ""
    """SQLAlchemy async URL of the gateway's store; empty is SQLite in the data directory."""
    schema_name: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema for the gateway's tables."""
    migrate_on_start: bool = True
    """Apply the gateway's migrations at start; off when ``goodbot migrate`` runs them first
    (a Kubernetes Job), so replicas never need DDL rights."""


class ReplicaSettings(Section):
    """Several gateways on one PostgreSQL (no effect on SQLite, which is one process)."""

    lease_retry_seconds: float = Field(default=2.0, gt=0, le=300)
    """How often a replica without a duty's lease tries to take it (the failover bound)."""
    recovery_seconds: float = Field(default=30.0, gt=0, le=3600)
    """How often the replica holding the recovery lease looks for work a dead one left."""
    recover_after_seconds: float = Field(default=300.0, ge=0, le=86_400)
    """Work left unfinished this long counts as a dead replica's: keep it longer than a turn
    can take (``max_steps`` * (``model.timeout_seconds`` + ``controlplane.timeout_seconds``),
    240 s with the defaults), or a slow turn would be answered twice."""
    shared_rate_limit: bool = True
    """Keep the per-principal message rate in PostgreSQL, so it holds across replicas."""


class ModelSettings(Section):
    route: Literal["rules", "openai"] = "rules"
    """``rules`` needs no model; ``openai`` speaks to any OpenAI-compatible endpoint."""
    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """The endpoint (OpenAI, Azure OpenAI, vLLM, Ollama); required for ``openai``."""
    model: str | None = None
    """Model name; required for ``openai``."""
    api_key: SecretStr | None = None
    """Key for the endpoint (environment: ``GOODBOT_MODEL__API_KEY``)."""
    api_key_file: Path | None = None
    """A file holding the key."""
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest one model call may take."""
    link_hosts: list[str] = []
    """Hosts (and their subdomains) a model-written reply may link to; other links are
    removed, so a model that obeyed a hostile tool result cannot send data out in a link."""

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> ModelSettings:
        if self.route == "openai" and (self.base_url is None or self.model is None):
            raise ValueError("the openai route needs model.base_url and model.model")
        return self


class NotificationSettings(Section):
    enabled: bool = True
    """Poll the control plane's events and tell the people concerned."""
    poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    """How often the events are read."""
    deliver_seconds: float = Field(default=2.0, gt=0, le=3600)
    """How often push channels (Slack, Teams) send what waits in the outbox."""


class SlackSettings(Section):
    signing_secret: SecretStr | None = None
    """Verifies Slack's requests (environment: ``GOODBOT_SLACK__SIGNING_SECRET``)."""
    signing_secret_file: Path | None = None
    """A file holding the signing secret."""
    bot_token: SecretStr | None = None
    """The bot's ``xoxb-`` token (environment: ``GOODBOT_SLACK__BOT_TOKEN``)."""
    bot_token_file: Path | None = None
    """A file holding the bot token."""
    api_base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """The Web API's base URL; None is Slack's own (tests point it at a loopback server)."""
    socket_mode: bool = False
    """Receive over Socket Mode (an outbound WebSocket, for a gateway Slack cannot reach);
    needs ``app_token``. ``/slack/events`` is then served only if a signing secret is set too."""
    app_token: SecretStr | None = None
    """The app-level ``xapp-`` token with ``connections:write``, for Socket Mode (environment:
    ``GOODBOT_SLACK__APP_TOKEN``)."""
    app_token_file: Path | None = None
    """A file holding the app-level token."""

    @property
    def has_signing_secret(self) -> bool:
        """A signing secret is set, so ``/slack/events`` can verify requests."""
        return self.signing_secret is not None or self.signing_secret_file is not None

    @property
    def enabled(self) -> bool:
        """The bot token and a way in (a signing secret, or Socket Mode's app token) are set."""
        if self.bot_token is None and self.bot_token_file is None:
            return False
        socket = self.socket_mode and (
            self.app_token is not None or self.app_token_file is not None
        )
        return self.has_signing_secret or socket

    @model_validator(mode="after")
    def _socket_needs_token(self) -> SlackSettings:
        if self.socket_mode and self.app_token is None and self.app_token_file is None:
            raise ValueError("slack.socket_mode needs slack.app_token (GOODBOT_SLACK__APP_TOKEN)")
        return self


class TeamsSettings(Section):
    """Microsoft Teams through an Azure Bot resource; on when ``app_id`` is set.

    Inbound activities are always verified (see ``channels.teams_auth``): nothing here turns
    validation off. Without ``client_secret`` the gateway refuses to start unless
    ``goodbot serve --teams-development`` is given, which binds loopback only.
    """

    app_id: str | None = None
    """The bot's Microsoft App ID: the Entra app registration's application (client) id,
    also the Azure Bot resource's. Inbound tokens must carry it as their audience."""
    tenant_id: str | None = None
    """The Entra tenant id the app registration lives in (single-tenant bot); outbound
    tokens are requested from it."""
    client_secret: SecretStr | None = None
    """The app registration's client secret (environment: ``GOODBOT_TEAMS__CLIENT_SECRET``)."""
    client_secret_file: Path | None = None
    """A file holding the client secret."""
    allowed_tenants: list[str] = []
    """Entra tenant ids whose users may talk to goodbot; empty allows ``tenant_id`` only."""
    authority_host: str = Field(
        default="https://login.microsoftonline.com", pattern=r"^https://[^\s/]+(/.*)?$"
    )
    """Entra's root for outbound tokens (msal requires https); a loopback IdP in tests."""
    ca_file: Path | None = None
    """A CA bundle trusted for the token endpoint instead of the system's (tests, local)."""
    send_attempts: int = Field(default=4, ge=1, le=10)
    """Tries per outbound message when the connector answers 429 or 5xx."""
    sso_connection: str | None = None
    """The Azure Bot resource's OAuth connection for single sign-on; with Graph configured
    (the same app registration), a person's Teams token is exchanged on their behalf for a
    delegated Graph token. None turns single sign-on off."""
    token_service_url: str = Field(
        default="https://api.botframework.com", pattern=r"^https?://[^\s/]+(/.*)?$"
    )
    """The Bot Framework token service behind the OAuth connection (sign-in links, magic
    codes); tests point it at a loopback emulator."""

    @property
    def enabled(self) -> bool:
        """An app id is set: the Teams channel is served at ``/api/messages``."""
        return bool(self.app_id)

    def secret(self) -> str | None:
        """The client secret, from the environment or its file (read when asked)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return None

    def tenants(self) -> frozenset[str]:
        """The tenant allowlist in force (lower case)."""
        listed = self.allowed_tenants or ([self.tenant_id] if self.tenant_id else [])
        return frozenset(t.strip().lower() for t in listed if t.strip())


class GraphSettings(Section):
    """Microsoft Graph for the calendar tools; on when ``tenant_id`` and ``client_id`` are set."""

    tenant_id: str | None = None
    """The Entra tenant (id or primary domain) the app registration lives in."""
    client_id: str | None = None
    """The app registration's application (client) id."""
    client_secret: SecretStr | None = None
    """Its client secret (environment: ``GOODBOT_GRAPH__CLIENT_SECRET``)."""
    client_secret_file: Path | None = None
    """A file holding the client secret."""
    client_certificate_file: Path | None = None
    """Instead of a secret: a PEM file with the app's certificate and its (RSA) private key;
    msal signs a client assertion with it. Takes precedence over a secret."""
    authority_host: str = Field(
        default="https://login.microsoftonline.com", pattern=r"^https://[^\s/]+(/.*)?$"
    )
    """Entra's root (msal requires https); a sovereign cloud's, or a loopback IdP in tests."""
    base_url: str = Field(
        default="https://graph.microsoft.com/v1.0", pattern=r"^https?://[^\s/]+(/.*)?$"
    )
    """Graph's root, with its version."""
    ca_file: Path | None = None
    """A CA bundle trusted for Entra and Graph instead of the system's (tests, local)."""
    domain: str | None = None
    """Mail domain completing bare names (``li`` → ``li@<domain>``), the organizer's included."""
    allowed_domains: list[str] = []
    """Domains a booking may invite; empty allows any."""
    timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    """Longest one Graph call may take, retries included."""

    @property
    def enabled(self) -> bool:
        """Graph is configured: the calendar tools are offered."""
        return bool(self.tenant_id and self.client_id)

    def secret(self) -> str | None:
        """The client secret, from the environment or its file (read when asked)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return None


_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_HOST: Final = r"^[A-Za-z0-9.:_-]{1,253}$"
_ADDRESS: Final = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class EmailSettings(Section):
    """The email channel: a mailbox read over IMAP, replies through an SMTP relay.

    On when ``address``, ``imap_host`` and ``smtp_host`` are set; then ``trusted_authserv_ids``
    and the IMAP login are required.
    """

    address: str | None = Field(default=None, pattern=_ADDRESS)
    """goodbot's own address: replies come from it, and mail from it is never answered."""
    display_name: str = Field(default="goodbot", min_length=1, max_length=100)
    """The name shown with ``address`` on replies."""
    own_addresses: list[str] = []
    """Further addresses that deliver into the mailbox (aliases); never answered either."""
    trusted_authserv_ids: list[str] = []
    """The authserv-ids of the receiving servers whose Authentication-Results headers decide
    trust (``mx.example.com``); headers from any other server are ignored."""
    imap_host: str | None = Field(default=None, pattern=_HOST)
    """The IMAP server."""
    imap_port: int = Field(default=993, ge=1, le=65535)
    """Its port (993 is IMAP over TLS)."""
    imap_tls: Literal["tls", "none"] = "tls"
    """``tls``: implicit TLS (aioimaplib has no STARTTLS); ``none`` only for a loopback host."""
    imap_username: str | None = None
    """The mailbox's login."""
    imap_password: SecretStr | None = None
    """Its password (environment: ``GOODBOT_EMAIL__IMAP_PASSWORD``)."""
    imap_password_file: Path | None = None
    """A file holding the IMAP password."""
    imap_mailbox: str = Field(default="INBOX", min_length=1, max_length=200)
    """The folder requests arrive in."""
    imap_idle: bool = True
    """Wait for new mail with IMAP IDLE when the server offers it (otherwise poll)."""
    poll_seconds: float = Field(default=30.0, gt=0, le=1500)
    """How often the mailbox is read without IDLE; with IDLE, how often IDLE is renewed."""
    smtp_host: str | None = Field(default=None, pattern=_HOST)
    """The relay replies are handed to."""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    """Its port (587 submission with STARTTLS, 465 implicit TLS)."""
    smtp_tls: Literal["tls", "starttls", "none"] = "starttls"
    """``tls`` (implicit), ``starttls`` (required, not opportunistic), or ``none`` only for a
    loopback relay."""
    smtp_username: str | None = None
    """The relay login, if it asks for one."""
    smtp_password: SecretStr | None = None
    """Its password (environment: ``GOODBOT_EMAIL__SMTP_PASSWORD``)."""
    smtp_password_file: Path | None = None
    """A file holding the SMTP password."""
    ca_file: Path | None = None
    """A CA bundle trusted for IMAP and SMTP instead of the system's (a private CA, tests)."""
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    """Longest one IMAP command or SMTP delivery may take."""
    max_email_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Larger mail is not downloaded; a known sender is told this limit. The policy's
    ``max_message_bytes`` still limits the request text."""
    sender_rate_per_minute: int = Field(default=10, ge=1)
    """Mail one address may send per minute; the rest is ignored, not answered (loop brake)."""
    code_secret: SecretStr | None = None
    """Key deriving the confirmation codes (``GOODBOT_EMAIL__CODE_SECRET``); replicas share
    one. Unset: a key generated into the data directory at first start."""
    code_secret_file: Path | None = None
    """A file holding that key."""

    @property
    def enabled(self) -> bool:
        """The mailbox and the relay are configured, so the email channel runs."""
        return bool(self.address and self.imap_host and self.smtp_host)

    @model_validator(mode="after")
    def _consistent(self) -> EmailSettings:
        for key in ("imap", "smtp"):
            host, tls = getattr(self, f"{key}_host"), getattr(self, f"{key}_tls")
            if host is not None and tls == "none" and host not in _LOOPBACK:
                raise ValueError(f"email.{key}_tls: none is allowed only for a loopback host")
        return self

    def password(self, which: Literal["imap", "smtp", "code"]) -> str | None:
        """A secret's value, from the environment or its file (read when asked)."""
        value, path = {
            "imap": (self.imap_password, self.imap_password_file),
            "smtp": (self.smtp_password, self.smtp_password_file),
            "code": (self.code_secret, self.code_secret_file),
        }[which]
        if value is not None:
            return value.get_secret_value()
        if path is not None:
            return path.read_text().strip()
        return None


class GatewaySettings(BaseSettings):
    """Everything the gateway can be told."""

    model_config = SettingsConfigDict(
        env_prefix="GOODBOT_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path(".goodbot")
    """Where the embedded databases, keys and the local CLI token live."""
    policy_file: Path | None = None
    """The policy YAML; None uses the one written into the data directory at first start."""
    server: ServerSettings = ServerSettings()
    controlplane: ControlPlaneSettings = ControlPlaneSettings()
    database: DatabaseSettings = DatabaseSettings()
    model: ModelSettings = ModelSettings()
    notifications: NotificationSettings = NotificationSettings()
    replicas: ReplicaSettings = ReplicaSettings()
    graph: GraphSettings = GraphSettings()
    slack: SlackSettings = SlackSettings()
    email: EmailSettings = EmailSettings()
    teams: TeamsSettings = TeamsSettings()
    confirmation_ttl_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long a proposed change waits for its confirmation (default ten minutes)."""
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    """Finished messages, confirmations and delivered notifications older than this are
    deleted by a background duty (as ``goodbot sessions purge`` does); None keeps them. Keep it
    far longer than any channel retries a delivery (a retry after it would be admitted again)."""
    retention_sweep_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    """How often the retention duty runs."""
    expiry_sweep_seconds: float = Field(default=30.0, gt=0, le=3600)
    """How often pending confirmations past their expiry are marked expired."""
    max_steps: int = Field(default=6, ge=1, le=20)
    """Route steps one turn may take."""
    history: int = Field(default=20, ge=0, le=200)
    """Earlier messages of the conversation a turn shows the route."""
    turn_concurrency: int = Field(default=16, ge=1, le=1024)
    """Turns one process runs at once; more wait their turn. Bounding them keeps CPU for
    acknowledging new messages, which Slack and Teams retry when slow."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the YAML document (see ``load``); the environment overrides it.
        return env_settings, init_settings

    def secret(
        self,
        section: Literal["controlplane", "model", "slack"],
        key: Literal["signing_secret", "bot_token", "app_token"] = "bot_token",
    ) -> str | None:
        """A secret's value, from the environment or its file (read when asked).

        ``key`` chooses among a section's secrets (only ``slack`` has several).
        """
        if section == "controlplane":
            value, path = self.controlplane.token, self.controlplane.token_file
        elif section == "slack" and key == "signing_secret":
            value, path = self.slack.signing_secret, self.slack.signing_secret_file
        elif section == "slack" and key == "app_token":
            value, path = self.slack.app_token, self.slack.app_token_file
        elif section == "slack":
            value, path = self.slack.bot_token, self.slack.bot_token_file
        else:
            value, path = self.model.api_key, self.model.api_key_file
        if value is not None:
            return value.get_secret_value()
        if path is not None:
            return path.read_text().strip()
        return None


class ConfigError(Exception):
    """A configuration that cannot be used, with the exact key and why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def load(path: Path | None) -> GatewaySettings:
    """Read the YAML file (if any) and the environment; raise ``ConfigError`` naming the key."""
    document: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(str(path), "the document must be a mapping")
        document = raw or {}
        for section, key in SECRET_KEYS:
            if isinstance(document.get(section), dict) and key in document[section]:
                env = f"GOODBOT_{section.upper()}__{key.upper()}"
                raise ConfigError(
                    f"{section}.{key}",
                    f"secrets are not read from the config file; set {env} or {section}.{key}_file",
                )
    try:
        settings = GatewaySettings(**document)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(key, reason) from None
    for section in ("controlplane", "model"):
        file_key = "token_file" if section == "controlplane" else "api_key_file"
        secret_file = getattr(getattr(settings, section), file_key)
        if secret_file is not None and not Path(secret_file).is_file():
            raise ConfigError(f"{section}.{file_key}", f"no such file: {secret_file}")
    for file_key in ("signing_secret_file", "bot_token_file", "app_token_file"):
        secret_file = getattr(settings.slack, file_key)
        if secret_file is not None and not Path(secret_file).is_file():
            raise ConfigError(f"slack.{file_key}", f"no such file: {secret_file}")
    graph_file = settings.graph.client_secret_file
    if graph_file is not None and not Path(graph_file).is_file():
        raise ConfigError("graph.client_secret_file", f"no such file: {graph_file}")
    teams_file = settings.teams.client_secret_file
    if teams_file is not None and not Path(teams_file).is_file():
        raise ConfigError("teams.client_secret_file", f"no such file: {teams_file}")
    if settings.teams.enabled and not settings.teams.tenant_id:
        raise ConfigError("teams.tenant_id", "required with teams.app_id")
    cert_file = settings.graph.client_certificate_file
    if cert_file is not None and not Path(cert_file).is_file():
        raise ConfigError("graph.client_certificate_file", f"no such file: {cert_file}")
    for file_key in ("imap_password_file", "smtp_password_file", "code_secret_file"):
        secret_file = getattr(settings.email, file_key)
        if secret_file is not None and not Path(secret_file).is_file():
            raise ConfigError(f"email.{file_key}", f"no such file: {secret_file}")
    mail = settings.email
    if mail.enabled:
        if not mail.trusted_authserv_ids:
            raise ConfigError(
                "email.trusted_authserv_ids",
                "name the receiving server(s) whose Authentication-Results decide trust",
            )
        if mail.imap_username is None or mail.password("imap") is None:
            raise ConfigError(
                "email.imap_password",
                "set email.imap_username and GOODBOT_EMAIL__IMAP_PASSWORD or imap_password_file",
            )
    if settings.graph.enabled and cert_file is None and settings.graph.secret() is None:
        raise ConfigError(
            "graph.client_secret",
            "set GOODBOT_GRAPH__CLIENT_SECRET, graph.client_secret_file or "
            "graph.client_certificate_file",
        )
    return settings


def describe(settings: GatewaySettings) -> list[str]:
    """A summary for ``goodbot config check``: every effective value, secrets only as set/unset."""
    lines = [
        f"data_dir: {settings.data_dir}",
        f"policy_file: {settings.policy_file or '(written into the data directory)'}",
        f"server: {settings.server.host}:{settings.server.port}",
        f"controlplane: {settings.controlplane.url or 'embedded, with demo data'}",
        f"controlplane credential: {'set' if settings.secret('controlplane') else 'not set'}",
        f"database: {settings.database.url or 'SQLite in the data directory'}"
        + ("" if settings.database.migrate_on_start else " (migrated by `goodbot migrate`)"),
        f"model route: {settings.model.route}",
    ]
    if settings.model.route == "openai":
        lines.append(f"model: {settings.model.model} at {settings.model.base_url}")
        lines.append(f"model key: {'set' if settings.secret('model') else 'not set'}")
    lines.append(
        f"slack: {'enabled' if settings.slack.enabled else 'off (no signing secret and bot token)'}"
    )
    mail = settings.email
    lines.append(
        f"email: {mail.address} via imap {mail.imap_host}:{mail.imap_port} ({mail.imap_tls}), "
        f"smtp {mail.smtp_host}:{mail.smtp_port} ({mail.smtp_tls}), trusting "
        f"{', '.join(mail.trusted_authserv_ids)}"
        if mail.enabled
        else "email: off (no address, imap_host and smtp_host)"
    )
    teams = settings.teams
    if teams.enabled:
        secret = "set" if teams.secret() else "NOT SET (serve needs --teams-development)"
        sso = f", single sign-on via {teams.sso_connection}" if teams.sso_connection else ""
        lines.append(
            f"teams: app {teams.app_id}, tenants {', '.join(sorted(teams.tenants()))}, "
            f"client secret {secret}{sso}"
        )
    else:
        lines.append("teams: off (no app_id)")
    lines.append(
        f"graph: {settings.graph.tenant_id} ({settings.graph.base_url})"
        if settings.graph.enabled
        else "graph: off (no tenant_id and client_id; no calendar tools)"
    )
    if settings.graph.enabled:
        credential = (
            f"certificate {settings.graph.client_certificate_file}"
            if settings.graph.client_certificate_file is not None
            else f"secret {'set' if settings.graph.secret() else 'not set'}"
        )
        lines.append(f"graph credential: {credential}")
    return lines
