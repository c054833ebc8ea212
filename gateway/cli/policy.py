"""`gateway policy check|explain`: validate policy files; show how one request is judged.

    gateway policy check config/policies/*.yaml
    gateway policy explain --host acme.localhost --scope read GET /api/contacts

`check` exits 0 when every file is valid, 1 with every problem on stderr as
`file:line: key: expected (got value)`. `explain` exits 0 when the request would be
allowed, 3 when denied or its path refused, 1 when the policy or config cannot be loaded
or no route serves the host.

`explain` judges the policy files as `gateway run` loads them: a route naming the console
host is refused (exit 1, the problem on stderr), and so is a `--host` that is the console
origin. The console host comes from `--config`, or from config/gateway.yaml when it exists;
with `--policy` and neither, only the policy language's own checks apply (said on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.configfile import load_config_or_report
from gateway.config import GatewayConfig
from gateway.policy_store import load_gateway_policies
from gateway.stages.route import split_host
from policies.decide import decide
from policies.errors import PathRejected, PolicyError
from policies.model import PolicySet, Scope

EXIT_DENIED = 3
DEFAULT_CONFIG = Path("config/gateway.yaml")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    policy = commands.add_parser("policy", help="routing-policy files")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate policy files; exit 0 valid, 1 invalid")
    check.add_argument("files", type=Path, nargs="+", metavar="FILE")
    check.set_defaults(handler=_check)
    explain = sub.add_parser(
        "explain", help="show the route, normalised path, matching rule and decision"
    )
    explain.add_argument("--host", required=True, help="the Host the request is sent to")
    explain.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.WRITE.value)
    explain.add_argument(
        "--policy",
        type=Path,
        action="append",
        metavar="FILE",
        help="policy file (repeat for several); default: policy_files of --config",
    )
    explain.add_argument(
        "--config",
        type=Path,
        help=f"gateway config naming the policy files and the console host (default: "
        f"{DEFAULT_CONFIG}; with --policy, used when it exists)",
    )
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("path", metavar="PATH", help="the raw request path, without query")
    explain.set_defaults(handler=_explain)


def _load(files: list[Path], console_host: str | None = None) -> PolicySet | None:
    try:
        return load_gateway_policies(files, console_host)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} error(s)", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    policy_set = _load(args.files)
    if policy_set is None:
        return 1
    rules = sum(len(r.rules) for r in policy_set.routes)
    print(
        f"ok: {len(policy_set.files)} file(s), {len(policy_set.routes)} route(s), "
        f"{len(policy_set.by_host)} host(s), {rules} rule(s)"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    files: list[Path] | None = args.policy
    config_path: Path = args.config or DEFAULT_CONFIG
    config: GatewayConfig | None = None
    if not files or args.config is not None or config_path.exists():
        config = load_config_or_report(config_path)
        if config is None:
            return 1
        if not files:
            files = list(config.policy_files)
            if not files:
                print(f"{config_path}: names no policy_files; pass --policy FILE", file=sys.stderr)
                return 1
    else:
        print(
            f"note: no {config_path} (console host unknown): a route naming the console "
            "host is not refused here; pass --config",
            file=sys.stderr,
        )
    console_host = config.console_host if config is not None else None
    # SECURITY: the same refusal `gateway run` applies to a route naming the console host.
    policy_set = _load(files, console_host)
    if policy_set is None:
        return 1
    named = split_host(args.host)
    if console_host is not None and named is not None and named[0] == console_host:
        print(
            f"host {args.host!r} is the console origin ({console_host}): the gateway serves "
            "its console there, never a route",
            file=sys.stderr,
        )
        return 1
    route = policy_set.route_for(args.host)
    if route is None:
        print(f"no route serves host {args.host!r} (the gateway answers 404)", file=sys.stderr)
        return 1
    print(f"route:    {route.name} ({route.source}) -> {route.upstream.url}, org {route.org}")
    try:
        path = route.normalise(args.path)
    except PathRejected as exc:
        print(f"path:     refused: {exc.reason} (the gateway answers 400)")
        print("decision: deny")
        return EXIT_DENIED
    print(f"path:     {path.forwarded} (forwarded and judged)")
    if len(path.match_keys) > 1 or path.match_key != path.forwarded:
        print(f"readings: {', '.join(path.match_keys)}")
    decision = decide(route, args.method, path, Scope(args.scope))
    if decision.rule is not None:
        print(f"rule:     {decision.rule.describe()} at {decision.rule.source}")
    else:
        print("rule:     none")
    verdict = "allow" if decision.allowed else "deny"
    print(f"decision: {verdict} ({args.method} with a {args.scope} grant): {decision.reason}")
    return 0 if decision.allowed else EXIT_DENIED
