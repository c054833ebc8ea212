"""`gateway request …`: the access workflow from a terminal, through the console's API.

    gateway request create --org acme --member bob --duration 3600 --scope read \
        --justification "SUP-12: invoices do not render"
    gateway request list [--state pending] [--org acme]
    gateway request show ID
    gateway request approve ID [--duration 1800] [--scope read] [--comment …]
    gateway request deny ID --comment "no ticket"
    gateway request cancel ID          gateway request revoke ID [--comment …]

Needs `gateway login` first. Exit codes: 0 done, 1 refused (the API's error is printed),
2 not logged in or unreachable. `--json` prints the API's answer as it came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from gateway.cli.console_session import ConsoleSession, NotLoggedIn


def register(commands: argparse._SubParsersAction[Any]) -> None:
    request = commands.add_parser("request", help="access requests (after `gateway login`)")
    request.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = request.add_subparsers(dest="request_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", help="ask for access to act as a member of an org")
    create.add_argument("--org", required=True)
    create.add_argument("--member", required=True)
    create.add_argument("--justification", required=True)
    create.add_argument("--duration", type=int, required=True, help="seconds")
    create.add_argument("--scope", choices=("read", "write"), default="read")
    create.set_defaults(handler=_create)

    listing = sub.add_parser("list", help="requests you may see")
    listing.add_argument("--state")
    listing.add_argument("--org")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="one request with its history")
    show.add_argument("id")
    show.set_defaults(handler=_show)

    approve = sub.add_parser("approve", help="approve (optionally shorter or narrower)")
    approve.add_argument("id")
    approve.add_argument("--duration", type=int, help="seconds (may only shorten)")
    approve.add_argument("--scope", choices=("read", "write"), help="may only narrow")
    approve.add_argument("--comment")
    approve.set_defaults(handler=_approve)

    for name, helptext in (
        ("deny", "deny a pending request"),
        ("cancel", "withdraw your pending request"),
        ("revoke", "end a live grant now"),
    ):
        action = sub.add_parser(name, help=helptext)
        action.add_argument("id")
        action.add_argument("--comment", required=name == "deny")
        action.set_defaults(handler=_simple, action=name)


def _run(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None) -> int:
    try:
        session = ConsoleSession.load()
        status, answer, _ = asyncio.run(session.call(method, path, body))
    except NotLoggedIn as exc:
        print(f"gateway request: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        print(f"gateway request: cannot reach the console: {exc}", file=sys.stderr)
        return 2
    if status >= 400:
        print(f"{answer.get('error')}: {answer.get('reason')} (HTTP {status})", file=sys.stderr)
        return 2 if status == 401 else 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif "requests" in answer:
        for item in answer["requests"]:
            print(_line(item))
    else:
        print(_line(answer))
        for entry in answer.get("history", []):
            comment = f"  {entry['comment']}" if entry.get("comment") else ""
            print(f"  {_when(entry.get('at'))}  {entry['action']:<9} {entry['actor']}{comment}")
    return 0


def _when(at: object) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(item: dict[str, Any]) -> str:
    requester = item.get("requester", {}).get("id", "?")
    until = f" until {_when(item.get('expires_at'))}" if item.get("expires_at") else ""
    return (
        f"{item.get('id')}  {item.get('state'):<9} {requester} -> "
        f"{item.get('org')}/{item.get('member')}  {item.get('scope')} "
        f"{item.get('duration_s')}s{until}"
    )


def _rid(value: str) -> str:
    return quote(value, safe="")


def _create(args: argparse.Namespace) -> int:
    body = {
        "org": args.org,
        "member": args.member,
        "justification": args.justification,
        "duration_s": args.duration,
        "scope": args.scope,
    }
    return _run(args, "POST", "/requests", body)


def _list(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("state", args.state), ("org", args.org)) if v}
    return _run(args, "GET", "/requests" + (f"?{urlencode(query)}" if query else ""), None)


def _show(args: argparse.Namespace) -> int:
    return _run(args, "GET", f"/requests/{_rid(args.id)}", None)


def _approve(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.duration is not None:
        body["duration_s"] = args.duration
    if args.scope is not None:
        body["scope"] = args.scope
    if args.comment is not None:
        body["comment"] = args.comment
    return _run(args, "POST", f"/requests/{_rid(args.id)}/approve", body)


def _simple(args: argparse.Namespace) -> int:
    body = {"comment": args.comment} if args.comment is not None else {}
    return _run(args, "POST", f"/requests/{_rid(args.id)}/{args.action}", body)
