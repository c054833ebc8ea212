"""`gateway demo`: the whole walk-through on one machine, as `make demo` runs it.

It makes the demo's TLS material (a private demo CA and a certificate for the
`*.localhost` names), starts the mail catcher (prints every notification), the Acme CRM
customer app on loopback, and the gateway with its own embedded Redis; imports the demo
directory (people, orgs, passwords and TOTP secrets that are demo material only); then
prints the https URLs, how to trust the demo CA, the demo people (passwords and TOTP
secrets as otpauth URIs) and the walk-through. Ctrl-C (or SIGTERM) stops it all.

    gateway demo            # what `make demo` runs
    gateway demo --codes    # the demo people's current TOTP codes, from another terminal
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from redis.exceptions import RedisError

from audit.errors import AuditError
from gateway.accounts import DirectoryError, open_accounts
from gateway.accounts.directory import Directory, import_directory, parse_directory
from gateway.accounts.totp import code_at, provisioning_uri
from gateway.app import create_app
from gateway.appkeys import REDIS
from gateway.cli.configfile import load_config_or_report
from gateway.clock import SystemClock
from gateway.config import GatewayConfig
from gateway.demo.acme import AcmeSettings, create_acme_app
from gateway.demo.mail_catcher import MailCatcher
from gateway.errors import GatewayError
from gateway.server import GatewayServer, loop_factory, stop_requested
from gateway.tls import ensure_demo_tls
from policies.errors import PolicyError

DEMO_DIRECTORY = Path("config/demo-directory.yaml")
APP_HOST = "acme.localhost"
TOTP_ISSUER = "Impersonation gateway (demo)"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("demo", help="run the demo: gateway, Acme CRM, mail catcher")
    parser.add_argument("--config", type=Path, default=Path("config/gateway.yaml"))
    parser.add_argument("--directory", type=Path, default=DEMO_DIRECTORY)
    parser.add_argument("--app-port", type=int, default=9001, help="Acme CRM's loopback port")
    parser.add_argument(
        "--codes",
        action="store_true",
        help="print the demo people's current TOTP codes and exit (starts nothing)",
    )
    parser.set_defaults(handler=_demo)


@dataclass(frozen=True)
class DirectoryFile:
    path: Path
    text: str

    def parse(self) -> Directory:
        return parse_directory(self.text, str(self.path))


@dataclass
class Demo:
    """Everything the demo started, stopped in reverse order."""

    config: GatewayConfig
    out: TextIO
    catcher: MailCatcher = field(default_factory=MailCatcher)
    runners: list[web.AppRunner] = field(default_factory=list)
    gateway: GatewayServer | None = None
    directory: Directory | None = None
    enrolment_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def https_port(self) -> int:
        if self.gateway is None:
            raise GatewayError("the gateway is not running")
        return next(b.port for b in self.gateway.bound if b.tls)

    def origin(self, host: str) -> str:
        port = self.https_port
        return f"https://{host}" if port == 443 else f"https://{host}:{port}"

    async def start(self, app_port: int, directory: DirectoryFile | None) -> None:
        config = self.config
        if not any(listener.tls for listener in config.listeners):
            raise GatewayError(f"{config.source}: the demo needs a TLS listener")
        _refuse_tls_outside_data_dir(config)
        tls = await asyncio.to_thread(ensure_demo_tls, config.tls)
        print(f"demo TLS: {'made' if tls.created else 'reusing'} {tls.ca_file}", file=self.out)
        # Ports of the demo's own parts are taken first, so that a busy one fails the demo
        # before the gateway (and its Redis) start.
        app_socket = socket.create_server(("127.0.0.1", app_port))
        try:
            if config.smtp is not None and config.smtp.security == "plain":
                self.catcher = MailCatcher(out=self.out)
                await self.catcher.start(config.smtp.host, config.smtp.port)
            # The gateway next: its listeners fix the public origin Acme checks assertions for.
            app = create_app(config)
            self.gateway = GatewayServer(config, app)
            await self.gateway.start()
        except BaseException:
            app_socket.close()
            raise
        acme = self.acme_app(
            AcmeSettings(
                public_origin=self.origin(APP_HOST),
                issuer=config.console_url,
                # The listener actually bound (the config may say port 0), on loopback.
                jwks_url=f"{self.origin(config.console_host)}/.gateway/jwks.json",
                ca_file=str(tls.ca_file),
            )
        )
        runner = web.AppRunner(acme, access_log=None)
        self.runners.append(runner)
        try:
            await runner.setup()
            await web.SockSite(runner, app_socket).start()
        except BaseException:
            app_socket.close()
            raise
        if directory is not None:
            await self._import(app, directory)

    def acme_app(self, settings: AcmeSettings) -> web.Application:
        """The customer application the demo puts behind the gateway."""
        return create_acme_app(settings)

    async def _import(self, app: web.Application, directory: DirectoryFile) -> None:
        accounts = open_accounts(app[REDIS], SystemClock(), self.config.data_dir)
        parsed = directory.parse()
        report = await import_directory(parsed, accounts.store, accounts.enrolment)
        self.directory = parsed
        self.enrolment_tokens = dict(report.enrolment_tokens)
        total = len(report.created) + len(report.updated) + len(report.unchanged)
        print(
            f"demo directory {directory.path}: {total} accounts "
            f"({len(report.created)} new, {len(report.updated)} updated)",
            file=self.out,
        )

    def announce(self) -> None:
        console, acme = self.origin(self.config.console_host), self.origin(APP_HOST)
        ca = self.config.tls.ca_file
        print(
            f"""
