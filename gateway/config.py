"""The gateway's configuration: a typed, frozen model and its loader.

Unknown keys are errors; every problem is reported at once with file, line, key, bad
value and what was expected. Secrets never sit in the file: a key ending in `_env`
names the environment variable that holds the value.

    console_url: https://gateway.localhost:8443
    data_dir: var
    listeners: [{address: 127.0.0.1, port: 8443, tls: true}]
    tls: {cert_file: var/tls/gateway.crt, key_file: var/tls/gateway.key}
    redis: {url: null}          # null: run an embedded redis-server
    policy_files: [config/policies/demo.yaml]
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from policies.source import Problems, YamlList, YamlMap, load_yaml


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    tls: bool = True


@dataclass(frozen=True)
class MetricsListener:
    """Prometheus metrics, served plain on their own address: keep it on loopback or an
    internal interface, never on a listener the public reaches."""

    address: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # the CA that signed cert_file, shown to clients in the demo


@dataclass(frozen=True)
class RedisConfig:
    url: str | None = None  # None: embedded redis-server under data_dir
    appendfsync: str = "always"


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_request_line_bytes: int = 8192
    max_json_bytes: int = 65536
    max_form_bytes: int = 65536


@dataclass(frozen=True)
class Sessions:
    idle_timeout_s: int = 1800
    absolute_lifetime_s: int = 43200
    mfa_max_age_s: int = 3600
    handoff_code_ttl_s: int = 30


@dataclass(frozen=True)
class Smtp:
    host: str = "127.0.0.1"
    port: int = 465
    security: str = "tls"  # tls | starttls | plain (plain only for a local catcher)
    username: str | None = None
    password: str | None = None
    sender: str = "gateway@localhost"


@dataclass(frozen=True)
class AuditConfig:
    checkpoint_every_frames: int = 1000
    checkpoint_every_s: float = 10.0
    segment_dir: Path = Path("var/audit")


@dataclass(frozen=True)
class GatewayConfig:
    console_url: str
    data_dir: Path
    listeners: tuple[Listener, ...]
    tls: TlsFiles = TlsFiles()
    redis: RedisConfig = RedisConfig()
    policy_files: tuple[Path, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: Limits = Limits()
    sessions: Sessions = Sessions()
    smtp: Smtp | None = None
    audit: AuditConfig = AuditConfig()
    access_log: bool = False
    metrics: MetricsListener | None = None  # None: no metrics listener
    source: str = field(default="", compare=False)

    @property
    def console_host(self) -> str:
        return (urlsplit(self.console_url).hostname or "").lower()


_Reader = Callable[[object, int, str, Problems], Any]


def _checked(
    accepts: Callable[[object], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v
) -> _Reader:
    """A reader that takes a value `accepts` likes (converted), else reports `expected`."""

    def read(value: object, line: int, key: str, problems: Problems) -> Any:
        if not accepts(value):
            problems.add(line, key, value, expected)
            return None
        return convert(value)

    return read


def _integer(low: int, high: int) -> _Reader:
    return _checked(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
        f"an integer from {low} to {high}",
    )


def _number(low: float, high: float) -> _Reader:
    return _checked(
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high,
        f"a number from {low} to {high}",
        float,
    )


def _choice(*options: str) -> _Reader:
    return _checked(lambda v: v in options, "one of " + ", ".join(options))


_boolean = _checked(lambda v: isinstance(v, bool), "true or false")
_text = _checked(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def _https_url(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        problems.add(line, key, value, "an https:// URL")
        return None
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        hostname = None
    if not hostname or parts.scheme != "https" or parts.path not in ("", "/"):
        problems.add(line, key, value, "an https:// URL with a host and no path")
        return None
    return value.rstrip("/")


def _env_secret(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not value:
        problems.add(line, key, value, "the name of an environment variable")
        return None
    secret = os.environ.get(value)
    if secret is None:
        problems.add(line, key, value, f"environment variable {value} to be set")
    return secret


def _section(
    doc: object,
    where: str,
    line: int,
    readers: Mapping[str, _Reader],
    problems: Problems,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read one mapping: unknown keys and missing required keys are problems."""
    if not isinstance(doc, YamlMap):
        problems.add(line, where or "(document)", doc, "a mapping")
        return {}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        full = f"{where}.{key}" if where else key
        reader = readers.get(key)
        if reader is None:
            problems.add(doc.line_of(key), full, None, "no such key; known: " + ", ".join(readers))
            continue
        result = reader(value, doc.line_of(key), full, problems)
        if result is not None:
            out[key.removesuffix("_env")] = result
    for key in required:
        if key not in doc:
            problems.add(doc.line, f"{where}.{key}" if where else key, None, "required")
    return out


def _listeners(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, YamlList) or not value:
        problems.add(line, key, value, "a non-empty list of listeners")
        return None
    readers = {"address": _text, "port": _integer(0, 65535), "tls": _boolean}
    out = []
    for index, item in enumerate(value):
        fields = _section(
            item,
            f"{key}[{index}]",
            value.line_of(index),
            readers,
            problems,
            required=("address", "port"),
        )
        if {"address", "port"} <= fields.keys():
            out.append(Listener(**fields))
    return tuple(out)


