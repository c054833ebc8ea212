"""`gateway assertion rotate|show`: the identity-assertion signing keys (ES256, `kid`).

    gateway assertion rotate [--config FILE | --dir DIR] [--keep N]
    gateway assertion show   [--config FILE | --dir DIR]       # the published JWK Set

The keys live in `<data_dir>/keys` of the gateway config (`--config`, default
config/gateway.yaml); `--dir` names the directory directly and wins. A rotation adds a key
that signs from the next start of each gateway and keeps the newest `--keep` keys
published in `/.gateway/jwks.json`, so that assertions signed just before it still verify.
When GATEWAY_ASSERTION_KEYS is set the gateway reads its keys from there, not from disk:
rotation is then refused (rotate them where that variable is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.assertion import ENV_KEYS, KEEP_KEYS, load_signer, rotate
from gateway.cli.configfile import load_config_or_report
from gateway.errors import KeyMaterialError

DEFAULT_CONFIG = Path("config/gateway.yaml")
ISSUER_UNKNOWN = "gateway"  # `show` only lists public keys: no token is signed


def register(commands: argparse._SubParsersAction[Any]) -> None:
    assertion = commands.add_parser("assertion", help="identity-assertion signing keys")
    sub = assertion.add_subparsers(dest="assertion_command", required=True, metavar="ACTION")
    rotate_p = sub.add_parser("rotate", help="add a new signing key; keep the newest published")
    _where(rotate_p)
    rotate_p.add_argument(
        "--keep",
        type=int,
        default=KEEP_KEYS,
        help=f"published keys to keep, the new one included (default {KEEP_KEYS}, at least 2)",
    )
    rotate_p.set_defaults(handler=_rotate)
    show = sub.add_parser("show", help="print the published JWK Set")
    _where(show)
    show.set_defaults(handler=_show)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the gateway config naming the data directory (default {DEFAULT_CONFIG})",
    )
    parser.add_argument("--dir", type=Path, help="the key directory itself (wins over --config)")


def _key_dir(args: argparse.Namespace) -> Path | None:
    if args.dir is not None:
        return Path(args.dir)
    config = load_config_or_report(args.config)
    if config is None:
        print(
            f"cannot read the gateway config {args.config} (name it with --config, or the "
            f"key directory with --dir)",
            file=sys.stderr,
        )
        return None
    return config.data_dir / "keys"


def _rotate(args: argparse.Namespace) -> int:
    if os.environ.get(ENV_KEYS):
        print(
            f"{ENV_KEYS} is set: the gateway takes its assertion keys from it, not from disk; "
            "rotate them there",
            file=sys.stderr,
        )
        return 1
    if args.keep < 2:
        print(
            f"--keep {args.keep}: keep at least the new key and the previous one", file=sys.stderr
        )
        return 2
    directory = _key_dir(args)
    if directory is None:
        return 2
    try:
        key = rotate(directory, keep=args.keep)
        published = [
            k["kid"]
            for k in load_signer(directory, issuer=ISSUER_UNKNOWN, create=False).jwks()["keys"]
        ]
    except (KeyMaterialError, OSError) as exc:
        print(f"assertion rotate: {exc}", file=sys.stderr)
        return 1
    print(
        f"new assertion signing key {key.kid} in {directory}; published: "
        f"{', '.join(published)} (gateways sign with it from their next start)"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    directory = _key_dir(args)
    if directory is None:
        return 2
    try:
        signer = load_signer(directory, issuer=ISSUER_UNKNOWN, create=False)
    except (KeyMaterialError, OSError) as exc:
        print(f"assertion show: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(signer.jwks(), indent=1))
    return 0
