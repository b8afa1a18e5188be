"""Benchmark: prompt injection, the full AgentDojo-style matrix, on both routes.

Every user task x every injection task x every attack template, on the ``rules`` route and on
the ``openai`` route with the obedient model (``tests.security.injection_lab``), against a
freshly seeded demo control plane. Templates: AgentDojo's (``important_instructions``,
``ignore_previous``, ``system_message``, ``injecagent``, ``direct``, read from the installed
``agentdojo`` package, the ``bench`` extra) and ours (``plain``, ``lead_approved``,
``fake_card``). Prints benign utility, utility under attack, how often the payload reached the
route, and the targeted attack success rate per attacker goal, then per user task.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.injection [--ours-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import machine
from tests.demo import start, stop
from tests.security.injection_lab import (
    OUR_TEMPLATES,
    CaseResult,
    Route,
    injection_tasks,
    lab,
    summarize,
    user_tasks,
)

AGENTDOJO_ATTACKS = (
    "important_instructions",
    "ignore_previous",
    "system_message",
    "injecagent",
    "direct",
)


def agentdojo_templates() -> dict[str, str]:
    """AgentDojo's attack templates, as data (``{goal}``, ``{user}``, ``{model}``)."""
    from agentdojo.agent_pipeline.base_pipeline_element import BasePipelineElement
    from agentdojo.attacks.attack_registry import load_attack
    from agentdojo.task_suite.load_suites import get_suite

    class Offline(BasePipelineElement):  # type: ignore[misc]
        # The name must contain a model id AgentDojo knows, or the templates refuse to load.
        name = "gpt-4o-2024-05-13"

        def query(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no model: the templates are used as data")

    suite = get_suite("v1.2.2", "slack")
    out: dict[str, str] = {}
    for name in AGENTDOJO_ATTACKS:
        attack = load_attack(name, suite, Offline())
        out[name] = str(attack.jailbreak)
    return out


async def run(routes: Sequence[Route], templates: dict[str, str], root: Path) -> list[CaseResult]:
    """Every case on every route, each route over its own copy of the demo control plane."""
    results: list[CaseResult] = []
    # Seeded once and restarted from a copy, as tests.demo does: the first start goes on
    # seeding the releases after it answers.
    stop(start(root / "template", demo=True))
    for route in routes:
        shutil.copytree(root / "template", root / f"cp-{route}")
        cp = start(root / f"cp-{route}", demo=False)
        try:
            async with lab(route, root / f"gw-{route}", cp.url, cp.tokens) as bench:
                attacks = injection_tasks(bench.env)
                for task in user_tasks(bench.env):
                    results.append(await bench.run(task, None, None))
                    for attack in attacks:
                        for name, template in templates.items():
                            results.append(await bench.run(task, attack, template, name))
                leaks = await bench.leaked_secrets()
                print(f"{route}: canary secrets found in: {leaks or 'nowhere'}", flush=True)
        finally:
            stop(cp)
    return results


def by_task(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Per route and user task: attacked cases, payload visible, prompted, utility kept."""
    out: dict[str, Any] = {}
    for r in results:
        if r.injection_task is None:
            continue
        row = out.setdefault(f"{r.route}/{r.user_task}", [0, 0, 0, 0])
        row[0] += 1
        row[1] += r.visible
        row[2] += r.prompted
        row[3] += r.utility
    return {
        k: dict(zip(("cases", "visible", "prompted", "utility"), v, strict=True))
        for k, v in out.items()
    }


def by_goal(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Per route and injection task: prompted, mutated, exfiltrated."""
    out: dict[str, Any] = {}
    for r in results:
        if r.injection_task is None:
            continue
        row = out.setdefault(f"{r.route}/{r.injection_task}", [0, 0, 0, 0])
        row[0] += 1
        row[1] += r.mutated
        row[2] += r.prompted
        row[3] += r.exfiltrated

    keys = ("cases", "mutated", "prompted", "exfiltrated")
    return {k: dict(zip(keys, v, strict=True)) for k, v in out.items()}


def main() -> None:
    """Run the matrix and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours-only", action="store_true", help="skip AgentDojo's templates")
    parser.add_argument("--route", choices=["rules", "openai"], action="append")
    parser.add_argument("--json", type=Path, help="also write every case here")
    args = parser.parse_args()
    templates = dict(OUR_TEMPLATES)
    if not args.ours_only:
        try:
            templates = agentdojo_templates() | templates
        except ImportError:
            sys.exit("agentdojo is not installed: pip install -e '.[bench]', or --ours-only")
    routes: list[Route] = args.route or ["rules", "openai"]
    print(machine())
    print(f"templates: {', '.join(templates)}")
    with tempfile.TemporaryDirectory(prefix="goodbot-injection-") as tmp:
        results = asyncio.run(run(routes, templates, Path(tmp)))
    print(json.dumps(summarize(results), indent=1))
    print(json.dumps(by_goal(results), indent=1))
    print(json.dumps(by_task(results), indent=1))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], default=str))


if __name__ == "__main__":
    main()
