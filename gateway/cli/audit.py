"""`gateway audit verify|replay|export|collect|keys`: the auditor's commands.

The logic lives in `audit.cli` (it runs without the gateway as `python -m audit`); this
module only supplies the gateway's layout: the stream key from `gateway.keys`, the
segment and key directories under the data directory, and the embedded Redis socket.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from audit.cli import Defaults, add_commands
from gateway import keys


def register(commands: argparse._SubParsersAction[Any]) -> None:
    audit = commands.add_parser("audit", help="verify, replay and export the audit trail")
    data_dir = Path("var")
    defaults = Defaults(
        stream=keys.audit_stream(),
        segment_dir=data_dir / "audit",
        key_dir=data_dir / "audit-keys",
        redis_url=f"unix://{(data_dir / 'redis' / 'redis.sock').resolve()}",
    )
    add_commands(
        audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION"), defaults
    )