The demo is running. Open:
  console (log in, review and approve requests):  {console}/
  Acme CRM through the gateway:                   {acme}/
  what the app received (headers + assertion):    {acme}/whoami
  the gateway's published assertion keys:         {console}/.gateway/jwks.json

Trust the demo CA once, so the browser accepts these (it is limited to *.localhost):
  {ca}
  Firefox:  Settings > Privacy & Security > Certificates > View Certificates > Import
  Chromium: chrome://settings/certificates > Authorities > Import
  curl:     curl --cacert {ca} {acme}/whoami
{self._people()}
The walk-through (in a second terminal, in this folder; current TOTP codes any time with
`.venv/bin/gateway demo --codes`, or add the otpauth URIs above to an authenticator app):
  1. Sam (vendor support) logs in and asks to act as bob in acme:
       .venv/bin/gateway login --console {console} \\
           --ca-file {ca} --email sam@vendor.example
       .venv/bin/gateway request create --org acme --member bob --scope write \\
           --duration 1800 --justification "ticket 42: contact import fails"
  2. The approvers' email is printed here, with its console link. Open the link in a
     browser, log in as alice@acme.example and press Approve.
  3. Log out of the console (or use a private window), open {acme}/
     and log in as sam@vendor.example: Acme CRM shows "Signed in as bob (support
     engineer sam acting)"; {acme}/whoami shows the verified assertion.
  4. Alice revokes on the same request page; sam's very next page is denied.
  5. The auditor moves the trail into segment files, verifies and replays it:
       .venv/bin/gateway audit collect --once
       .venv/bin/gateway audit verify var/audit --keyring var/audit-keys/keyring.json
       .venv/bin/gateway audit replay var/audit --grant REQUEST_ID
Mail sent by the gateway is printed here. Ctrl-C stops everything.""",
            file=self.out,
            flush=True,
        )

    def _people(self) -> str:
        if self.directory is None:
            return ""
        lines = [f"\nThe demo people ({DEMO_DIRECTORY}; demo material, never for real use):"]
        for account in self.directory.accounts:
            where = f"{account.org} {account.role}" if account.org else "vendor staff"
            lines.append(f"  {account.email}  ({where})  password: {account.password or '-'}")
            if account.totp_secret:
                uri = provisioning_uri(account.totp_secret, account.email, TOTP_ISSUER)
                lines.append(f"      TOTP: {uri}")
            token = self.enrolment_tokens.get(account.key)
            if token:
                lines.append(f"      no TOTP yet: enrol at the console with token {token} (24 h)")
            elif not account.totp_secret:
                lines.append(
                    f"      no TOTP yet: `.venv/bin/gateway admin totp reset {account.key}` "
                    "prints an enrolment token"
                )
        return "\n".join(lines) + "\n"

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.catcher.stop()


def _refuse_tls_outside_data_dir(config: GatewayConfig) -> None:
    """The demo (re)writes keys at the `tls:` paths: only ever inside its data directory."""
    data_dir = config.data_dir.resolve()
    named = [config.tls.cert_file, config.tls.key_file, config.tls.ca_file]
    # SECURITY: a real deployment's certificate and key are never replaced by demo ones.
    outside = [
        str(path) for path in named if path is not None and not _inside(path.resolve(), data_dir)
    ]
    if outside:
        raise GatewayError(
            f"{config.source}: the demo writes its own TLS material and refuses paths outside "
            f"the data directory {config.data_dir}: " + ", ".join(outside)
        )


def _inside(path: Path, directory: Path) -> bool:
    return path != directory and path.is_relative_to(directory)


async def run_demo(
    config: GatewayConfig,
    *,
    app_port: int,
    directory: DirectoryFile | None,
    out: TextIO,
) -> None:
    with stop_requested() as stopping:
        demo = Demo(config, out)
        try:
            await demo.start(app_port, directory)
            demo.announce()
            await stopping.wait()
            print("stopping the demo", file=out, flush=True)
        finally:
            await demo.stop()


def print_codes(directory: Directory, now: float, out: TextIO) -> None:
    """The current TOTP code of every demo account that has a secret."""
    for account in directory.accounts:
        if account.totp_secret:
            print(f"{account.email:<24} {code_at(account.totp_secret, now)}", file=out)


def _demo(args: argparse.Namespace) -> int:
    if args.codes:
        try:
            text = args.directory.read_text(encoding="utf-8")
            print_codes(
                DirectoryFile(args.directory, text).parse(), SystemClock().now(), sys.stdout
            )
        except (OSError, UnicodeDecodeError) as exc:
            print(f"gateway demo: {args.directory}: {exc}", file=sys.stderr)
            return 1
        except DirectoryError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        print("(each code is valid for about 30 s and usable once)")
        return 0
    config = load_config_or_report(args.config)
    if config is None:
        return 1
    directory = None
    if args.directory.exists():
        try:
            directory = DirectoryFile(args.directory, args.directory.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"gateway demo: {args.directory}: {exc}", file=sys.stderr)
            return 1
    factory, _ = loop_factory()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                run_demo(config, app_port=args.app_port, directory=directory, out=sys.stdout)
            )
    except (DirectoryError, PolicyError) as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (GatewayError, AuditError, RedisError, OSError) as exc:
        print(f"gateway demo: {exc}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0
