"""`gateway demo`: the whole walk-through on one machine, as `make demo` runs it.

It makes the demo's TLS material (a private demo CA and a certificate for the
`*.localhost` names), starts the mail catcher (prints every notification), the Acme CRM
customer app on loopback, and the gateway with its own embedded Redis; imports the demo
directory (people, orgs, passwords and TOTP secrets that are demo material only); then
prints the https URLs and how to trust the demo CA. Ctrl-C (or SIGTERM) stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from gateway.accounts import DirectoryError, open_accounts
from gateway.accounts.directory import import_directory, parse_directory
from gateway.app import create_app
from gateway.appkeys import REDIS
from gateway.clock import SystemClock
from gateway.config import GatewayConfig, load_config
from gateway.demo.acme import AcmeSettings, create_acme_app
from gateway.demo.mail_catcher import MailCatcher
from gateway.errors import ConfigError, GatewayError
from gateway.server import GatewayServer, loop_factory
from gateway.tls import ensure_demo_tls

DEMO_DIRECTORY = Path("config/demo-directory.yaml")
APP_HOST = "acme.localhost"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("demo", help="run the demo: gateway, Acme CRM, mail catcher")
    parser.add_argument("--config", type=Path, default=Path("config/gateway.yaml"))
    parser.add_argument("--directory", type=Path, default=DEMO_DIRECTORY)
    parser.add_argument("--app-port", type=int, default=9001, help="Acme CRM's loopback port")
    parser.set_defaults(handler=_demo)


@dataclass(frozen=True)
class DirectoryFile:
    path: Path
    text: str


@dataclass
class Demo:
    """Everything the demo started, stopped in reverse order."""

    config: GatewayConfig
    out: TextIO
    catcher: MailCatcher = field(default_factory=MailCatcher)
    runners: list[web.AppRunner] = field(default_factory=list)
    gateway: GatewayServer | None = None

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
        acme = create_acme_app(
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

    async def _import(self, app: web.Application, directory: DirectoryFile) -> None:
        accounts = open_accounts(app[REDIS], SystemClock(), self.config.data_dir)
        parsed = parse_directory(directory.text, str(directory.path))
        report = await import_directory(parsed, accounts.store, accounts.enrolment)
        total = len(report.created) + len(report.updated) + len(report.unchanged)
        print(
            f"demo directory {directory.path}: {total} accounts "
            f"({len(report.created)} new, {len(report.updated)} updated)",
            file=self.out,
        )
        for key, token in report.enrolment_tokens.items():
            print(f"  enrolment token for {key} (shown once, 24 h): {token}", file=self.out)

    def announce(self) -> None:
        console, acme = self.origin(self.config.console_host), self.origin(APP_HOST)
        ca = self.config.tls.ca_file
        print(
            f"""
The demo is running. Open:
  console (log in, request and approve access):  {console}/
  Acme CRM through the gateway:                  {acme}/
  what the app received (headers + assertion):   {acme}/whoami
  the gateway's published assertion keys:        {console}/.gateway/jwks.json

Trust the demo CA once, so the browser accepts these (it is limited to *.localhost):
  {ca}
  Firefox:  Settings > Privacy & Security > Certificates > View Certificates > Import
  Chromium: chrome://settings/certificates > Authorities > Import
  curl:     curl --cacert {ca} {acme}/whoami

The walk-through (people, passwords and TOTP secrets: {DEMO_DIRECTORY}, demo only):
  1. At the console, log in as sam@vendor.example and ask for access to org acme as bob.
  2. The approvers' email is printed here; log in as alice@acme.example and approve.
  3. As sam, open Acme CRM: /whoami shows the identity the app received, verified.
Mail sent by the gateway is printed here. Ctrl-C stops everything.""",
            file=self.out,
            flush=True,
        )

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.catcher.stop()


async def run_demo(
    config: GatewayConfig,
    *,
    app_port: int,
    directory: DirectoryFile | None,
    out: TextIO,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    demo = Demo(config, out)
    try:
        await demo.start(app_port, directory)
        demo.announce()
        await stopping.wait()
        print("stopping the demo", file=out, flush=True)
    finally:
        await demo.stop()


def _demo(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
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
    except DirectoryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (GatewayError, OSError) as exc:
        print(f"gateway demo: {exc}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0
