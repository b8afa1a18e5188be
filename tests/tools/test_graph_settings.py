"""The ``graph`` settings section and the gateway wiring of the calendar tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import build_gateway, close_gateway
from gateway.settings import ConfigError, GraphSettings, describe, load
from tests.e2e.harness import prepare, settings_for
from tests.tools.graph_support import CLIENT_ID, SECRET, TENANT, fake_graph

CALENDAR_TOOLS = {"book_meeting", "find_availability", "list_cab_meetings", "propose_slots"}


def test_graph_is_enabled_by_tenant_and_client_and_its_secret_comes_from_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not GraphSettings().enabled
    config = tmp_path / "goodbot.yaml"
    config.write_text(
        "graph: {tenant_id: contoso, client_id: app-1, allowed_domains: [contoso.com]}\n"
    )
    with pytest.raises(ConfigError, match="GOODBOT_GRAPH__CLIENT_SECRET") as caught:
        load(config)
    assert caught.value.key == "graph.client_secret"
    monkeypatch.setenv("GOODBOT_GRAPH__CLIENT_SECRET", "from-env")
    settings = load(config)
    assert settings.graph.enabled and settings.graph.secret() == "from-env"
    assert settings.graph.allowed_domains == ["contoso.com"]
    assert "graph: contoso (https://graph.microsoft.com/v1.0)" in describe(settings)
    assert "from-env" not in repr(settings)

    config.write_text("graph: {tenant_id: contoso, client_id: app-1, client_secret: x}\n")
    with pytest.raises(ConfigError, match="secrets are not read from the config file"):
        load(config)


async def test_the_gateway_offers_calendar_tools_only_with_graph(tmp_path: Path) -> None:
    policy = prepare(tmp_path / "data")
    plain = await build_gateway(
        settings_for(tmp_path / "data"),
        cp_url="http://127.0.0.1:9",
        cp_token="t",
        policy_path=policy,
    )
    try:
        names = {spec.name for spec in plain.executor.registry.all()}
        assert not names & CALENDAR_TOOLS and plain.turns.graph is None
    finally:
        await close_gateway(plain)

    async with fake_graph(tmp_path) as fake:
        secret = tmp_path / "graph-secret"
        secret.write_text(SECRET + "\n")
        graph = GraphSettings(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret_file=secret,
            authority_host=fake.base,
            base_url=f"{fake.base}/v1.0",
            ca_file=Path(fake.ca_file),
            domain="contoso.com",
        )
        wired = await build_gateway(
            settings_for(tmp_path / "data", graph=graph),
            cp_url="http://127.0.0.1:9",
            cp_token="t",
            policy_path=policy,
        )
        try:
            names = {spec.name for spec in wired.executor.registry.all()}
            assert names >= CALENDAR_TOOLS
            client = wired.turns.graph
            assert client is not None
            settings = await client.mailbox_settings("ana@contoso.com")
            assert settings["timeZone"] == "UTC" and fake.token_requests == 1
        finally:
            await close_gateway(wired)


async def test_the_gateway_authenticates_with_a_certificate_file(tmp_path: Path) -> None:
    policy = prepare(tmp_path / "data")
    async with fake_graph(tmp_path / "fake") as fake:
        config = tmp_path / "goodbot.yaml"
        config.write_text(
            f"graph: {{tenant_id: {TENANT}, client_id: {CLIENT_ID}, "
            f"client_certificate_file: {tmp_path / 'fake' / 'app-credential.pem'}, "
            f"authority_host: '{fake.base}', base_url: '{fake.base}/v1.0', "
            f"ca_file: {fake.ca_file}}}\n"
        )
        settings = load(config)  # no secret needed with a certificate
        assert settings.graph.enabled and settings.graph.secret() is None
        wired = await build_gateway(
            settings.model_copy(update={"data_dir": tmp_path / "data"}),
            cp_url="http://127.0.0.1:9",
            cp_token="t",
            policy_path=policy,
        )
        try:
            client = wired.turns.graph
            assert client is not None
            await client.mailbox_settings("ana@contoso.com")
            assert fake.entra.client_auth == {"certificate": 1}
        finally:
            await close_gateway(wired)

    config.write_text(
        "graph: {tenant_id: t, client_id: c, client_certificate_file: /nonexistent.pem}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert caught.value.key == "graph.client_certificate_file"
