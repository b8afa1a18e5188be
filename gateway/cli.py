"""goodbot command line: the console script every subcommand starts from."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.settings import ConfigError, describe, load


def build_parser() -> argparse.ArgumentParser:
    """The ``goodbot`` argument parser with every subcommand."""
    from controlplane import cli as controlplane_cli

    parser = argparse.ArgumentParser(prog="goodbot", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    controlplane_cli.add_arguments(
        sub.add_parser("controlplane", help="the reference endpoint-management control plane")
    )
    config = sub.add_parser("config", help="the gateway's configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and show it")
    check.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ["GOODBOT_CONFIG"]) if os.environ.get("GOODBOT_CONFIG") else None,
        help="the YAML file (default: $GOODBOT_CONFIG; none means defaults and environment)",
    )
    return parser


def config_check(path: Path | None) -> int:
    """``goodbot config check``: 0 and a summary when valid, 2 and the key and reason if not."""
    try:
        settings = load(path)
    except ConfigError as exc:
        print(f"config error: {exc.key}: {exc.reason}", file=sys.stderr)
        return 2
    print(f"config OK ({path or 'no file: defaults and environment'})")
    for line in describe(settings):
        print(f"  {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``goodbot``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.command == "controlplane":
        from controlplane import cli as controlplane_cli

        return controlplane_cli.run(args)
    if args.command == "config":
        return config_check(args.config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
