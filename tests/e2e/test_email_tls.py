"""Email over TLS end to end: IMAP over implicit TLS (dovecot), SMTP with required STARTTLS and
a login (aiosmtpd), both verified against a private CA given as ``email.ca_file``."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo_tls import make_server_certificates
from tests.demo import DemoControlPlane
from tests.e2e.email_support import email_policy, email_settings, mail, until
from tests.e2e.harness import running_gateway
from tests.fakes.mailservers import Dovecot, dovecot, relay


@pytest.fixture(scope="module")
def certificates() -> Iterator[tuple[Path, Path, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="goodbot-mail-tls-"))
    directory.chmod(0o755)
    try:
        files = make_server_certificates(directory)
        yield files.ca, files.cert, files.key
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_imap(certificates: tuple[Path, Path, Path]) -> Iterator[Dovecot]:
    _, cert, key = certificates
    with dovecot(tls=(cert, key)) as server:
        yield server


async def test_a_request_is_answered_over_tls_both_ways(
    demo_cp: DemoControlPlane,
    tmp_path: Path,
    tls_imap: Dovecot,
    certificates: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = certificates
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    with relay(tls=server_side, user="goodbot", password="smtp-pw") as outbound:
        assert tls_imap.tls_port is not None
        data = tmp_path / "gw"
        email_policy(data)
        settings = email_settings(
            tls_imap,
            outbound,
            imap_tls="tls",
            imap_port=tls_imap.tls_port,
            smtp_tls="starttls",
            smtp_username="goodbot",
            smtp_password="smtp-pw",
            ca_file=ca,
        )
        async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings):
            raw, mid = mail("what is pending my approval?")
            await tls_imap.deliver(raw)
            (reply,) = await until(lambda: outbound.received, what="the reply over TLS")
            assert reply["In-Reply-To"] == mid
            assert outbound.logins == ["goodbot"]
            assert "TLS" in tls_imap.log() or "secured" in tls_imap.log()
