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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
class RedisSentinel:
    """Sentinels that name the current master of `master` (see gateway.redis_client)."""

    master: str
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False  # TLS to the sentinels and to the master they name


@dataclass(frozen=True)
class RedisConfig:
    url: str | None = None  # None and no sentinel: embedded redis-server under data_dir
    appendfsync: str = "always"
    sentinel: RedisSentinel | None = None
    username: str | None = None
    password_env: str | None = None  # the variable's name; its value is `password`
    password: str | None = field(default=None, repr=False)
    sentinel_password_env: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @property
    def external(self) -> bool:
        """A Redis the operator runs (URL or Sentinel), not the embedded one."""
        return self.url is not None or self.sentinel is not None

    @property
    def tls(self) -> bool:
        if self.sentinel is not None:
            return self.sentinel.tls
        return self.url is not None and self.url.startswith("rediss://")


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
    password: str | None = field(default=None, repr=False)
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
    if not _is_origin(value):
        problems.add(line, key, value, "an https:// URL with a host and no path")
        return None
    return value.rstrip("/")


def _is_origin(value: str) -> bool:
    """An https origin and nothing else: links and redirects append a path to it."""
    try:
        parts = urlsplit(value)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket, a port out of range
        return False
    return (
        bool(hostname)
        and parts.scheme == "https"
        and parts.path in ("", "/")
        and (port is None or 1 <= port <= 65535)
        and "@" not in parts.netloc
        and not parts.query
        and not parts.fragment
        and not value.endswith(("?", "#"))
    )


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,254}")


def _env_problem(problems: Problems, line: int, key: str, variable: str, expected: str) -> None:
    """Report a missing variable, echoing its name only when it looks like one."""
    if _ENV_NAME.fullmatch(variable):
        problems.add(line, key, variable, expected.format(variable))
    else:
        # SECURITY: a secret written where its variable's name belongs stays off stderr.
        problems.add(
            line,
            key,
            None,
            expected.format("named here") + " (what is written here is not shown: it does not "
            "look like a variable name and may be the secret itself)",
        )


