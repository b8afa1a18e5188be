"""The Dockerfile and the compose file say what the README promises (no engine needed).

No Docker engine runs on the development and CI machines, so the image is not built here;
``docker-compose config`` was run by hand (docs/operations.md). These checks keep the files'
promises: multi-stage, non-root, a health check, no build tools in the final image; two
gateways on one database that never migrate on start, behind the balancer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def stages() -> list[list[str]]:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    found: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found


def test_the_image_is_multi_stage_slim_non_root_and_health_checked() -> None:
    build, final = stages()
    assert build[0].startswith("FROM python:3.12-slim") and build[0].endswith(" AS build")
    assert final[0].startswith("FROM python:3.12-slim")
    text = "\n".join(final)
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "COPY --from=build /opt/goodbot /opt/goodbot" in text
    assert not re.search(r"apt-get|gcc|build-essential|pip install", text)


def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def test_compose_runs_two_gateways_on_one_database_behind_a_balancer() -> None:
    services = compose()["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 2
    for service in gateways.values():
        env = service["environment"]
        assert env["GOODBOT_DATABASE__MIGRATE_ON_START"] == "false"
        assert env["GOODBOT_DATABASE__URL"].startswith("postgresql+asyncpg://goodbot@postgres:")
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["command"][0] == "serve"
    assert services["controlplane"]["environment"]["GOODBOT_CP_MIGRATE_ON_START"] == "false"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["controlplane-migrate"]["command"] == ["controlplane", "migrate"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert all(f"server {name}:8080" in nginx for name in gateways)
    assert services["balancer"]["ports"] == ["127.0.0.1:8080:8080"]
    # Only the balancer's X-Forwarded-For is believed, and the balancer sends it.
    balancer_ip = services["balancer"]["networks"]["default"]["ipv4_address"]
    for service in gateways.values():
        trusted = json.loads(service["environment"]["GOODBOT_SERVER__TRUSTED_PROXIES"])
        assert trusted == [f"{balancer_ip}/32"]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in nginx


def test_compose_takes_secrets_from_uncommitted_files_only() -> None:
    document = compose()
    text = (DEPLOY / "compose.yaml").read_text()
    assert "PASSWORD:" not in text.replace("POSTGRES_PASSWORD_FILE:", "")
    assert {s["file"] for s in document["secrets"].values()} == {
        "./secrets/pg_password",
        "./secrets/pgpass",
    }
    ignored = (DEPLOY.parent / ".gitignore").read_text().split()
    assert "deploy/secrets/" in ignored
