"""Benchmark support: ``bench.gateway_process`` with the Teams channel's keys on loopback.

The Agents SDK takes the Bot Framework's signing keys from a fixed URL and has no setting to
move it; the benchmark's gateway process points that one dictionary entry at the load
generator's JWKS (``BENCH_TEAMS_JWKS``), the same seam the tests use
(``tests.fakes.bot_connector.jwks_seam``). Validation itself runs unchanged.

    BENCH_CP_TOKEN=… BENCH_TEAMS_JWKS=http://127.0.0.1:P/keys GOODBOT_TEAMS__APP_ID=… \
        .venv/bin/python -m bench.teams_process --data-dir D --cp-url URL
"""

from __future__ import annotations

import os
from typing import Final

from microsoft_agents.hosting.core.authorization import _entra_issuers

from bench import gateway_process

JWKS_ENV: Final = "BENCH_TEAMS_JWKS"
BF_ISSUER: Final = "https://api.botframework.com"


def main() -> None:
    _entra_issuers.BOTFRAMEWORK_JWKS_URIS[BF_ISSUER] = os.environ[JWKS_ENV]
    gateway_process.main()


if __name__ == "__main__":
    main()
