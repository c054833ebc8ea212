"""Replay and verify output on a terminal: record content is shown, never obeyed."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.keys import Keyring, SigningKey
from audit.record import BodyCapture
from audit.replay import format_bodies, format_line
from audit.verify import verify
from tests.audit.chains import build_chain, write_segment
from tests.audit.conftest import bare_http_record

# What a hostile client or a forger could put in a record to rewrite what an auditor sees:
# erase the previous line, set the window title, a bidi override, a C1 control.
HOSTILE = ["\x1b[1A\x1b[2K", "\x1b]0;owned\x07", "\u202e", "\x9b2J", "\x08\x7f"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_replay_escapes_control_characters_in_record_content(hostile: str) -> None:
    body = bare_http_record(
        "attempt",
        method="POST",
        path=f"/a{hostile}b",
        request_body=BodyCapture(f"x{hostile}y\nsecond{hostile}".encode(), "text/plain", 20),
    )
    line = format_line(dict(body))
    assert hostile not in line
    assert line.isprintable()
    bodies = format_bodies(dict(body))
    assert len(bodies) == 3  # the header line and the body's two lines
    assert all(line.isprintable() for line in bodies)
    assert hostile not in "".join(bodies)
    assert "second" in bodies[2]


def test_replay_of_an_event_escapes_its_reason() -> None:
    body = {"record": "workflow", "@timestamp": "t", "event": {"action": "a\x1b[2Kb"}}
    line = format_line(body)
    assert "\x1b" not in line
    assert line.isprintable()


def test_verify_findings_escape_a_forged_citation(
    tmp_path: Path, keyring: Keyring, signer: SigningKey
) -> None:
    cited = {"stream": "s\x1b[1A\x1b[2K", "seq": 1, "h": bytes(32)}
    frames = build_chain("20261129T000000Z-aa", [], signer, 1.0, previous=cited)
    report = verify([write_segment(tmp_path / "forged.seg", frames)], keyring)
    assert "cited_stream_absent" in report.codes()
    for finding in report.findings:
        assert "\x1b" not in str(finding)
        assert str(finding).isprintable()
