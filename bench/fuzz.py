"""Long fuzzing: the CI fuzzers with many more examples, freshly drawn (not in CI).

Runs ``tests/security/test_fuzz_*.py`` with ``GOODBOT_FUZZ_EXAMPLES`` (default 3,000 per
property) and ``GOODBOT_FUZZ_RANDOM=1``, so each run explores new inputs; a failure prints the
falsifying example, which a test can then pin.

    .venv/bin/python -m bench.fuzz [--examples 3000] [pytest arguments…]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from bench.common import ROOT, machine


def main() -> None:
    """Run the fuzzers long; exit with pytest's status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    args, rest = parser.parse_known_args()
    print(machine(), flush=True)
    env = {
        **os.environ,
        "GOODBOT_FUZZ_EXAMPLES": str(args.examples),
        "GOODBOT_FUZZ_RANDOM": "1",
    }
    files = sorted(str(p) for p in (ROOT / "tests" / "security").glob("test_fuzz_*.py"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *rest]
    sys.exit(subprocess.call(command, env=env, cwd=ROOT))  # noqa: S603 - our own interpreter


if __name__ == "__main__":
    main()
