"""`gateway admin …`: orgs, staff, members, passwords, TOTP resets, disabling, import.

Secrets never come from the command line (it shows in `ps` and shell history): a
password is read from stdin with `--password-stdin`, else generated and printed once;
enrolment tokens are printed once.

    gateway admin import config/demo-directory.yaml
    gateway admin staff create sam --email sam@vendor.example --name Sam
    gateway admin member create acme bob --email bob@acme.example --role member
    gateway admin member create acme sam --email sam@acme.example --role admin --person sam
    echo "new password" | gateway admin password reset member:acme:bob --password-stdin
    gateway admin totp reset staff:sam
    gateway admin disable member:acme:bob
    gateway admin keys forget totp      # after changing the TOTP key on purpose
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from gateway.accounts import Account, AccountError, Accounts, DirectoryError, open_accounts
from gateway.accounts.directory import import_directory, parse_directory
from gateway.accounts.model import check_person
from gateway.cli.configfile import redis_url_settings
from gateway.clock import SystemClock
from gateway.config import load_config
from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import ConfigError, GatewayError
from gateway.key_agreement import BREAKS, KEY_NAMES, agree_on_keys, forget, keys_in
from gateway.redis_client import redis_client

_Action = Callable[[Accounts, argparse.Namespace], Awaitable[int]]

_PERSON_HELP = "person id shared by every account of one person (nobody decides their own request)"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    admin = commands.add_parser("admin", help="manage orgs, staff, members and their secrets")
    admin.add_argument("--config", type=Path, default=Path("config/gateway.yaml"))
    admin.add_argument(
        "--redis-url",
        help="use this Redis instead of the config's (no password: the config's login is used)",
    )
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    imp = sub.add_parser("import", help="load a directory YAML file (idempotent)")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_run(_import))

    org = sub.add_parser("org", help="orgs").add_subparsers(dest="what", required=True)
    create_org = org.add_parser("create", help="create or rename an org")
    create_org.add_argument("org")
    create_org.add_argument("--name", required=True)
    create_org.set_defaults(handler=_run(_org_create))

    staff = sub.add_parser("staff", help="vendor staff").add_subparsers(dest="what", required=True)
    create_staff = staff.add_parser("create", help="create a staff account")
    create_staff.add_argument("id")
    create_staff.add_argument("--email", required=True)
    create_staff.add_argument("--name", required=True)
    create_staff.add_argument("--password-stdin", action="store_true")
    create_staff.add_argument("--person", help=_PERSON_HELP)
    create_staff.set_defaults(handler=_run(_staff_create))

    member = sub.add_parser("member", help="org members").add_subparsers(dest="what", required=True)
    create_member = member.add_parser("create", help="create a member of an org")
    create_member.add_argument("org")
    create_member.add_argument("id")
    create_member.add_argument("--email", required=True)
    create_member.add_argument("--name")
    create_member.add_argument("--role", choices=("admin", "member"), default="member")
    create_member.add_argument("--not-impersonable", action="store_true")
    create_member.add_argument("--password-stdin", action="store_true")
    create_member.add_argument("--person", help=_PERSON_HELP)
    create_member.set_defaults(handler=_run(_member_create))

    password = sub.add_parser("password", help="passwords").add_subparsers(
        dest="what", required=True
    )
    reset = password.add_parser("reset", help="set a new password (stdin or generated)")
    reset.add_argument("principal", help="staff:ID or member:ORG:ID")
    reset.add_argument("--password-stdin", action="store_true")
    reset.set_defaults(handler=_run(_password_reset))

    totp = sub.add_parser("totp", help="TOTP secrets").add_subparsers(dest="what", required=True)
    totp_reset = totp.add_parser("reset", help="remove the secret and issue an enrolment token")
    totp_reset.add_argument("principal")
    totp_reset.set_defaults(handler=_run(_totp_reset))

    for verb, flag in (("disable", True), ("enable", False)):
        parser = sub.add_parser(
            verb, help=f"{verb} an account" + (" (ends its sessions)" if flag else "")
        )
        parser.add_argument("principal")
        parser.set_defaults(handler=_run(_disable if flag else _enable))

    listing = sub.add_parser("list", help="list orgs and accounts")
    listing.set_defaults(handler=_run(_list))

    shared = sub.add_parser("keys", help="keys every instance shares").add_subparsers(
        dest="what", required=True
    )
    forget_key = shared.add_parser(
        "forget",
        help="forget a key's recorded fingerprint after changing the key on purpose "
        "(the next instance to start records its own)",
    )
    forget_key.add_argument("name", choices=KEY_NAMES)
    forget_key.set_defaults(handler=_handled(_keys_forget))


def _run(action: _Action) -> Callable[[argparse.Namespace], int]:
    return _handled(lambda args: _with_accounts(args, action))


def _handled(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(main(args))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        except DirectoryError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print(f"{len(exc.problems)} error(s); nothing was imported", file=sys.stderr)
            return 1
        except (AccountError, GatewayError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (AuthenticationError, NoPermissionError) as exc:
            print(f"error: Redis refused the login: {exc}", file=sys.stderr)
            return 1
        except RedisError as exc:
            print(f"error: Redis: {exc}", file=sys.stderr)
            return 1

    return handler


@asynccontextmanager
async def _redis(args: argparse.Namespace, data_dir: Path) -> AsyncIterator[aioredis.Redis]:
    url = args.redis_url
    embedded: EmbeddedRedis | None = None
    if url is None:
        settings = load_config(args.config).redis
    else:
        settings = redis_url_settings(url, args.config)
    if url is None and not settings.external:
        embedded = EmbeddedRedis(data_dir / "redis")
        client: aioredis.Redis = aioredis.Redis.from_url(embedded.url)
        try:
            await client.ping()  # the running gateway's own server
        except (OSError, aioredis.ConnectionError):
            await client.aclose()
            embedded.start()
            client = aioredis.Redis.from_url(embedded.url)
        else:
            embedded = None
    else:
        client = redis_client(settings, url=url)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            embedded.stop()


def _data_dir(args: argparse.Namespace) -> Path:
    if args.redis_url is None or args.config.exists():
        return load_config(args.config).data_dir
    return Path("var")


async def _with_accounts(args: argparse.Namespace, action: _Action) -> int:
    data_dir = _data_dir(args)
    async with _redis(args, data_dir) as client:
        # SECURITY: TOTP secrets written under another key than the gateways' would be
        # unreadable to them: the command checks the key as a starting gateway does.
        totp = await asyncio.to_thread(keys_in, data_dir, ("totp",))
        refused = "the command changed nothing"
        await agree_on_keys(client, totp, (), refused=refused, record=False)
        status = await action(open_accounts(client, SystemClock(), data_dir), args)
        if status == 0:  # recorded only once something was written under it
            await agree_on_keys(client, totp, (), refused=refused)
        return status


async def _keys_forget(args: argparse.Namespace) -> int:
    async with _redis(args, _data_dir(args)) as client:
        forgotten = await forget(client, args.name)
    if not forgotten:
        print(f"no fingerprint of the {args.name} key was recorded; nothing changed")
        return 0
    print(f"forgot the recorded fingerprint of the {args.name} key")
    print(
        "the next instance to start records its key; instances still running keep theirs: "
        "restart every instance with the same new key",
        file=sys.stderr,
    )
    print(f"warning: {BREAKS[args.name]}", file=sys.stderr)
    return 0


def _new_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated?) from stdin's first line or freshly generated."""
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n"), False
    return secrets.token_urlsafe(18), True