def _env_secret(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not value:
        problems.add(line, key, value, "the name of an environment variable")
        return None
    secret = os.environ.get(value)
    if secret is None:
        _env_problem(problems, line, key, value, "environment variable {} to be set")
    elif not secret:
        # SECURITY: an empty variable is a mistake, never a login without a password.
        _env_problem(problems, line, key, value, "environment variable {} set, not empty")
        return None
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


def _is_path(value: object) -> bool:
    # A NUL byte is no file name: the OS calls would raise ValueError, not OSError.
    return isinstance(value, str) and value != "" and "\0" not in value


def _path_list(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, YamlList) or not all(_is_path(v) for v in value):
        problems.add(line, key, value, "a list of file paths")
        return None
    return tuple(Path(v) for v in value)


def _path(value: object, line: int, key: str, problems: Problems) -> Any:
    text = _text(value, line, key, problems)
    if text is not None and not _is_path(text):
        problems.add(line, key, value, "a file path without NUL bytes")
        return None
    return Path(text) if text is not None else None


def _networks(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, YamlList):
        problems.add(line, key, value, "a list of addresses or CIDR networks")
        return None
    out = []
    for index, item in enumerate(value):
        try:
            network = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            problems.add(
                value.line_of(index), f"{key}[{index}]", item, "an address or CIDR network"
            )
            continue
        if network.prefixlen == 0:
            # SECURITY: trusting every address lets any client forge the address that
            # throttling and the audit record go by.
            problems.add(
                value.line_of(index),
                f"{key}[{index}]",
                item,
                "the proxies' own addresses or networks, not every address",
            )
            continue
        out.append(network)
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
        # SECURITY: a mistyped URL may still carry a password; it never reaches stderr.
        shown = _redacted_text(value) if isinstance(value, str) else value
        problems.add(line, key, shown, "null (embedded) or a redis://, rediss:// or unix:// URL")
        return None
    return value


MAX_SENTINEL_NODES = 32


def _env_name(value: object, line: int, key: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not value or len(value) > 255 or "=" in value:
        shown = value if not isinstance(value, str) or _ENV_NAME.fullmatch(value) else None
        problems.add(line, key, shown, "the name of an environment variable")
        return None
    return value


def _sentinel_node(text: object) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[v6]:port"; None when malformed."""
    if not isinstance(text, str) or len(text) > 300:
        return None
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or len(port) > 5:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host:
        return None  # an IPv6 address must be bracketed so that its port is unambiguous
    if not host or any(ch.isspace() or not ch.isprintable() or ch in "/@[]" for ch in host):
        return None
    number = int(port)
    return (host, number) if 1 <= number <= 65535 else None


def _sentinel_nodes(value: object, line: int, key: str, problems: Problems) -> Any:
    expected = f'a list of 1 to {MAX_SENTINEL_NODES} "host:port" strings'
    if not isinstance(value, YamlList) or not 1 <= len(value) <= MAX_SENTINEL_NODES:
        problems.add(line, key, value, expected)
        return None
    nodes = []
    for index, item in enumerate(value):
        node = _sentinel_node(item)
        if node is None:
            problems.add(
                value.line_of(index),
                f"{key}[{index}]",
                _redacted_text(item) if isinstance(item, str) else item,
                '"host:port" with a port from 1 to 65535 ("[v6]:port" for IPv6)',
            )
        else:
            nodes.append(node)
    return tuple(nodes) if len(nodes) == len(value) else None


_sentinel_master = _checked(
    lambda v: (
        isinstance(v, str)
        and 0 < len(v) <= 255
        and all(ch.isprintable() and not ch.isspace() for ch in v)
    ),
    "a master name (1 to 255 printable characters, no spaces)",
)


def _sentinel(value: object, line: int, key: str, problems: Problems) -> Any:
    readers = {"master": _sentinel_master, "nodes": _sentinel_nodes, "tls": _boolean}
    before = len(problems.items)
    fields = _section(value, key, line, readers, problems, required=("master", "nodes"))
    if len(problems.items) > before or not {"master", "nodes"} <= fields.keys():
        return None
    return RedisSentinel(**fields)


def redis_url_has_password(url: str) -> bool:
    """Whether a Redis URL carries a password (in its user part or as `?password=`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "@" in url  # malformed: assume the worst
    return password is not None or "password" in parse_qs(parts.query, keep_blank_values=True)


def _redacted_text(text: str) -> str:
    """`text` with whatever precedes its last "@" (a user and password) replaced by ***."""
    if "@" not in text:
        return text
    scheme, separator, rest = text.rpartition("://")
    head = f"{scheme}{separator}" if separator else ""
    return f"{head}***@{(rest if separator else text).rpartition('@')[2]}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://***@{netloc}{parts.path}"


# Query options a Redis URL may carry; TLS and login never come from the URL.
_URL_OPTIONS = frozenset({"db", "socket_timeout", "socket_connect_timeout"})
_REDIS_FILES = ("ca_file", "client_cert_file", "client_key_file")
MAX_REDIS_TIMEOUT_S = 300.0


def _db_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def _timeout_s(text: str) -> bool:
    try:
        seconds = float(text)
    except ValueError:
        return False
    return 0 < seconds <= MAX_REDIS_TIMEOUT_S  # False for nan and inf too


_TIMEOUT_EXPECTED = f"seconds, more than 0 and at most {MAX_REDIS_TIMEOUT_S:g}"
_URL_OPTION_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "db": (_db_number, "an integer from 0 to 65535"),
    "socket_timeout": (_timeout_s, _TIMEOUT_EXPECTED),
    "socket_connect_timeout": (_timeout_s, _TIMEOUT_EXPECTED),
}
_REDIS_CLIENT_KEYS = ("username", "password_env", "sentinel_password_env", *_REDIS_FILES)


def _redis(base: Path | None) -> _Reader:
    """The `redis` section; its files resolve against `base` and must exist now."""
    readers: dict[str, _Reader] = {
        "url": _optional_url,
        "appendfsync": _choice("always", "everysec"),
        "sentinel": _sentinel,
        "username": _text,
        "password_env": _env_name,
        "sentinel_password_env": _env_name,
        "ca_file": _path,
        "client_cert_file": _path,
        "client_key_file": _path,
    }

    def read(value: object, line: int, key: str, problems: Problems) -> Any:
        fields = _section(value, key, line, readers, problems)
        if not isinstance(value, YamlMap):
            return None

        def problem(name: str, shown: object, expected: str) -> None:
            problems.add(value.line_of(name), f"{key}.{name}", shown, expected)

        out: dict[str, Any] = {}
        for name in ("url", "appendfsync", "sentinel", "username"):
            if name in fields:
                out[name] = fields[name]
        for name in ("password", "sentinel_password"):
            variable = fields.get(name)  # `_section` dropped the `_env` suffix
            if variable is None:
                continue
            out[f"{name}_env"] = variable
            secret = os.environ.get(variable)
            if not secret:
                # SECURITY: never fall back to a connection without the password.
                _env_problem(
                    problems,
                    value.line_of(f"{name}_env"),
                    f"{key}.{name}_env",
                    variable,
                    "environment variable {} set, not empty",
                )
            else:
                out[name] = secret
        for name in _REDIS_FILES:
            path: Path | None = fields.get(name)
            if path is None:
                continue
            if base is not None and not path.is_absolute():
                path = base / path
            if not path.is_file():
                problem(name, str(path), "an existing file")
            out[name] = path

        url: str | None = out.get("url")
        if url is not None and "sentinel" in out:
            problem("sentinel", None, "either redis.url or redis.sentinel, not both")
        if url is not None and redis_url_has_password(url):
            # SECURITY: secrets never sit in the file; the redacted URL keeps it off stderr.
            problem(
                "url",
                _redacted(url),
                "a URL without a password: name the environment variable holding it "
                "in redis.password_env",
            )
        options = parse_qs(urlsplit(url).query, keep_blank_values=True) if url else {}
        unknown = sorted(set(options) - _URL_OPTIONS)
        if unknown:
            problem(
                "url",
                _redacted(url) if url and redis_url_has_password(url) else url,
                "URL options only among " + ", ".join(sorted(_URL_OPTIONS)),
            )
        for option, values in sorted(options.items()):
            check = _URL_OPTION_CHECKS.get(option)
            if check is None:
                continue
            if len(values) > 1:
                problem("url", values, f"{option}: given once")
            elif not check[0](values[0]):
                # SECURITY: a timeout of 0, negative or inf would hang or fail every request.
                problem("url", values[0], f"{option}: {check[1]}")
        # An invalid sentinel mapping is reported once, not again by every key that needs it.
        external = url is not None or "sentinel" in value
        for name in _REDIS_CLIENT_KEYS:
            if name in value and not external:
                problem(name, None, "only with redis.url or redis.sentinel (not the embedded)")
        if "sentinel_password_env" in value and url is not None:
            problem("sentinel_password_env", None, "only with redis.sentinel")
        sentinel: RedisSentinel | None = out.get("sentinel")
        tls = (url or "").startswith("rediss://") or (sentinel is not None and sentinel.tls)
        for name in _REDIS_FILES:
            if name in value and ("sentinel" in out or url) and not tls:
                problem(name, None, "only with a rediss:// URL or redis.sentinel.tls: true")
        if ("client_cert_file" in value) != ("client_key_file" in value):
            given = "client_cert_file" if "client_cert_file" in value else "client_key_file"
            missing = "client_key_file" if given == "client_cert_file" else "client_cert_file"
            problems.add(
                value.line_of(given), f"{key}.{missing}", None, f"required with {key}.{given}"
            )
        return RedisConfig(**out)

    return read


# One line of printable text: these go into SMTP commands and mail headers, where a line
# break would end the command or start a header of its own.
_smtp_word = _checked(
    lambda v: isinstance(v, str) and 0 < len(v) <= 320 and v.isprintable(),
    "a non-empty line of printable text",
)

_SMTP_READERS: dict[str, _Reader] = {
    "host": _smtp_word,
    "port": _integer(1, 65535),
    "security": _choice("tls", "starttls", "plain"),
    "username": _smtp_word,
    "password_env": _env_secret,
    "sender": _smtp_word,
}


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_smtp_fields = _nested(Smtp, _SMTP_READERS)


def _smtp(value: object, line: int, key: str, problems: Problems) -> Any:
    smtp: Smtp = _smtp_fields(value, line, key, problems)
    # SECURITY: approval links and the SMTP login never cross a network in clear; plain
    # is for a catcher on this machine (the demo's), nothing else.
    if smtp.security == "plain" and not _is_loopback(smtp.host) and isinstance(value, YamlMap):
        problems.add(
            value.line_of("security"),
            f"{key}.security",
            "plain",
            "tls or starttls for a host other than loopback (plain is for a local catcher only)",
        )
    return smtp


_READERS: dict[str, _Reader] = {
    "console_url": _https_url,
    "data_dir": _path,
    "listeners": _listeners,
    "tls": _nested(TlsFiles, {"cert_file": _path, "key_file": _path, "ca_file": _path}),
    "redis": _redis(None),
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
    "smtp": _smtp,
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
        readers = {**_READERS, "redis": _redis(base)}
        fields = _section(
            doc, "", 1, readers, problems, required=("console_url", "data_dir", "listeners")
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
