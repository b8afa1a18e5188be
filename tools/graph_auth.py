"""Entra tokens for Microsoft Graph: app-only, and on behalf of a signed-in user (tools → Entra).

One ``msal.ConfidentialClientApplication`` per gateway, with a tenant-specific authority and
either a client secret or a certificate (``ClientCertificate``: msal signs a client assertion
with its private key and sends the certificate, so Entra checks it against the one uploaded to
the app registration).

* App-only: ``acquire_token_for_client`` for ``https://graph.microsoft.com/.default``; msal
  answers from its cache while the token is valid.
* Delegated, for a user who signed in through Teams single sign-on: ``acquire_token_on_behalf_of``
  exchanges the user's token (the assertion Teams handed the bot) for a Graph token with the
  delegated scopes. msal does not cache that flow, so ``EntraTokens`` keeps one token per user
  until shortly before it expires, and the assertion to exchange again afterwards.

msal is synchronous and its constructor fetches the OpenID configuration, so both run in
``asyncio.to_thread``. Errors are ``GraphAuthError`` (``tools.graph``'s tree).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

log = logging.getLogger(__name__)

APP_SCOPE: Final = "https://graph.microsoft.com/.default"
DELEGATED_SCOPES: Final = (
    "https://graph.microsoft.com/Calendars.ReadWrite",
    "https://graph.microsoft.com/MailboxSettings.Read",
)
"""Delegated permissions asked through on-behalf-of (msal adds openid, profile, offline_access)."""
REFRESH_MARGIN: Final = 300.0
"""Seconds before expiry a cached user token counts as expired."""
MAX_USERS: Final = 10_000
"""Signed-in users whose tokens are kept (the least recently used go first)."""


class TokenError(Exception):
    """Entra gave no token; ``code`` is its ``error`` (``invalid_grant``…) or ours."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ClientCertificate:
    """An app registration's certificate credential (RSA), read from one PEM file."""

    private_key: SecretStr
    """The PEM private key (unencrypted)."""
    certificate: str
    """The PEM certificate uploaded to the app registration."""

    @classmethod
    def load(cls, path: Path) -> ClientCertificate:
        """Read a PEM file holding the private key and the certificate, in either order.

        Raises:
            ValueError: The file lacks one of them.
        """
        text = path.read_text()
        key = _pem_block(text, "PRIVATE KEY")
        cert = _pem_block(text, "CERTIFICATE")
        if key is None or cert is None:
            raise ValueError(f"{path} must hold a PEM private key and a PEM certificate")
        return cls(SecretStr(key), cert)

    def msal_credential(self) -> dict[str, str]:
        """msal's ``client_credential``: it signs with PS256 and sends ``x5t#S256`` and ``x5c``."""
        return {
            "private_key": self.private_key.get_secret_value(),
            "public_certificate": self.certificate,
        }

    def __repr__(self) -> str:
        return "ClientCertificate(private_key=SecretStr('**********'), certificate=…)"


def _pem_block(text: str, label: str) -> str | None:
    start = text.find("-----BEGIN ")
    while start != -1:
        header_end = text.find("-----", start + 11)
        kind = text[start + 11 : header_end]
        end_marker = f"-----END {kind}-----"
        end = text.find(end_marker, header_end)
        if end == -1:
            return None
        if kind.endswith(label) and (label != "CERTIFICATE" or kind == label):
            return text[start : end + len(end_marker)] + "\n"
        start = text.find("-----BEGIN ", end)
    return None


Credential = SecretStr | ClientCertificate


@dataclass
class _UserToken:
    assertion: SecretStr
    access_token: SecretStr | None = None
    expires_at: float = 0.0


