"""The CLI's saved console login: where the console is, its cookie and CSRF token.

`gateway login` writes it to `$XDG_CONFIG_HOME/gateway/session.json` (default
`~/.config/gateway/`), the folder 0700 and the file 0600 since the cookie is a bearer
credential. `ConsoleSession.call` talks to the JSON API over HTTPS with it; certificates
are verified (against `ca_file` when the login named one, e.g. the demo CA).

    {"console_url": "https://gateway.localhost:8443", "cookies": {"__Host-gw_console": "…"},
     "csrf_token": "…", "ca_file": "var/tls/ca.crt", "connect_to": "127.0.0.1"}
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

API_PREFIX = "/.gateway/api/v1"


class NotLoggedIn(Exception):
    pass


def session_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gateway" / "session.json"


class _FixedResolver(AbstractResolver):
    """Every name resolves to one address (the console's host name is kept for TLS)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET6 if ":" in self.address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


@dataclass
class ConsoleSession:
    console_url: str
    cookies: dict[str, str] = field(default_factory=dict)
    csrf_token: str = ""
    ca_file: str | None = None
    connect_to: str | None = None

    def save(self, path: Path | None = None) -> Path:
        target = path or session_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o700)
        temporary = target.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)
        # SECURITY: the cookie is a bearer credential: the file is created 0600, never wider.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle)
        os.replace(temporary, target)
        return target

    @classmethod
    def load(cls, path: Path | None = None) -> ConsoleSession:
        source = path or session_file()
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
            return cls(
                console_url=str(data["console_url"]),
                cookies={str(k): str(v) for k, v in dict(data.get("cookies", {})).items()},
                csrf_token=str(data.get("csrf_token", "")),
                ca_file=data.get("ca_file"),
                connect_to=data.get("connect_to"),
            )
        except FileNotFoundError as exc:
            raise NotLoggedIn(f"not logged in: run `gateway login` first ({source})") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NotLoggedIn(f"{source}: unreadable session ({exc}); log in again") from exc

    def _client(self) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=self.ca_file)
        connect_to = self.connect_to
        host = (urlsplit(self.console_url).hostname or "").lower()
        if connect_to is None and (host == "localhost" or host.endswith(".localhost")):
            # RFC 6761: *.localhost is loopback, as browsers treat it, whatever /etc/hosts says.
            connect_to = "127.0.0.1"
        resolver = _FixedResolver(connect_to) if connect_to else None
        connector = aiohttp.TCPConnector(ssl=context, resolver=resolver)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One API call; returns (status, JSON body, cookies the answer set)."""
        headers = {"Accept": "application/json"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method not in ("GET", "HEAD") and self.csrf_token:
            headers["X-CSRF-Token"] = self.csrf_token
        async with (
            self._client() as client,
            client.request(
                method,
                self.console_url + API_PREFIX + path,
                json=body,
                headers=headers,
                allow_redirects=False,
            ) as response,
        ):
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = {"error": "bad_answer", "reason": f"HTTP {response.status}, not JSON"}
            set_cookies = {name: morsel.value for name, morsel in response.cookies.items()}
            return response.status, data if isinstance(data, dict) else {}, set_cookies
