"""Run every benchmark in turn, each printing its figures beside a same-run baseline.

.venv/bin/python bench/run_all.py      (or: make bench)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = (
    ["bench.drift_recompute", "--devices", "50000", "--single", "200"],
    ["bench.enforcement"],
    ["bench.audit_append"],
    ["bench.http_reads"],
    ["bench.gates"],
    ["bench.release_reads"],
    ["bench.gateway_pipeline"],
    ["bench.gateway_model_load"],
    ["bench.slack_channel"],
    ["bench.teams_ingress"],
    ["bench.replicas"],
    ["bench.email_channel"],
)


def main() -> int:
    failed = 0
    for args in BENCHES:
        print(f"\n$ python -m {' '.join(args)}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", *args], cwd=ROOT)  # noqa: S603
    return failed


if __name__ == "__main__":
    sys.exit(main())
