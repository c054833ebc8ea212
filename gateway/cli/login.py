"""`gateway login`: log in to the console's API (password + TOTP) and keep the session.

    gateway login --console https://gateway.localhost:8443 --email sam@vendor.example
    gateway login ... --ca-file var/tls/ca.crt --connect-to 127.0.0.1 --password-stdin

The password is read without echo (or from stdin with --password-stdin), the TOTP code is
asked for (or given with --totp). The session is saved 0600 in the user's config folder.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

import aiohttp

from gateway.cli.console_session import ConsoleSession


def register(commands: argparse._SubParsersAction[Any]) -> None:
    login = commands.add_parser("login", help="log in to the console API (password + TOTP)")
    login.add_argument("--console", required=True, help="the console URL, https://…")
    login.add_argument("--email", required=True)
    login.add_argument("--totp", help="the current TOTP code (asked for when missing)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--ca-file", help="trust this CA for the console (e.g. the demo CA)")
    login.add_argument("--connect-to", help="connect to this address whatever the URL's host")
    login.set_defaults(handler=_login)


def _login(args: argparse.Namespace) -> int:
    if not str(args.console).startswith("https://"):
        print("gateway login: --console must be an https:// URL", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
    totp = args.totp or input("TOTP code: ").strip()
    session = ConsoleSession(
        console_url=str(args.console).rstrip("/"), ca_file=args.ca_file, connect_to=args.connect_to
    )
    body = {"email": args.email, "password": password, "totp": totp}
    try:
        status, answer, cookies = asyncio.run(session.call("POST", "/login", body))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"gateway login: cannot reach {session.console_url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"gateway login: {answer.get('error')}: {answer.get('reason')}", file=sys.stderr)
        return 1
    session.cookies = cookies
    session.csrf_token = str(answer.get("csrf_token", ""))
    path = session.save()
    principal = answer.get("principal", {})
    print(f"logged in as {principal.get('key')} (session in {path})")
    return 0
