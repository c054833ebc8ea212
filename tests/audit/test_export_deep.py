"""Exports of a trail holding a forged record nested about a thousand levels deep: that
record is replaced by a placeholder naming it, and every other record is still exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from audit.cli import main
from audit.export import (
    PLACEHOLDER_CODE,
    Replaced,
    har_document,
    jsonl_lines,
    ocsf_lines,
    to_json,
)
from audit.frame import Frame, map_header
from audit.reader import Record, merged_records
from audit.record import MAX_DEPTH, too_deep
from tests.audit.chains import read_frames, rechain, write_segment
from tests.audit.test_export import check_har

# Deeper than Python's recursion limit, within what msgpack decodes (about 1024 levels).
DEPTH = 1000


def _deep_map(depth: int) -> bytes:
    """msgpack of {"a": {"a": … 1}} `depth` maps deep, packed by hand: msgpack's own packer
    refuses to nest that far, a forger's need not."""
    nested: bytes = (map_header(1) + msgpack.packb("a")) * depth + msgpack.packb(1)
    return nested


def _forged_body(record: str, request_id: str, where: str) -> bytes:
    """An http record whose `gateway.<where>` is nested DEPTH levels deep."""
    head = {
        "record": record,
        "@timestamp": "2026-11-29T09:14:03.120Z",
        "event": {"id": request_id},
        "url": {"domain": "acme.gateway.example", "path": "/forged"},
        "http": {"request": {"method": "GET"}},
    }
    body = map_header(len(head) + 1)
    for key, value in head.items():
        body += msgpack.packb(key) + msgpack.packb(value)
    tail: bytes = msgpack.packb("gateway") + map_header(1) + msgpack.packb(where)
    return body + tail + _deep_map(DEPTH)


def _forged_record(seq: int, record: str = "http.outcome", where: str = "redactions") -> Record:
    frame = Frame.seal("s-forged", seq, bytes(32), _forged_body(record, f"f{seq}", where))
    return Record(frame.stream, frame.seq, frame.decode_body())


def _fine_record(seq: int) -> Record:
    body: dict[str, Any] = {
        "record": "http.outcome",
        "@timestamp": "2026-11-29T09:15:00.000Z",
        "event": {"id": f"ok{seq}"},
        "url": {"domain": "acme.gateway.example", "path": f"/ok/{seq}"},
        "http": {"request": {"method": "GET"}, "response": {"status_code": 200}},
    }
    return Record("s-fine", seq, body)


def test_depth_is_measured_without_recursion() -> None:
    deep = _forged_record(3).body
    assert too_deep(deep)
    assert not too_deep(_fine_record(1).body)
    nested: Any = 1
    for _ in range(MAX_DEPTH):
        nested = [nested]
    assert not too_deep(nested)
    assert too_deep([nested])
    with pytest.raises(RecursionError):
        json.dumps(deep)  # what the exports used to do with it


@pytest.mark.parametrize("where", ["redactions", "decision", "route", "grant"])
def test_every_export_replaces_only_the_deep_record(where: str) -> None:
    records = [_fine_record(1), _forged_record(7, where=where), _fine_record(2)]

    replaced: list[Replaced] = []
    har = json.loads(to_json(har_document(records, replaced), indent=1))
    check_har(har)
    entries = har["log"]["entries"]
    forged = [e for e in entries if e["_gateway"].get("error") == PLACEHOLDER_CODE]
    assert len(forged) == 1
    assert forged[0]["_gateway"]["stream"] == "s-forged"
    assert forged[0]["_gateway"]["seq"] == 7
    assert "stream s-forged seq 7: nested more than" in forged[0]["_gateway"]["reason"]
    assert len(entries) == 3
    assert replaced == [Replaced("s-forged", 7, f"nested more than {MAX_DEPTH} levels deep")]

    replaced = []
    lines = [json.loads(line) for line in jsonl_lines(records, replaced)]
    assert [line.get("gateway", {}).get("seq") for line in lines] == [None, 7, None]
    assert lines[1]["error"]["code"] == PLACEHOLDER_CODE
    assert "stream s-forged seq 7" in lines[1]["error"]["message"]
    assert lines[0]["url"]["path"] == "/ok/1"
    assert lines[2]["url"]["path"] == "/ok/2"
    assert len(replaced) == 1

    replaced = []
    events = [json.loads(line) for line in ocsf_lines(records, replaced)]
    assert [e["status"] for e in events] == ["Success", "Unknown", "Success"]
    assert events[1]["class_uid"] == 6003
    assert events[1]["unmapped"]["gateway.export.seq"] == 7
    assert "stream s-forged seq 7" in events[1]["status_detail"]
    assert len(replaced) == 1


def test_a_deep_attempt_and_outcome_of_one_request_merge() -> None:
    # Both records of one request nested deep at the same place: the merge walks both.
    attempt = _forged_record(1, record="http.attempt")
    outcome = _forged_record(2)
    outcome = Record(outcome.stream, outcome.seq, {**outcome.body, "event": {"id": "f1"}})
    merged = list(merged_records([attempt, outcome, _fine_record(3)]))
    assert [(r.stream, r.seq) for r in merged] == [("s-forged", 2), ("s-fine", 3)]
    assert merged[0].body["record"] == "http.outcome"
    replaced: list[Replaced] = []
    assert len(list(jsonl_lines(merged, replaced))) == 2
    assert [(r.stream, r.seq) for r in replaced] == [("s-forged", 2)]


@pytest.mark.parametrize("fmt", ["har", "jsonl", "ocsf"])
def test_the_export_command_goes_on_and_counts_replacements(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fine request, then a forged one spliced into the chain as a forger would.
    fine = Frame.seal("s1", 0, bytes(32), msgpack.packb(_fine_record(0).body))
    forged = Frame.seal("s1", 1, fine.h, _forged_body("http.outcome", "f1", "redactions"))
    after = Frame.seal("s1", 2, forged.h, msgpack.packb(_fine_record(2).body))
    segment = write_segment(tmp_path / "forged.seg", rechain([fine, forged, after], 0))
    assert len(read_frames(segment)) == 3
    out = tmp_path / f"trail.{fmt}"
    assert main(["export", str(segment), "--format", fmt, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "replaced by a placeholder: stream s1 seq 1: nested more than" in err
    assert f"exported 3 {fmt} record(s), 1 replaced by a placeholder" in err
    text = out.read_text()
    assert "/ok/0" in text
    assert "/ok/2" in text
    assert "stream s1 seq 1" in text
