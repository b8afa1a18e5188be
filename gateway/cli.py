"""goodbot command line: the console script every subcommand starts from (gateway).

``serve`` runs the gateway (and, without configuration, the embedded demo control plane);
``migrate`` applies the gateway's database migrations (a step of its own for replicas);
``mcp`` serves its tools to MCP clients over stdio or streamable HTTP;
``ask``, ``chat``, ``confirm``, ``deny`` and ``notifications`` talk to a running gateway over
HTTP; ``policy explain``, ``audit verify|export`` and ``sessions purge`` work on the local
configuration and store; ``config check`` validates the configuration; ``teams manifest`` writes
the Teams app package; ``controlplane`` runs the reference control plane on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from gateway.observability import configure_logging
from gateway.settings import ConfigError, GatewaySettings, describe, load


def _default_config() -> Path | None:
    return Path(os.environ["GOODBOT_CONFIG"]) if os.environ.get("GOODBOT_CONFIG") else None


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where `goodbot serve` keeps its data")
    parser.add_argument("--gateway", help="the gateway's URL (with --token)")
    parser.add_argument("--token", help="a CLI token (default: the local user's)")
    parser.add_argument("--as", dest="as_principal", help="use the demo token of this principal")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _local_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=_default_config(), help="the YAML file")
    parser.add_argument("--data-dir", type=Path, help="the data directory")


def build_parser() -> argparse.ArgumentParser:
    """The ``goodbot`` argument parser with every subcommand."""
    from controlplane import cli as controlplane_cli

    parser = argparse.ArgumentParser(prog="goodbot", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("GOODBOT_LOG_FORMAT", "text"),
        help="text, or one JSON object per line with the correlation id ($GOODBOT_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (and the demo control plane)")
    _local_args(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 = any)")
    serve.add_argument(
        "--demo-graph",
        action="store_true",
        help="also run a demo Microsoft Graph (calendars of the demo people) and use it",
    )
    serve.add_argument(
        "--teams-development",
        action="store_true",
        help="serve Teams without a client secret (loopback only; tokens still verified)",
    )

    migrate = sub.add_parser("migrate", help="apply the gateway's database migrations and exit")
    _local_args(migrate)

    ask = sub.add_parser("ask", help="one turn: ask and print the answer")
    ask.add_argument("text", help="what to ask")
    ask.add_argument("--conversation", default="default", help="conversation name")
    _client_args(ask)
    chat = sub.add_parser("chat", help="an interactive chat")
    chat.add_argument("--conversation", default="default", help="conversation name")
    _client_args(chat)
    for verb in ("confirm", "deny"):
        decide = sub.add_parser(verb, help=f"{verb} a pending change by its id")
        decide.add_argument("id", help="the confirmation id (cf_…)")
        _client_args(decide)
    notes = sub.add_parser("notifications", help="show notifications waiting for you")
    _client_args(notes)

    mcp = sub.add_parser("mcp", help="serve the tools to MCP clients (stdio or HTTP)")
    _local_args(mcp)
    transport = mcp.add_mutually_exclusive_group(required=True)
    transport.add_argument("--stdio", action="store_true", help="serve the local user on stdio")
    transport.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp")
    mcp.add_argument("--as", dest="as_principal", help="stdio: use this demo person's MCP token")
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP: address (default 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8090, help="HTTP: port (default 8090; 0 = any)")

    policy = sub.add_parser("policy", help="the policy file")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    demo = policy_sub.add_parser("demo", help="write the demo policy and tokens (for replicas)")
    _local_args(demo)
    demo.add_argument(
        "--controlplane-tokens", type=Path, help="the demo control plane's demo-tokens.json"
    )
    explain = policy_sub.add_parser("explain", help="which rule decides a tool for a principal")
    _local_args(explain)
    explain.add_argument("--principal", required=True)
    explain.add_argument("--tool", required=True, help="a tool name or a policy action")
    explain.add_argument("--channel", default="cli")
    explain.add_argument("--scope", action="append", default=[], help="scope ids, root first")

    audit = sub.add_parser("audit", help="the gateway's audit chain")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    _local_args(audit_sub.add_parser("verify", help="walk the chain and report tampering"))
    export = audit_sub.add_parser("export", help="print the chain as JSON lines")
    _local_args(export)
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--after", type=int, help="only records after this seq")

    sessions = sub.add_parser("sessions", help="the gateway's stored conversations")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    purge = sessions_sub.add_parser("purge", help="apply retention")
    _local_args(purge)
    purge.add_argument("--older-than", required=True, help="such as 30d, 12h or 90m")

    teams = sub.add_parser("teams", help="the Microsoft Teams app")
    teams_sub = teams.add_subparsers(dest="teams_command", required=True)
    package = teams_sub.add_parser("manifest", help="write the Teams app package (zip) to upload")
    _local_args(package)
    package.add_argument(
        "--endpoint",
        required=True,
        help="the bot's messaging endpoint, such as https://bot.example.com/api/messages",
    )
    package.add_argument("--out", type=Path, default=Path("goodbot-teams.zip"), help="zip path")
    package.add_argument("--app-version", default="1.0.0", help="package version (semver)")
    package.add_argument("--teams-app-id", help="the Teams app's id (GUID; the bot id if unset)")
    package.add_argument("--developer", default="goodbot", help="publisher name (≤ 32)")
    package.add_argument("--website-url", help="publisher page (https)")
    package.add_argument("--privacy-url", help="privacy statement (https)")
    package.add_argument("--terms-url", help="terms of use (https)")

    controlplane_cli.add_arguments(
        sub.add_parser("controlplane", help="the reference endpoint-management control plane")
    )
    config = sub.add_parser("config", help="the gateway's configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and show it")
    check.add_argument(
        "--config",
        type=Path,
        default=_default_config(),
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


def _settings(args: argparse.Namespace) -> GatewaySettings:
    settings = load(getattr(args, "config", None))
    updates: dict[str, object] = {}
    if getattr(args, "data_dir", None) is not None:
        updates["data_dir"] = args.data_dir
    server = {}
    if getattr(args, "host", None) is not None:
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if server:
        updates["server"] = settings.server.model_copy(update=server)
    return settings.model_copy(update=updates) if updates else settings


def teams_manifest(settings: GatewaySettings, args: argparse.Namespace) -> int:
    """``goodbot teams manifest``: write the app package for the configured bot."""
    from gateway.teams_manifest import AppInfo, ManifestError, host_of, write_package

    if not settings.teams.app_id:
        print("config error: teams.app_id: the bot's Microsoft App ID is required", file=sys.stderr)
        return 2
    info = AppInfo(
        bot_id=settings.teams.app_id,
        domain=host_of(args.endpoint),
        app_id=args.teams_app_id,
        version=args.app_version,
        developer=args.developer,
        website_url=args.website_url,
        privacy_url=args.privacy_url,
        terms_url=args.terms_url,
        sso=settings.teams.sso_connection is not None,
    )
    try:
        path = write_package(args.out, info)
    except ManifestError as exc:
        print(f"goodbot: the manifest would be invalid: {exc.where}: {exc.reason}", file=sys.stderr)
        return 2
    print(f"wrote {path} (manifest {info.version} for bot {info.bot_id}); upload it in Teams")
    return 0


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``45s`` as a duration."""
    match = re.fullmatch(r"(\d+)([dhms])", text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def _client(args: argparse.Namespace) -> int:
    from channels import terminal

    try:
        target = terminal.locate(args.data_dir, args.gateway, args.token, args.as_principal)
    except terminal.TerminalError as exc:
        print(f"goodbot: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if args.command == "ask":
        return asyncio.run(
            terminal.ask(target, args.text, json_output=args.json, conversation=args.conversation)
        )
    if args.command == "chat":
        return asyncio.run(terminal.chat(target, conversation=args.conversation))
    if args.command in ("confirm", "deny"):
        return asyncio.run(terminal.decide(target, args.id, args.command, json_output=args.json))
    return asyncio.run(terminal.notifications(target, json_output=args.json))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``goodbot``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command == "controlplane":
        from controlplane import cli as controlplane_cli

        return controlplane_cli.run(args)
    if args.command == "config":
        return config_check(args.config)
    if args.command in ("ask", "chat", "confirm", "deny", "notifications"):
        return _client(args)
    try:
        settings = _settings(args)
        if args.command == "serve":
            from gateway.serve import serve

            return asyncio.run(
                serve(
                    settings,
                    with_demo_graph=args.demo_graph,
                    teams_development=args.teams_development,
                )
            )
        if args.command == "mcp":
            from gateway import mcp_serve

            if args.stdio:
                return asyncio.run(mcp_serve.serve_stdio(settings, args.as_principal))
            return asyncio.run(mcp_serve.serve_http(settings, args.host, args.port))
        if args.command == "teams":
            return teams_manifest(settings, args)
        from gateway import admin

        if args.command == "migrate":
            return asyncio.run(admin.migrate(settings))
        if args.command == "policy" and args.policy_command == "demo":
            return admin.demo_init(settings, args.controlplane_tokens)
        if args.command == "policy":
            return admin.explain(settings, args.principal, args.tool, args.channel, args.scope)
        if args.command == "audit" and args.audit_command == "verify":
            return asyncio.run(admin.verify(settings))
        if args.command == "audit":
            return asyncio.run(admin.export(settings, args.after))
        if args.command == "sessions":
            return asyncio.run(admin.purge(settings, parse_age(args.older_than)))
    except ConfigError as exc:
        print(f"config error: {exc.key}: {exc.reason}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"goodbot: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