class EntraTokens:
    """Graph tokens from Entra for one app registration: app-only and per signed-in user."""

    def __init__(
        self,
        authority: str,
        client_id: str,
        credential: Credential,
        *,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure; nothing is fetched until the first token is asked for.

        Args:
            authority: ``https://login.microsoftonline.com/<tenant>`` (tenant-specific).
            client_id: The app registration's client id.
            credential: Its client secret, or its certificate.
            ca_file: A CA bundle trusted for Entra instead of the system's (tests, the demo).
            clock: Seconds, monotonic (tests move it).
        """
        self.authority = authority
        self.client_id = client_id
        self.ca_file = ca_file
        self._credential = credential
        self.clock = clock
        """Seconds, monotonic: when cached user tokens expire."""
        self._msal: Any = None
        self._requests: Any = None
        self._lock = asyncio.Lock()
        self._users: OrderedDict[str, _UserToken] = OrderedDict()

    def _build(self) -> Any:
        import msal  # type: ignore[import-untyped]
        import requests

        session = requests.Session()
        # The env's REQUESTS_CA_BUNDLE would override ``verify`` (TESTING-NOTES §1.5).
        session.trust_env = self.ca_file is None
        if self.ca_file is not None:
            session.verify = self.ca_file
        self._requests = session
        credential = self._credential
        return msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=(
                credential.msal_credential()
                if isinstance(credential, ClientCertificate)
                else credential.get_secret_value()
            ),
            authority=self.authority,
            instance_discovery=self.ca_file is None,
            http_client=session,
        )

    async def _app(self) -> Any:
        async with self._lock:
            if self._msal is None:
                try:
                    self._msal = await asyncio.to_thread(self._build)
                except Exception as exc:
                    raise TokenError(
                        f"cannot reach Entra at {self.authority}: {type(exc).__name__}",
                        "token_unavailable",
                    ) from None
            return self._msal

    async def app_token(self) -> str:
        """An app-only Graph token, from msal's cache while it is valid."""
        app = await self._app()
        result = await asyncio.to_thread(app.acquire_token_for_client, scopes=[APP_SCOPE])
        return _access_token(result)

    async def sign_in(self, user: str, assertion: str) -> None:
        """Exchange a signed-in user's token for a delegated Graph token (on-behalf-of), now.

        Call it when a channel receives the user's single sign-on token (Teams
        ``signin/tokenExchange``); the token is kept for ``user`` and refreshed from the same
        assertion while that is still accepted.

        Args:
            user: The gateway principal the token acts for (the key of the cache).
            assertion: The user's access token whose audience is this app (``api://…``).

        Raises:
            TokenError: Entra refused the exchange (expired assertion, missing consent…).
        """
        entry = _UserToken(SecretStr(assertion))
        await self._exchange(user, entry)
        self._users[user] = entry
        self._users.move_to_end(user)
        while len(self._users) > MAX_USERS:
            self._users.popitem(last=False)

    async def user_token(self, user: str) -> str | None:
        """The user's delegated Graph token: cached, or exchanged again; None when none."""
        entry = self._users.get(user)
        if entry is None:
            return None
        self._users.move_to_end(user)
        if entry.access_token is not None and self.clock() < entry.expires_at:
            return entry.access_token.get_secret_value()
        try:
            await self._exchange(user, entry)
        except TokenError as exc:
            log.info("delegated token lost; signing the user out", extra={"code": exc.code})
            self._users.pop(user, None)
            return None
        return entry.access_token.get_secret_value() if entry.access_token else None

    def signed_in(self, user: str) -> bool:
        """A delegated token is held (or can be exchanged again) for ``user``."""
        return user in self._users

    def sign_out(self, user: str) -> None:
        """Forget the user's delegated token and assertion."""
        self._users.pop(user, None)

    async def _exchange(self, user: str, entry: _UserToken) -> None:
        app = await self._app()
        result = await asyncio.to_thread(
            app.acquire_token_on_behalf_of,
            entry.assertion.get_secret_value(),
            list(DELEGATED_SCOPES),
        )
        token = _access_token(result)
        lifetime = float(result.get("expires_in", 3600))
        entry.access_token = SecretStr(token)
        entry.expires_at = self.clock() + max(lifetime - REFRESH_MARGIN, 0.0)
        log.info("delegated Graph token obtained", extra={"user": user})

    def close(self) -> None:
        """Close msal's HTTP session and forget every token."""
        if self._requests is not None:
            self._requests.close()
        self._msal = self._requests = None
        self._users.clear()


def _access_token(result: dict[str, Any]) -> str:
    if "access_token" not in result:
        code = str(result.get("error", "token_refused"))
        raise TokenError(f"Entra refused a token: {code}", code)
    return str(result["access_token"])
