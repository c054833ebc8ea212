"""Exports and the auditor's commands, run as an auditor would: on segment files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from audit.cli import main
from audit.export import har_document, jsonl_lines, ocsf_lines, to_json
from audit.reader import Record
from gateway.clock import ManualClock
from tests.audit.chains import read_frames, with_body, write_segment
from tests.audit.conftest import WriterFactory, collect, request_pair, write_session


@pytest.fixture
async def segments(
    redis: aioredis.Redis, make_writer: WriterFactory, clock: ManualClock, tmp_path: Path
) -> Path:
    writer = await make_writer(checkpoint_every_frames=10)
    await write_session(writer, clock, requests=4)
    denied = request_pair(99, clock.now(), grant="g2", status=403)[1]
    denied.update(record="http.denial", error={"code": "grant_expired", "message": "expired"})
    await writer.append(denied)
    await writer.append(request_pair(7, clock.now(), grant="g3")[0])  # never answered
    await writer.close()
    await collect(redis, tmp_path / "seg")
    return tmp_path / "seg"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pairs(items: Any, where: str) -> None:
    assert isinstance(items, list), where
    for item in items:
        assert isinstance(item, dict), where
        assert isinstance(item.get("name"), str), where
        assert isinstance(item.get("value"), str), where


def check_har(doc: Any) -> None:
    """The HAR 1.2 structure (http://www.softwareishard.com/blog/har-12-spec/)."""
    log = doc["log"]
    assert log["version"] == "1.2"
    assert isinstance(log["creator"]["name"], str)
    assert isinstance(log["creator"]["version"], str)
    assert log["pages"] == []
    for entry in log["entries"]:
        assert "pageref" not in entry
        started = datetime.fromisoformat(entry["startedDateTime"].replace("Z", "+00:00"))
        assert started.tzinfo is not None
        request, response, timings = entry["request"], entry["response"], entry["timings"]
        assert isinstance(request["method"], str)
        assert request["url"].startswith("https://")
        assert isinstance(request["httpVersion"], str)
        assert request["cookies"] == []
        _pairs(request["headers"], "request.headers")
        _pairs(request["queryString"], "request.queryString")
        assert isinstance(request["headersSize"], int)
        assert isinstance(request["bodySize"], int)
        if "postData" in request:
            assert isinstance(request["postData"]["mimeType"], str)
            assert isinstance(request["postData"]["text"], str)
        assert isinstance(response["status"], int)
        assert isinstance(response["statusText"], str)
        assert isinstance(response["httpVersion"], str)
        _pairs(response["headers"], "response.headers")
        assert isinstance(response["content"]["size"], int)
        assert isinstance(response["content"]["mimeType"], str)
        assert isinstance(response["redirectURL"], str)
        assert isinstance(response["headersSize"], int)
        assert isinstance(response["bodySize"], int)
        assert isinstance(entry["cache"], dict)
        for name in ("send", "wait", "receive"):
            assert _number(timings[name])
            assert timings[name] >= 0
        for name in ("blocked", "dns", "connect", "ssl"):
            assert _number(timings[name])
            assert timings[name] >= -1
        phases = sum(v for k, v in timings.items() if v > 0 and k != "ssl")
        assert entry["time"] == pytest.approx(phases)


def test_har_export_has_the_har_1_2_structure(
    segments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trail.har"
    assert main(["export", str(segments), "--format", "har", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    check_har(doc)
    entries = doc["log"]["entries"]
    assert len(entries) == 6
    first = entries[0]
    assert first["request"]["url"] == "https://acme.gateway.example/invoices/0?page=2"
    assert first["request"]["queryString"] == [{"name": "page", "value": "2"}]
    assert first["response"]["status"] == 200
    assert first["time"] == pytest.approx(12.5)
    assert first["_gateway"]["member"] == "bob"
    assert "[redacted:" in json.dumps(first["request"]["headers"])
    assert "hunter2" not in out.read_text()
    assert "exported 6 har record(s), 0 replaced" in capsys.readouterr().err


def test_jsonl_and_ocsf_exports(segments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(segments), "--format", "jsonl", "--grant", "g1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["record"] for d in lines] == ["workflow"] + ["http.outcome"] * 4 + ["workflow"]
    assert lines[1]["user"]["effective"]["id"] == "bob"
    assert lines[1]["http"]["response"]["status_code"] == 200
    assert main(["export", str(segments), "--format", "ocsf"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == 6
    for event in events:
        assert event["class_uid"] == 6003
        assert event["category_uid"] == 6
        assert event["type_uid"] == 600300 + event["activity_id"]
        assert isinstance(event["time"], int)
        assert event["actor"]["user"]["uid"] == "sam"
        assert event["metadata"]["version"]
    denial = next(e for e in events if e["unmapped"].get("gateway.grant.id") == "g2")
    assert denial["status_id"] == 2
    assert denial["api"]["response"]["error"] == "grant_expired"
    assert events[0]["resources"] == [{"type": "user", "uid": "bob", "group": {"uid": "acme"}}]


def test_export_progress_bar(segments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(segments), "--format", "jsonl", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "100%" in err
    assert "records" in err


def test_replay_timeline_filters(segments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(segments), "--grant", "g1", "--bodies"]) == 0
    out = capsys.readouterr().out.splitlines()
    requests = [line for line in out if "/invoices/" in line]
    assert len(requests) == 4
    assert "sam as acme/bob  grant g1  GET /invoices/0?page=2  200  12.5 ms  17 B" in requests[0]
    assert any("request body [application/json" in line for line in out)
    assert "workflow grant.revoked  by alice (acme)  grant g1" in out[-1]
    assert main(["replay", str(segments), "--member", "nobody"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["replay", str(segments), "--session", "console-session-1", "--grant", "g2"]) == 0
    assert "DENIED grant_expired: expired" in capsys.readouterr().out
    assert main(["replay", str(segments), "--since", "2099-01-01T00:00:00Z"]) == 0
    assert capsys.readouterr().out == ""


def test_verify_command_exit_codes(
    segments: Path, keyring_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(segments), "--keyring", str(keyring_file)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    frames = read_frames(segments)
    frames[3] = with_body(frames[3], frames[3].body.replace(b"invoices", b"invoicez", 1))
    bad = write_segment(tmp_path / "bad.seg", frames)
    assert main(["verify", str(bad), "--keyring", str(keyring_file)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}#3: error: hash_mismatch: stream {frames[3].stream} seq 3" in out
    assert main(["verify", str(tmp_path / "missing.seg"), "--keyring", str(keyring_file)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "--keyring", str(keyring_file)]) == 2
    assert "no segment files" in capsys.readouterr().err
    (tmp_path / "ring.json").write_text("{}")
    assert main(["verify", str(segments), "--keyring", str(tmp_path / "ring.json")]) == 2


def test_gateway_audit_commands_run_as_a_process(segments: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    rotate = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gateway.cli import main; sys.exit(main())",
            "audit",
            "keys",
            "rotate",
            "--dir",
            str(keys),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rotate.returncode == 0, rotate.stderr
    assert "new signing key" in rotate.stdout
    show = subprocess.run(
        [sys.executable, "-m", "audit", "keys", "show", "--dir", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(show.stdout)["keys"][0]["not_after"] is None
    # The segments were signed by another key: a keyring without it fails verification.
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit",
            "verify",
            str(segments),
            "--keyring",
            str(keys / "keyring.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 1
    assert "unknown_key" in verify.stdout


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "hostile",
    [
        {"gateway": {"timings": "fast"}},
        {"gateway": {"timings": [1, 2]}},
        {"gateway": {"timings": {"total": float("inf"), "wait": float("nan")}}},
        {"@timestamp": "not a time"},
        {"@timestamp": "9999-99-99T99:99:99Z", "event": {"start": 12}},
        {"http": {"response": {"bytes": float("inf"), "status_code": "200"}}},
        {"gateway": {"route": b"\xff", b"raw": float("nan"), 7: [float("-inf")]}},
    ],
)
def test_a_malformed_record_never_stops_an_export(hostile: dict[str, Any]) -> None:
    # One forged or damaged record must not cost the auditor the export of all the others.
    body: dict[str, Any] = {
        "record": "http.outcome",
        "@timestamp": "2026-11-29T09:14:03.120Z",
        "event": {"id": "r1"},
        "url": {"path": "/a"},
        "http": {"request": {"method": "GET"}},
        **hostile,
    }
    records = [Record("s", 1, body)]
    har = _strict_json(to_json(har_document(records), indent=1))
    assert len(har["log"]["entries"]) == 1
    ocsf = [_strict_json(line) for line in ocsf_lines(records)]
    assert len(ocsf) == 1
    assert len([_strict_json(line) for line in jsonl_lines(records)]) == 1
