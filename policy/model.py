"""Policy file schema: principals, their per-channel identities, roles, grants and channels.

The file is YAML; every model refuses unknown keys, so a typo is an error that names the key
rather than a rule silently missing. Identities are immutable ids (Entra object id + tenant,
Slack team + user, a verified address, a CLI token's hash); display names never appear.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Channel = Literal["cli", "teams", "slack", "email", "mcp"]
CHANNELS: tuple[Channel, ...] = ("cli", "teams", "slack", "email", "mcp")
Action = Annotated[str, Field(pattern=r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")]
"""A dotted lowercase policy action such as ``approval.decide`` or ``ring.promote``."""

MUTATING_ACTIONS: frozenset[str] = frozenset(
    {
        "approval.decide",
        "ring.promote",
        "ring.pause",
        "ring.resume",
        "ring.rollback",
        "calendar.book",
        "calendar.book_as",
    }
)
"""Actions that change something; they always go through a confirmation, and a read-only
channel never grants them."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(Strict):
    """One immutable identity of a principal on one channel."""

    channel: Channel
    """The channel this identity is valid on."""
    id: str = Field(min_length=1, max_length=300)
    """Channel-specific immutable id: ``<tenant id>:<object id>`` (Teams), ``<team id>:<user
    id>`` (Slack), a lower-case address or ``@domain`` (email: every address of that domain
    that is not listed itself), ``sha256:<hex>`` of a token (CLI, MCP)."""

    @field_validator("id")
    @classmethod
    def _shape(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _by_channel(self) -> Identity:
        if self.channel in ("teams", "slack") and ":" not in self.id:
            raise ValueError(f"a {self.channel} identity is '<tenant or team>:<user id>'")
        if self.channel == "email" and (
            self.id.count("@") != 1 or self.id != self.id.lower() or self.id.endswith("@")
        ):
            raise ValueError("an email identity is a lower-case address or @domain")
        if self.channel in ("cli", "mcp") and not self.id.startswith("sha256:"):
            raise ValueError(f"a {self.channel} identity is 'sha256:<hex of the token>'")
        return self


class Principal(Strict):
    """A person or service goodbot acts for."""

    roles: list[str] = Field(min_length=1)
    """Roles from the ``roles`` section."""
    control_plane_principal: str | None = None
    """Name the gateway asserts to the control plane (``X-Act-As``); the key by default."""
    identities: list[Identity] = Field(default_factory=list)
    """Immutable ids on each channel; one principal may link several channels."""
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    """Overrides the default message rate for this principal."""


class Grant(Strict):
    """Permission to use one action, optionally only on some channels or control-plane scopes."""

    action: Action
    channels: list[Channel] | None = None
    """Only on these channels; None means every enabled channel."""
    scopes: list[str] | None = None
    """Only for targets inside these control-plane scope ids; None means any scope."""


class Role(Strict):
    grants: list[Action | Grant] = Field(default_factory=list)
    """Actions the role may use; a bare string grants it everywhere."""


class ChannelPolicy(Strict):
    enabled: bool = True
    """A disabled channel is refused for everyone."""
    read_only: bool = False
    """No mutating action is granted on this channel, whatever the roles say."""
    max_message_bytes: int | None = Field(default=None, ge=1)
    """Overrides the default size limit for this channel."""


class Defaults(Strict):
    max_message_bytes: int = Field(default=8192, ge=1)
    """Largest message accepted (UTF-8 bytes); larger ones are refused with this limit named."""
    rate_limit_per_minute: int = Field(default=30, ge=1)
    """Messages one principal may send per minute (token bucket, burst of the same size)."""


class PolicyFile(Strict):
    """The whole policy document."""

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    channels: dict[Channel, ChannelPolicy] = Field(default_factory=dict)
    """Channel settings; a channel not listed is disabled (deny by default)."""
    roles: dict[str, Role] = Field(default_factory=dict)
    principals: dict[str, Principal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        for name, principal in self.principals.items():
            for role in principal.roles:
                if role not in self.roles:
                    raise ValueError(f"principals.{name}.roles: unknown role {role!r}")
        seen: dict[tuple[str, str], str] = {}
        for name, principal in self.principals.items():
            for identity in principal.identities:
                key = (identity.channel, identity.id)
                if key in seen:
                    raise ValueError(
                        f"principals.{name}.identities: {identity.channel} identity already "
                        f"belongs to {seen[key]}"
                    )
                seen[key] = name
        return self