async def _import(accounts: Accounts, args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 1
    directory = parse_directory(text, str(args.file))
    report = await import_directory(directory, accounts.store, accounts.enrolment)
    for label, keys in (
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
    ):
        for key in keys:
            print(f"{label}: {key}")
    for key, token in report.enrolment_tokens.items():
        print(f"enrolment token for {key} (shown once, valid 24 h): {token}")
    return 0


async def _org_create(accounts: Accounts, args: argparse.Namespace) -> int:
    org = await accounts.store.put_org(args.org, args.name)
    print(f"org {org.id}: {org.name}")
    return 0


async def _finish_new_account(accounts: Accounts, key: str, args: argparse.Namespace) -> int:
    password, generated = _new_password(args)
    await accounts.store.set_password(key, password)
    if generated:
        print(f"password for {key} (shown once): {password}")
    token = await accounts.enrolment.issue(key)
    print(f"enrolment token for {key} (shown once, valid 24 h): {token}")
    return 0


async def _staff_create(accounts: Accounts, args: argparse.Namespace) -> int:
    account = await accounts.store.put_staff(args.id, args.email, args.name, person=_person(args))
    print(f"created {account.key}")
    return await _finish_new_account(accounts, account.key, args)


async def _member_create(accounts: Accounts, args: argparse.Namespace) -> int:
    account = await accounts.store.put_member(
        args.org,
        args.id,
        args.email,
        args.name or args.id,
        args.role,
        impersonable=not args.not_impersonable,
        person=_person(args),
    )
    print(f"created {account.key}")
    return await _finish_new_account(accounts, account.key, args)


def _person(args: argparse.Namespace) -> str:
    # An explicit `--person ""` is a mistake, not "no person": refused like any bad id.
    return "" if args.person is None else check_person(args.person)


async def _password_reset(accounts: Accounts, args: argparse.Namespace) -> int:
    await accounts.store.require(args.principal)
    password, generated = _new_password(args)
    ended = await accounts.store.set_password(args.principal, password)
    print(f"password of {args.principal} reset; ended {ended} session(s)")
    if generated:
        print(f"password for {args.principal} (shown once): {password}")
    return 0


async def _totp_reset(accounts: Accounts, args: argparse.Namespace) -> int:
    # SECURITY: a lost or leaked second factor ends the sessions it opened (one step).
    token, ended = await accounts.enrolment.reset(args.principal)
    print(f"TOTP of {args.principal} removed; ended {ended} session(s)")
    print(f"enrolment token for {args.principal} (shown once, valid 24 h): {token}")
    return 0


async def _disable(accounts: Accounts, args: argparse.Namespace) -> int:
    ended = await accounts.store.set_disabled(args.principal, True)
    print(f"disabled {args.principal}; ended {ended} session(s)")
    return 0


async def _enable(accounts: Accounts, args: argparse.Namespace) -> int:
    await accounts.store.set_disabled(args.principal, False)
    print(f"enabled {args.principal}")
    return 0


async def _list(accounts: Accounts, args: argparse.Namespace) -> int:
    store = accounts.store
    for staff_id in await store.staff_ids():
        account = await store.require(f"staff:{staff_id}")
        print(_describe(account))
    for org_id in await store.orgs():
        org = await store.org(org_id)
        print(f"org:{org_id} {org.name if org else ''}")
        for member_id in await store.member_ids(org_id):
            account = await store.require(f"member:{org_id}:{member_id}")
            print(f"  {_describe(account)} role={account.principal.role}")
    return 0


def _describe(account: Account) -> str:
    state = "disabled" if account.disabled else "active"
    enrolled = "" if account.enrolled else " (not enrolled)"
    person = f" person={account.person}" if account.person else ""
    return f"{account.key} <{account.principal.email}> {state}{enrolled}{person}"
