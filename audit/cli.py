"""The auditor's commands, runnable without a gateway: `python -m audit …` or `gateway audit …`.

    verify PATH... --keyring FILE [--strict]        exit 0 clean, 1 on any error finding
           [--expect-checkpoint FILE|STREAM:SEQ:H]  the trail must still reach those checkpoints
    checkpoint PATH... [--every-stream]             the newest checkpoint (of every uncited
                                                    stream too), to save for the above
    checkpoint --from-redis                         the newest of every marked stream, likewise
    replay PATH... [filters] [--bodies]             a timeline; --follow watches Redis
    export PATH... --format har|jsonl|ocsf [-o F]   with a progress bar on a terminal
    collect --redis-url URL --segment-dir DIR       Redis stream -> segment files
            [--redis-username U --redis-password-env NAME --redis-ca-file CA
             --redis-client-cert-file CERT --redis-client-key-file KEY]
    keys rotate --dir DIR | keys show --dir DIR     checkpoint signing keys

Filters: --grant ID --actor ID|EMAIL --member ID --org ID --session ID --since T --until T
(T in RFC 3339, e.g. 2026-11-29T09:00:00Z). `add_commands(subparsers, defaults, layout=)`
puts these under any argparse tree; `main(argv)` is the stand-alone entry point.

Where things are (Redis URL, segment directory, key directory, public keyring) comes from,
in order: the command line; a `Layout` (the gateway's CLI reads its config file through
one: `gateway audit verify --config config/gateway.yaml`), asked only for what the command
line left out; then `Defaults`. With a layout, `verify`, `replay` and `export` default to
the segment directory and `verify` to the key directory's keyring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.exceptions import RedisError

from audit.checkpoint import (
    MAX_REFS,
    MAX_REFS_FILE_CHARS,
    CheckpointRef,
    latest_checkpoint,
    parse_refs,
    refs_of_marks,
    uncited_checkpoints,
)
from audit.collector import Collector
from audit.errors import (
    AuditError,
    CheckpointRefError,
    LayoutError,
    SegmentError,
    SigningKeyError,
)
from audit.eviction import eviction_refusal
from audit.export import Replaced, har_document, jsonl_lines, ocsf_lines, to_json
from audit.frame import decode_frame
from audit.keys import KeyDirectory, Keyring
from audit.reader import (
    RecordFilter,
    RequestMerger,
    merge_requests,
    merged_records,
    parse_time,
    read_records,
    record_of,
)
from audit.replay import format_bodies, format_line
from audit.segment import segment_paths
from audit.verify import verify
from audit.writer import FRAME_FIELD, marks_by_stream_key

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Defaults:
    """Where things are when the caller (the gateway's CLI) knows its layout."""

    stream: str = "gw:audit:frames"
    segment_dir: Path = Path("var/audit")
    key_dir: Path = Path("var/audit-keys")
    redis_url: str | None = None
    keyring: Path | None = None  # the public keyring verify uses when none is named
    redis_username: str | None = None
    redis_password_env: str | None = None  # the NAME of the variable holding the password
    redis_ca_file: Path | None = None
    redis_client_cert_file: Path | None = None  # mutual TLS: both or neither
    redis_client_key_file: Path | None = None
    checkpoint_key: str = "gw:audit:last-checkpoint"  # the writer's mark of its last checkpoint


class Layout(Protocol):
    """A deployment's layout, read only once the command line is parsed.

    `add_arguments` adds the options that say where the layout is (e.g. `--config FILE`) to
    every command; `defaults(args)` reads it and raises LayoutError when it cannot.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def defaults(self, args: argparse.Namespace) -> Defaults: ...


# The command-line attributes a layout may fill, with the `Defaults` field each comes from.
_FILLED = {
    "redis_url": "redis_url",
    "stream": "stream",
    "segment_dir": "segment_dir",
    "dir": "key_dir",
    "keyring": "keyring",
    "redis_username": "redis_username",
    "redis_password_env": "redis_password_env",
    "redis_ca_file": "redis_ca_file",
    "redis_client_cert_file": "redis_client_cert_file",
    "redis_client_key_file": "redis_client_key_file",
    "checkpoint_key": "checkpoint_key",
}


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal or when asked."""

    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.records = 0
        self.out = out
        self.enabled = enabled
        self._drawn = -1

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        self.records += 1
        percent = min(100, self.done * 100 // self.total)
        if self.enabled and percent != self._drawn:
            self._drawn = percent
            bar = "#" * (percent // 4) + "." * (25 - percent // 4)
            self.out.write(f"\r[{bar}] {percent:3d}% {self.records} records")
            self.out.flush()

    def finish(self) -> None:
        if self.enabled:
            self.out.write(f"\r[{'#' * 25}] 100% {self.records} records\n")
            self.out.flush()


def add_commands(
    commands: argparse._SubParsersAction[Any],
    defaults: Defaults,
    *,
    layout: Layout | None = None,
) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        if layout is not None:
            layout.add_arguments(parser)
        return parser

    def handle(parser: argparse.ArgumentParser, handler: Handler, *needs: str) -> None:
        parser.set_defaults(handler=_resolving(handler, defaults, layout, needs))

    # Without a layout, segment files and the keyring must be named; with one, they default.
    paths_nargs = "+" if layout is None else "*"
    verify_p = command("verify", "check segment files; exit 1 on tampering")
    verify_p.add_argument("paths", nargs=paths_nargs, type=Path, metavar="PATH")
    verify_p.add_argument("--keyring", type=Path, required=layout is None, help="keyring.json")
    verify_p.add_argument("--strict", action="store_true", help="warnings fail too")
    verify_p.add_argument("--quiet", action="store_true", help="print only the summary")
    verify_p.add_argument(
        "--expect-checkpoint",
        action="append",
        default=[],
        metavar="FILE|STREAM:SEQ:H",
        help="checkpoints saved earlier (`checkpoint` prints them, one per line) or one "
        "checkpoint's value: the trail must still reach each",
    )
    handle(verify_p, _verify, "paths", "keyring")

    checkpoint_p = command(
        "checkpoint", "print the newest checkpoint (of every stream with --from-redis)"
    )
    checkpoint_p.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    checkpoint_p.add_argument(
        "--from-redis",
        action="store_true",
        help="the newest checkpoint of every stream the gateway marked, collected or not "
        "(from Redis), one line each",
    )
    checkpoint_p.add_argument(
        "--every-stream",
        action="store_true",
        help="from files: also the newest checkpoint of every stream no genesis cites, "
        "one line each (--from-redis always prints every marked stream)",
    )
    _redis_arguments(checkpoint_p)
    checkpoint_p.add_argument("--checkpoint-key", help="the Redis key of the writer's mark")
    handle(checkpoint_p, _checkpoint)  # needs depend on --from-redis: see _resolving

    replay_p = command("replay", "a readable timeline of a grant or session")
    replay_p.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    _filters(replay_p)
    replay_p.add_argument("--bodies", action="store_true", help="show captured bodies")
    replay_p.add_argument("--follow", action="store_true", help="watch the live Redis stream")
    replay_p.add_argument("--from-start", action="store_true", help="with --follow: from 0")
    _redis_arguments(replay_p)
    replay_p.add_argument("--stream", help="the Redis stream key")
    handle(replay_p, _replay)  # needs depend on --follow: see _resolving

    export_p = command("export", "HAR 1.2, JSON Lines (ECS) or OCSF 6003")
    export_p.add_argument("paths", nargs=paths_nargs, type=Path, metavar="PATH")
    export_p.add_argument("--format", choices=("har", "jsonl", "ocsf"), required=True)
    export_p.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")
    export_p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    _filters(export_p)
    handle(export_p, _export, "paths")

    collect_p = command("collect", "move frames from Redis to segment files")
    _redis_arguments(collect_p)
    collect_p.add_argument("--stream", help="the Redis stream key")
    collect_p.add_argument("--segment-dir", type=Path)
    collect_p.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
    collect_p.add_argument("--once", action="store_true", help="collect what is there, exit")
    collect_p.add_argument("--batch", type=_positive, default=1000)
    collect_p.add_argument("--claim-idle-ms", type=_non_negative, default=30_000)
    collect_p.add_argument("--max-segment-bytes", type=_positive, default=64 * 1024 * 1024)
    collect_p.add_argument("--max-segment-age-s", type=_positive, default=3600)
    collect_p.add_argument("--no-trim", action="store_true", help="never XTRIM the stream")
    handle(collect_p, _collect, "redis_url", "segment_dir")

    keys_p = commands.add_parser("keys", help="checkpoint signing keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_sub.add_parser("rotate", help="new signing key; the old one's window ends")
    rotate.add_argument("--dir", type=Path)
    rotate.add_argument("--keep-old-private", action="store_true")
    show = keys_sub.add_parser("show", help="print the public keyring (give it to auditors)")
    show.add_argument("--dir", type=Path)
    for parser in (rotate, show):
        if layout is not None:
            layout.add_arguments(parser)
    handle(rotate, _keys_rotate, "dir")
    handle(show, _keys_show, "dir")


def _resolving(
    handler: Handler, defaults: Defaults, layout: Layout | None, needs: tuple[str, ...]
) -> Handler:
    """`handler`, run once what the command line left out is filled in (see the docstring)."""

    def run(args: argparse.Namespace) -> int:
        if "follow" in args or "from_redis" in args:
            # replay and checkpoint read Redis with --follow / --from-redis, files without
            live = args.follow if "follow" in args else args.from_redis
            needs_now: tuple[str, ...] = ("redis_url",) if live else ("paths",)
        else:
            needs_now = needs
        wanted = [n for n in needs_now if _unset(args, n)]
        found = defaults
        # The layout is read only when the command needs something from it, so that a
        # command whose every place is given on the command line never depends on it.
        if layout is not None and wanted:
            try:
                found = layout.defaults(args)
            except LayoutError as exc:
                print(f"{exc}", file=sys.stderr)
                return 2
            if "paths" in wanted:
                args.paths = [found.segment_dir]
        for attr, field in _FILLED.items():
            if attr in args and getattr(args, attr) is None:
                setattr(args, attr, getattr(found, field))
        if "keyring" in args and args.keyring is None:
            print("verify needs --keyring (the public keyring.json)", file=sys.stderr)
            return 2
        return handler(args)

    return run


def _redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="redis://, rediss:// or unix:// (no password)")
    parser.add_argument("--redis-username", help="the Redis ACL user")
    parser.add_argument(
        "--redis-password-env",
        metavar="NAME",
        help="the environment variable holding the Redis password (never on the command line)",
    )
    parser.add_argument(
        "--redis-ca-file", type=Path, help="trust this CA for a rediss:// server certificate"
    )
    parser.add_argument(
        "--redis-client-cert-file",
        type=Path,
        metavar="CERT",
        help="with --redis-client-key-file: the client certificate for mutual TLS",
    )
    parser.add_argument(
        "--redis-client-key-file", type=Path, metavar="KEY", help="the client certificate's key"
    )


def _redis(args: argparse.Namespace) -> aioredis.Redis:
    """The client for the audit stream's Redis; LayoutError when its options cannot work.

    TLS options in the URL are dropped: a rediss:// server's certificate and host name are
    always verified, against --redis-ca-file when given.
    """
    url: str = args.redis_url
    tls = url.startswith("rediss://")
    try:
        options: dict[str, Any] = {
            k: v for k, v in parse_url(url).items() if not k.startswith("ssl")
        }
    except ValueError as exc:
        raise LayoutError(f"--redis-url {url!r}: {exc}") from exc
    if args.redis_username:
        options["username"] = args.redis_username
    name = args.redis_password_env
    if name:
        secret = os.environ.get(name)
        if not secret:
            # SECURITY: never fall back to a connection without the password.
            raise LayoutError(f"--redis-password-env: environment variable {name} is not set")
        options["password"] = secret
    ca_file: Path | None = args.redis_ca_file
    if ca_file is not None and not tls:
        raise LayoutError("--redis-ca-file needs a rediss:// URL")
    if ca_file is not None and not ca_file.is_file():
        raise LayoutError(f"--redis-ca-file: no such file: {ca_file}")
    cert_file, key_file = _client_certificate(args, tls)
    if tls:
        options.update(
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            ssl_check_hostname=True,
            ssl_min_version=ssl.TLSVersion.TLSv1_2,
            ssl_ca_certs=str(ca_file) if ca_file else None,
            ssl_certfile=str(cert_file) if cert_file else None,
            ssl_keyfile=str(key_file) if key_file else None,
        )
    return aioredis.Redis.from_pool(ConnectionPool(**options))


def _connect(args: argparse.Namespace, command: str, no_url: str) -> aioredis.Redis | None:
    """The Redis client `args` describe, or None once stderr says why there is none
    (`no_url` when no URL is given); the command then exits 2."""
    if not args.redis_url:
        print(no_url, file=sys.stderr)
        return None
    try:
        return _redis(args)
    except LayoutError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def _client_certificate(args: argparse.Namespace, tls: bool) -> tuple[Path | None, Path | None]:
    """The mutual-TLS certificate and key to present, checked; LayoutError when unusable."""
    cert_file: Path | None = args.redis_client_cert_file
    key_file: Path | None = args.redis_client_key_file
    if cert_file is None and key_file is None:
        return None, None
    if cert_file is None or key_file is None:
        raise LayoutError("give both --redis-client-cert-file and --redis-client-key-file")
    if not tls:
        raise LayoutError(
            "--redis-client-cert-file and --redis-client-key-file need a rediss:// URL"
        )
    for flag, path in (("cert", cert_file), ("key", key_file)):
        if not path.is_file():
            raise LayoutError(f"--redis-client-{flag}-file: no such file: {path}")
    return cert_file, key_file


def _unset(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name, None)
    return value is None or value == []


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 time: {exc}") from exc


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grant")
    parser.add_argument("--actor", help="actor id or email")
    parser.add_argument("--member", help="customer member acted as")
    parser.add_argument("--org")
    parser.add_argument("--session", help="console session id or its reference")
    parser.add_argument("--since", type=_time)
    parser.add_argument("--until", type=_time)


def _filter_of(args: argparse.Namespace) -> RecordFilter:
    return RecordFilter(
        grant=args.grant,
        actor=args.actor,
        member=args.member,
        org=args.org,
        session=args.session,
        since=args.since,
        until=args.until,
    )


def _missing(paths: Sequence[Path]) -> bool:
    """Say on stderr which of `paths` do not exist; True when any does not."""
    missing = [p for p in paths if not _exists(p)]
    if missing:
        print(f"no such file: {', '.join(map(str, missing))}", file=sys.stderr)
    return bool(missing)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name the system cannot take (too long): no such file either
        return False


# -- verify --------------------------------------------------------------------------------
def _verify(args: argparse.Namespace) -> int:
    if _missing(args.paths):
        return 2
    try:
        keyring = Keyring.load(args.keyring)
    except SigningKeyError as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    if not segment_paths(args.paths):
        print(
            f"verify: no segment files (*.seg) in {', '.join(map(str, args.paths))}",
            file=sys.stderr,
        )
        return 2
    try:
        expected = [ref for text in args.expect_checkpoint for ref in _expected_checkpoints(text)]
    except CheckpointRefError as exc:
        print(f"verify: --expect-checkpoint: {exc}", file=sys.stderr)
        return 2
    report = verify(args.paths, keyring, expect=expected)
    if not args.quiet:
        for finding in report.findings:
            print(finding)
    print(report.summary())
    return 0 if report.ok(strict=args.strict) else 1


def _expected_checkpoints(text: str) -> list[CheckpointRef]:
    """Saved checkpoints: the file `text` names (as `checkpoint` printed it), or the value."""
    path = Path(text)
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long for a path: then it is a value, or nothing
        is_file = False
    if not is_file:
        return [CheckpointRef.parse(text)]
    try:
        with open(path, encoding="utf-8") as handle:
            # One more character than a file may hold, so that a longer file is refused
            # without reading it all.
            content = handle.read(MAX_REFS_FILE_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointRefError(f"{path}: cannot read: {exc}") from exc
    try:
        return parse_refs(content)
    except CheckpointRefError as exc:
        raise CheckpointRefError(f"{path}: {exc}") from exc


def _checkpoint(args: argparse.Namespace) -> int:
    if args.from_redis:
        return _checkpoint_from_redis(args)
    if not args.paths:
        print("checkpoint: give segment files or directories, or --from-redis", file=sys.stderr)
        return 2
    if _missing(args.paths):
        return 2
    then = (
        "later: verify --expect-checkpoint FILE "
        "(run verify now: this command does not check signatures)"
    )
    if args.every_stream:
        try:
            refs = uncited_checkpoints(args.paths)
        except CheckpointRefError as exc:
            print(f"checkpoint: {', '.join(map(str, args.paths))}: {exc}", file=sys.stderr)
            return 1
        return _print_checkpoints(refs, then)
    found = latest_checkpoint(args.paths)
    if found is None:
        print(f"checkpoint: no checkpoint in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    return _print_checkpoints([found], then)


def _checkpoint_from_redis(args: argparse.Namespace) -> int:
    client = _connect(args, "checkpoint", "checkpoint --from-redis needs --redis-url")
    if client is None:
        return 2

    by_stream_key = marks_by_stream_key(args.checkpoint_key)

    async def read() -> tuple[object, dict[object, object]]:
        try:
            # The count first, so that a hostile hash is refused before it is fetched.
            if await client.hlen(by_stream_key) > MAX_REFS:
                raise CheckpointRefError(
                    f"{by_stream_key}: more than {MAX_REFS} streams are marked"
                )
            # One transaction, so that the newest mark and the hash are read at one instant.
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(args.checkpoint_key)
                pipe.hgetall(by_stream_key)
                newest, marks = await pipe.execute()
            return newest, marks
        finally:
            await client.aclose()

    try:
        newest, marks = asyncio.run(read())
        found = refs_of_marks(newest, marks)
    except (RedisError, OSError) as exc:
        print(f"checkpoint: the audit stream is unreachable: {exc}", file=sys.stderr)
        return 1
    except CheckpointRefError as exc:
        print(f"checkpoint: {args.checkpoint_key}: {exc}", file=sys.stderr)
        return 1
    return _print_checkpoints(found, "once collected: verify --expect-checkpoint FILE")


def _print_checkpoints(found: Sequence[CheckpointRef], then: str) -> int:
    """Print `found` as the lines an auditor saves, and on stderr what to do with them."""
    for ref in found:
        print(ref.to_json())
    print(f"save this outside the trail; {then}", file=sys.stderr)
    return 0


# -- replay --------------------------------------------------------------------------------
def _replay(args: argparse.Namespace) -> int:
    wanted = _filter_of(args)
    if args.follow:
        client = _connect(args, "replay", "replay --follow needs --redis-url")
        if client is None:
            return 2
        try:
            asyncio.run(_follow(client, args.stream, wanted, args.bodies, args.from_start))
        except KeyboardInterrupt:
            return 0
        except (RedisError, OSError) as exc:
            print(f"replay: the audit stream is unreachable: {exc}", file=sys.stderr)
            return 1
        return 0
    if not args.paths:
        print("replay: give segment files or directories, or --follow", file=sys.stderr)
        return 2
    if _missing(args.paths):
        return 2
    shown = 0
    for body in merge_requests(read_records(args.paths)):
        if wanted.matches(body):
            _show(body, args.bodies)
            shown += 1
    print(f"{shown} record(s)", file=sys.stderr)
    return 0


def _show(body: dict[str, Any], bodies: bool) -> None:
    print(format_line(body))
    if bodies:
        for line in format_bodies(body):
            print(line)
    sys.stdout.flush()


async def _follow(
    client: aioredis.Redis, key: str, wanted: RecordFilter, bodies: bool, from_start: bool
) -> None:
    merger = RequestMerger()
    last = "0-0"
    if not from_start:
        # "$" would skip whatever arrives between two XREADs: start after the newest id.
        newest: Any = await client.xrevrange(key, count=1)
        if newest:
            last = _text(newest[0][0])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            reply: Any = await client.xread({key: last}, count=500, block=1000)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    data = fields.get(FRAME_FIELD)
                    if not isinstance(data, bytes):
                        continue
                    try:
                        record = record_of(decode_frame(data))
                    except AuditError:
                        continue
                    merged = merger.add(record) if record is not None else None
                    if merged is not None and wanted.matches(merged.body):
                        _show(merged.body, bodies)
    finally:
        await client.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- export --------------------------------------------------------------------------------
def _export(args: argparse.Namespace) -> int:
    if _missing(args.paths):
        return 2
    wanted = _filter_of(args)
    total = sum(p.stat().st_size for p in segment_paths(args.paths))
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = Progress(total, sys.stderr, enabled)
    records = (
        r
        for r in merged_records(read_records(args.paths, progress=progress))
        if wanted.matches(r.body)
    )
    replaced: list[Replaced] = []
    out: TextIO
    with contextlib.ExitStack() as stack:
        if args.output is not None:
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        else:
            out = sys.stdout
        count = 0
        if args.format == "har":
            document = har_document(records, replaced)
            out.write(to_json(document, indent=1, ensure_ascii=False))
            out.write("\n")
            count = len(document["log"]["entries"])
        else:
            lines = (
                jsonl_lines(records, replaced)
                if args.format == "jsonl"
                else ocsf_lines(records, replaced)
            )
            for line in lines:
                out.write(line)
                count += 1
    progress.finish()
    for item in replaced:
        print(f"export: replaced by a placeholder: {item}", file=sys.stderr)
    print(
        f"exported {count} {args.format} record(s), {len(replaced)} replaced by a placeholder",
        file=sys.stderr,
    )
    return 0


# -- collect -------------------------------------------------------------------------------
def _collect(args: argparse.Namespace) -> int:
    client = _connect(
        args,
        "collect",
        "collect needs --redis-url (the gateway's is unix://<data_dir>/redis/redis.sock)",
    )
    if client is None:
        return 2
    try:
        return asyncio.run(_collect_async(args, client))
    except (RedisError, OSError, SegmentError) as exc:
        print(f"collect: {exc}", file=sys.stderr)
        return 1


async def _collect_async(args: argparse.Namespace, client: aioredis.Redis) -> int:
    collector = Collector(
        client,
        stream=args.stream,
        segment_dir=args.segment_dir,
        consumer=args.consumer,
        now=time.time,
        batch=args.batch,
        claim_idle_ms=args.claim_idle_ms,
        max_segment_bytes=args.max_segment_bytes,
        max_segment_age_s=float(args.max_segment_age_s),
        trim=not args.no_trim,
    )
    try:
        # SECURITY: a Redis that may evict keys could drop frames before they are collected.
        refusal = await eviction_refusal(client)
        if refusal is not None:
            print(f"collect: {refusal}", file=sys.stderr)
            return 1
        if args.once:
            written = await collector.run_once()
            print(
                f"collected {written} frame(s), skipped {collector.skipped} already stored",
                file=sys.stderr,
            )
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await collector.run(stop)
    finally:
        await client.aclose()
    for stream, start, end in collector.gaps():
        print(f"gap: stream {stream} lacks seq {start}..{end}", file=sys.stderr)
    if collector.lost:
        print(
            f"gap: {collector.lost} frame(s) lost: deleted from the stream before stored",
            file=sys.stderr,
        )
    if collector.forks:
        print(
            f"fork: {collector.forks} frame(s) stored beside a stored frame of the same seq "
            "with other bytes; verify reports them as seq_fork",
            file=sys.stderr,
        )
    return 0


# -- keys ----------------------------------------------------------------------------------
def _keys_rotate(args: argparse.Namespace) -> int:
    try:
        key = KeyDirectory(args.dir).rotate(time.time(), keep_old_private=args.keep_old_private)
    except (SigningKeyError, OSError) as exc:
        print(f"keys rotate: {exc}", file=sys.stderr)
        return 1
    print(f"new signing key {key.key_id}; public keyring: {args.dir / 'keyring.json'}")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    try:
        ring = KeyDirectory(args.dir).keyring()
    except SigningKeyError as exc:
        print(f"keys show: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(ring.to_json())
    return 0


def build_parser(defaults: Defaults | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audit", description=__doc__.split("\n")[0])
    add_commands(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
        defaults or Defaults(),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