def _path_list(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, YamlList) or not all(isinstance(v, str) and v for v in value):
        problems.add(line, key, value, "a list of file paths")
        return None
    return tuple(Path(v) for v in value)


def _path(value: object, line: int, key: str, problems: Problems) -> Any:
    text = _text(value, line, key, problems)
    return Path(text) if text is not None else None


def _networks(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, YamlList):
        problems.add(line, key, value, "a list of addresses or CIDR networks")
        return None
    out = []
    for index, item in enumerate(value):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            problems.add(
                value.line_of(index), f"{key}[{index}]", item, "an address or CIDR network"
            )
    return tuple(out)


def _nested(cls: type, readers: Mapping[str, _Reader]) -> _Reader:
    def read(value: object, line: int, key: str, problems: Problems) -> Any:
        return cls(**_section(value, key, line, readers, problems))

    return read


def _optional_url(value: object, line: int, key: str, problems: Problems) -> Any:
    if value is None:
        return None
    try:
        scheme = urlsplit(value).scheme if isinstance(value, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme = None
    if scheme not in ("redis", "rediss", "unix"):
        problems.add(line, key, value, "null (embedded) or a redis://, rediss:// or unix:// URL")
        return None
    return value


_READERS: dict[str, _Reader] = {
    "console_url": _https_url,
    "data_dir": _path,
    "listeners": _listeners,
    "tls": _nested(TlsFiles, {"cert_file": _path, "key_file": _path, "ca_file": _path}),
    "redis": _nested(
        RedisConfig, {"url": _optional_url, "appendfsync": _choice("always", "everysec")}
    ),
    "policy_files": _path_list,
    "trusted_proxies": _networks,
    "limits": _nested(
        Limits,
        {
            "max_header_bytes": _integer(1024, 1 << 20),
            "max_headers": _integer(8, 1000),
            "max_request_line_bytes": _integer(256, 1 << 16),
            "max_json_bytes": _integer(1024, 1 << 24),
            "max_form_bytes": _integer(1024, 1 << 24),
        },
    ),
    "sessions": _nested(
        Sessions,
        {
            "idle_timeout_s": _integer(60, 7 * 86400),
            "absolute_lifetime_s": _integer(300, 30 * 86400),
            "mfa_max_age_s": _integer(30, 30 * 86400),
            "handoff_code_ttl_s": _integer(5, 300),
        },
    ),
    "smtp": _nested(
        Smtp,
        {
            "host": _text,
            "port": _integer(1, 65535),
            "security": _choice("tls", "starttls", "plain"),
            "username": _text,
            "password_env": _env_secret,
            "sender": _text,
        },
    ),
    "audit": _nested(
        AuditConfig,
        {
            "checkpoint_every_frames": _integer(1, 1_000_000),
            "checkpoint_every_s": _number(0.1, 86400),
            "segment_dir": _path,
        },
    ),
    "access_log": _boolean,
    "metrics": _nested(MetricsListener, {"address": _text, "port": _integer(0, 65535)}),
}


def parse_config(text: str, file: str, base: Path | None = None) -> GatewayConfig:
    """Parse config text; relative paths resolve against `base` (the file's folder)."""
    problems = Problems(file)
    doc = load_yaml(text, problems)
    fields = {}
    if not problems:
        fields = _section(
            doc, "", 1, _READERS, problems, required=("console_url", "data_dir", "listeners")
        )
    if problems:
        raise ConfigError(problems.items)
    if base is not None:
        fields = _resolve_paths(fields, base)
    return GatewayConfig(**fields, source=file)


def _resolve_paths(fields: dict[str, Any], base: Path) -> dict[str, Any]:
    def under(path: Path | None) -> Path | None:
        return None if path is None else (path if path.is_absolute() else base / path)

    out = dict(fields)
    out["data_dir"] = under(fields["data_dir"])
    if "tls" in fields:
        tls: TlsFiles = fields["tls"]
        out["tls"] = TlsFiles(under(tls.cert_file), under(tls.key_file), under(tls.ca_file))
    if "policy_files" in fields:
        out["policy_files"] = tuple(under(p) for p in fields["policy_files"])
    if "audit" in fields:
        audit: AuditConfig = fields["audit"]
        out["audit"] = AuditConfig(
            audit.checkpoint_every_frames,
            audit.checkpoint_every_s,
            under(audit.segment_dir) or audit.segment_dir,
        )
    return out


def load_config(path: Path) -> GatewayConfig:
    """Load a config file; paths in it are relative to the working directory's project root."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems = Problems(str(path))
        problems.add(1, "(file)", None, f"a readable UTF-8 file: {exc}")
        raise ConfigError(problems.items) from exc
    return parse_config(text, str(path), base=Path.cwd())
