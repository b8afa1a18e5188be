"""goodbot command line: the console script every subcommand starts from."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The ``goodbot`` argument parser with every subcommand."""
    from controlplane import cli as controlplane_cli

    parser = argparse.ArgumentParser(prog="goodbot", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    controlplane_cli.add_arguments(
        sub.add_parser("controlplane", help="the reference endpoint-management control plane")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``goodbot``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.command == "controlplane":
        from controlplane import cli as controlplane_cli

        return controlplane_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
