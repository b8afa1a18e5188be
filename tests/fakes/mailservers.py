"""Real mail servers on loopback for the email tests: dovecot (IMAP) and aiosmtpd (SMTP relay).

``Dovecot`` runs the Debian package's binary in the foreground with a throwaway configuration
(its own base_dir, state_dir, log and passwd-file; nothing under /etc/dovecot is read), on a
free 127.0.0.1 port, as root (``nobody`` owns the mail, as ``/work/shared/TESTING-NOTES.md``
§4 proved) or as the current user. ``Relay`` records every message the gateway sends.
"""

from __future__ import annotations

import contextlib
import email
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import aioimaplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dovecot:
    """A running dovecot with one mailbox user."""

    root: Path
    port: int
    user: str
    password: str
    process: subprocess.Popen[bytes]
    tls_port: int | None = None

    def add_user(self, user: str, password: str) -> Dovecot:
        """A further mailbox (dovecot reads the passwd-file at each login); its handle."""
        with (self.root / "users").open("a") as users:
            users.write(f"{user}:{{PLAIN}}{password}::::::\n")
        return Dovecot(self.root, self.port, user, password, self.process, self.tls_port)

    async def client(self) -> aioimaplib.IMAP4:
        """A logged-in IMAP client with INBOX selected."""
        imap = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=10)
        await imap.wait_hello_from_server()
        answer = await imap.login(self.user, self.password)
        assert answer.result == "OK", answer
        await imap.select("INBOX")
        return imap

    async def deliver(self, raw: bytes) -> None:
        """Put a message into INBOX (IMAP APPEND), as the receiving server would."""
        imap = await self.client()
        try:
            response = await imap.append(raw, mailbox="INBOX")
            assert response.result == "OK", response
        finally:
            await imap.logout()

    async def flags(self) -> list[str]:
        """The flags of every message in INBOX, in order."""
        imap = await self.client()
        try:
            response = await imap.fetch("1:*", "(FLAGS)")
        finally:
            await imap.logout()
        return [
            line.decode() for line in response.lines if isinstance(line, bytes) and b"FETCH" in line
        ]

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text() if path.exists() else ""


def _config(root: Path, port: int, tls: tuple[Path, Path, int] | None) -> str:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        nobody = pwd.getpwnam("nobody")
        mail_uid, mail_gid = nobody.pw_uid, nobody.pw_gid
        internal, login, chroot = "dovecot", "dovenull", "login"
    else:
        mail_uid, mail_gid = uid, gid
        me = pwd.getpwuid(uid).pw_name
        internal, login, chroot = me, me, ""
    ssl_lines = "ssl = no\n"
    imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
    if tls is not None:
        cert, key, tls_port = tls
        ssl_lines = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        imaps = (
            f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tls_port}\n"
            "    ssl = yes\n  }\n"
        )
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = goodbot-test-{port}
listen = 127.0.0.1
protocols = imap
{ssl_lines}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
mail_uid = {mail_uid}
mail_gid = {mail_gid}
first_valid_uid = {mail_uid}
last_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
last_valid_gid = {mail_gid}
default_internal_user = {internal}
default_internal_group = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root}/home/%u
}}
service imap-login {{
  chroot = {chroot}
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
{imaps}}}
service anvil {{
  chroot =
}}
"""


@contextlib.contextmanager
def dovecot(
    user: str = "goodbot", password: str = "imap-pw", tls: tuple[Path, Path] | None = None
) -> Iterator[Dovecot]:
    """Start dovecot on loopback with one user; stop it (SIGTERM to our own PID) after."""
    if not Path(DOVECOT).exists():
        raise RuntimeError("dovecot is not installed: run deploy/system-deps.sh")
    # Not pytest's tmp_path: it sits under a 0700 directory the dovecot users cannot enter.
    root = Path(tempfile.mkdtemp(prefix="goodbot-dovecot-"))
    root.chmod(0o755)
    port = free_port()
    tls_port = free_port() if tls is not None else None
    try:
        (root / "users").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        (root / "users").chmod(0o644)
        for sub in ("mail", "home"):
            (root / sub).mkdir()
            if os.getuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.chown(root / sub, nobody.pw_uid, nobody.pw_gid)
        config = root / "dovecot.conf"
        tls_conf = None if tls is None or tls_port is None else (*tls, tls_port)
        config.write_text(_config(root, port, tls_conf))
        process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = Dovecot(root, port, user, password, process, tls_port)
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}{server.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not listen: {server.log()}")
            time.sleep(0.02)
        try:
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stderr is not None:
                process.stderr.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Relay:
    """An SMTP relay on loopback (aiosmtpd) that keeps what it is given."""

    port: int
    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    fail_next: int = 0
    """Answer the next so many DATA commands with a temporary failure."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            return "451 4.3.0 try again later"
        raw = cast(bytes, envelope.original_content or envelope.content)
        message: EmailMessage = email.message_from_bytes(raw, policy=policy.default)
        self.received.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        """The messages sent to ``address``."""
        return [m for m in self.received if address in str(m.get("To", ""))]


class _Auth:
    def __init__(self, relay: Relay, user: str, password: str) -> None:
        self.relay, self.user, self.password = relay, user, password

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        if ok:
            self.relay.logins.append(self.user)
        return AuthResult(success=ok)


@contextlib.contextmanager
def relay(
    *, tls: ssl.SSLContext | None = None, user: str | None = None, password: str | None = None
) -> Iterator[Relay]:
    """An aiosmtpd relay on a free loopback port (``port=0`` fails: its readiness check
    connects to the configured port); with ``tls``, STARTTLS is offered and required."""
    port = free_port()
    keeper = Relay(port)
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs |= {"tls_context": tls, "require_starttls": True}
    if user is not None and password is not None:
        kwargs |= {
            "authenticator": _Auth(keeper, user, password),
            "auth_require_tls": tls is not None,
        }
    controller = Controller(keeper, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield keeper
    finally:
        controller.stop()
