"""The demo Entra token endpoint behind ``goodbot serve --demo-graph`` (and the Graph tests).

It speaks the parts of Entra's v2.0 endpoint msal uses, on the demo Graph's HTTPS server:
``/{tenant}/v2.0/.well-known/openid-configuration``, its ``jwks_uri`` and
``/{tenant}/oauth2/v2.0/token`` for two grants:

* ``client_credentials``: the app authenticates with its secret (``client_secret``) or with a
  client assertion, a JWT signed by its certificate's key (RS256 or PS256, ``x5t`` or
  ``x5t#S256`` naming the certificate, audience the token endpoint, issuer and subject the
  client id). The answer is an app-only token.
* ``urn:ietf:params:oauth:grant-type:jwt-bearer`` with ``requested_token_use=on_behalf_of``:
  the same client authentication plus ``assertion``, a user's token for this app signed by
  this endpoint's key (``user_assertion`` makes one, as Teams single sign-on would hand the bot
  one). The answer is a delegated token for that user.

Errors have Entra's shape: ``{"error": "invalid_client", "error_description": "AADSTS…"}``.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OBO_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LIFETIME = 3600


@dataclass(frozen=True)
class IssuedToken:
    """What an access token the demo issued stands for."""

    user: str | None
    """The user a delegated token acts for; None for an app-only token."""
    scopes: tuple[str, ...]
    """Granted scopes (``.default`` for app-only)."""
    expires_at: float
    """Wall-clock expiry (seconds since the epoch)."""


def _thumbprint(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> str:
    return base64.urlsafe_b64encode(cert.fingerprint(algorithm)).decode().rstrip("=")


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "trace_id": str(uuid.uuid4())},
        status=status,
    )


class DemoEntra:
    """A tenant with one app registration: its secret and/or certificate, and issued tokens."""

    def __init__(
        self,
        tenant: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate: x509.Certificate | None = None,
    ) -> None:
        """Register the app.

        Args:
            tenant: The tenant in the authority's path.
            client_id: The app registration's client id.
            secret: Its client secret, if it has one.
            certificate: Its uploaded certificate, if it has one.
        """
        self.tenant = tenant
        self.client_id = client_id
        self.secret = secret
        self.certificate = certificate
        self.base = ""
        """``https://127.0.0.1:PORT``, set once served."""
        self.grants: Counter[str] = Counter()
        """Tokens issued, by grant (``client_credentials``, ``on_behalf_of``)."""
        self.client_auth: Counter[str] = Counter()
        """Successful client authentications, by kind (``secret``, ``certificate``)."""
        self.issued: dict[str, IssuedToken] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex[:16]

    @property
    def token_requests(self) -> int:
        """Token requests answered with a token."""
        return sum(self.grants.values())

    @property
    def issuer(self) -> str:
        """The ``iss`` of the tokens this tenant signs."""
        return f"{self.base}/{self.tenant}/v2.0"

    def add_routes(self, app: web.Application) -> None:
        """Serve the endpoint's three routes in ``app``."""
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self.openid)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self.keys)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)

    def user_assertion(self, upn: str, *, lifetime: int = LIFETIME, audience: str = "") -> str:
        """A signed-in user's token for this app, as Teams single sign-on hands the bot one."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience or f"api://{self.client_id}",
            "tid": self.tenant,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, upn)),
            "preferred_username": upn,
            "scp": "access_as_user",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})

    def lookup(self, token: str) -> IssuedToken | None:
        """What ``token`` stands for, or None when unknown or expired."""
        found = self.issued.get(token)
        return found if found is not None and found.expires_at > time.time() else None

    # Handlers.

    async def openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        root = f"{self.base}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{root}/v2.0",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "jwks_uri": f"{root}/discovery/v2.0/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def keys(self, request: web.Request) -> web.Response:
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(
            self._key.public_key(), as_dict=True
        )
        return web.json_response({"keys": [{**jwk, "kid": self._kid, "use": "sig"}]})

    async def token(self, request: web.Request) -> web.Response:
        if request.match_info["tenant"] != self.tenant:
            return _error(400, "invalid_tenant", f"AADSTS90002: Tenant '{self.tenant}' not found.")
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        refused = self._authenticate(fields, f"{self.base}/{self.tenant}/oauth2/v2.0/token")
        if refused is not None:
            return refused
        grant = fields.get("grant_type")
        scopes = tuple(fields.get("scope", "").split())
        if grant == "client_credentials":
            if "https://graph.microsoft.com/.default" not in scopes:
                return _error(400, "invalid_scope", "AADSTS1002012: use the .default scope.")
            return self._issue("client_credentials", None, scopes)
        if grant == OBO_GRANT and fields.get("requested_token_use") == "on_behalf_of":
            user = self._user_of(fields.get("assertion", ""))
            if user is None:
                return _error(400, "invalid_grant", "AADSTS50013: Assertion failed validation.")
            delegated = tuple(s for s in scopes if s.startswith("https://graph.microsoft.com/"))
            return self._issue("on_behalf_of", user, delegated)
        return _error(400, "unsupported_grant_type", f"AADSTS70003: {grant!r} is not supported.")

    # Internals.

    def _authenticate(self, fields: dict[str, str], audience: str) -> web.Response | None:
        if fields.get("client_id") != self.client_id:
            return _error(400, "unauthorized_client", "AADSTS700016: Application not found.")
        if "client_secret" in fields:
            if self.secret is not None and fields["client_secret"] == self.secret:
                self.client_auth["secret"] += 1
                return None
            return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        if fields.get("client_assertion_type") == ASSERTION_TYPE and self.certificate is not None:
            if self._assertion_valid(fields.get("client_assertion", ""), audience):
                self.client_auth["certificate"] += 1
                return None
            return _error(401, "invalid_client", "AADSTS700027: Client assertion failed.")
        return _error(401, "invalid_client", "AADSTS7000218: No client credential was sent.")

    def _assertion_valid(self, assertion: str, audience: str) -> bool:
        cert = self.certificate
        assert cert is not None
        try:
            header = jwt.get_unverified_header(assertion)
            named = {
                header.get("x5t#S256", "").rstrip("="): _thumbprint(cert, hashes.SHA256()),
                header.get("x5t", "").rstrip("="): _thumbprint(cert, hashes.SHA1()),  # noqa: S303
            }
            if not any(given and given == expected for given, expected in named.items()):
                return False
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=audience,
                issuer=self.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("sub") == self.client_id)

    def _user_of(self, assertion: str) -> str | None:
        try:
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        audience = str(claims.get("aud", ""))
        if audience != self.client_id and not audience.endswith(self.client_id):
            return None
        user = claims.get("preferred_username")
        return str(user).lower() if user else None

    def _issue(self, grant: str, user: str | None, scopes: tuple[str, ...]) -> web.Response:
        self.grants[grant] += 1
        token = f"demo-{'user' if user else 'app'}-{uuid.uuid4().hex}"
        self.issued[token] = IssuedToken(user, scopes, time.time() + LIFETIME)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": LIFETIME,
            "ext_expires_in": LIFETIME,
            "access_token": token,
        }
        if user is not None:
            body["scope"] = " ".join(scopes)
        return web.json_response(body)
