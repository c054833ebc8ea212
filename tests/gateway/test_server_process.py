"""`gateway run` as a real process: it serves TLS and the redirect, and SIGTERM stops it cleanly."""

from __future__ import annotations

import importlib.util
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import TlsFiles
from gateway.tls import ensure_demo_tls
from tests.gateway.processes import wait_gone
from tests.gateway.test_tls_reload import file_fingerprint, renew, served_certificate

GATEWAY = str(Path(sys.executable).parent / "gateway")  # the installed console script
POLICY = """routes:
  - name: acme
    hosts: [acme.localhost]
    upstream: http://127.0.0.1:1
    org: acme
    default: deny
    rules: []
"""


@dataclass
class Running:
    process: subprocess.Popen[str]
    https_port: int
    http_port: int
    ca_file: Path
    lines: list[str]


def _write_config(tmp: Path, *, redis_url: str | None = None) -> Path:
    tls = TlsFiles(tmp / "tls/gateway.crt", tmp / "tls/gateway.key", tmp / "tls/demo-ca.crt")
    ensure_demo_tls(tls)
    (tmp / "policy.yaml").write_text(POLICY)
    config = tmp / "gateway.yaml"
    redis = "null" if redis_url is None else redis_url
    config.write_text(
        f"""console_url: https://gateway.localhost
data_dir: {tmp / "data"}
listeners:
  - {{address: 127.0.0.1, port: 0, tls: true}}
  - {{address: 127.0.0.1, port: 0, tls: false}}
tls: {{cert_file: {tls.cert_file}, key_file: {tls.key_file}, ca_file: {tls.ca_file}}}
redis: {{url: {redis}}}
policy_files: [{tmp / "policy.yaml"}]
"""
    )
    return config


def _start(config: Path, project_root: Path) -> Running:
    process = subprocess.Popen(
        [GATEWAY, "run", "--config", str(config)],
        cwd=project_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(ports) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on "):
            url = line.split()[2]
            ports[url.split(":")[0]] = int(url.rsplit(":", 1)[1])
    if len(ports) < 2:
        process.kill()
        process.wait()
        process.stdout.close()
        pytest.fail("gateway run did not start:\n" + "".join(lines))
    return Running(process, ports["https"], ports["http"], config.parent / "tls/demo-ca.crt", lines)


@pytest.fixture
def running(tmp_path: Path, project_root: Path) -> Iterator[Running]:
    started = _start(_write_config(tmp_path), project_root)
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()
    if started.process.stdout is not None:
        started.process.stdout.close()


def _get(url: str, host: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Host": host})  # noqa: S310 - loopback test
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context),
        _NoRedirect(),
    )
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # it ended while we looked
        # The command name in stat may contain spaces; fields after its ")" are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        yield int(entry.name), ppid, cmdline


def _redis_children(pid: int) -> list[int]:
    return [child for child, parent, cmd in _processes() if parent == pid and "redis-server" in cmd]


def test_gateway_run_serves_and_stops_on_sigterm_without_orphans(running: Running) -> None:
    expected_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert running.lines[0].strip() == f"event loop: {expected_loop}"
    context = ssl.create_default_context(cafile=str(running.ca_file))
    # The host name must match the certificate; the connection goes to 127.0.0.1.
    status, headers = _get(
        f"https://127.0.0.1:{running.https_port}/.gateway/readyz", "acme.localhost", context
    )
    assert status == 200
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    status, headers = _get(f"http://127.0.0.1:{running.http_port}/x?y", "acme.localhost")
    assert status == 308
    assert headers["Location"] == f"https://acme.localhost:{running.https_port}/x?y"
    assert "Strict-Transport-Security" not in headers
    status, _ = _get(f"http://127.0.0.1:{running.http_port}/.gateway/readyz", "10.1.1.1")
    assert status == 200

    (redis_child,) = _redis_children(running.process.pid)
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(20) == 0
    assert wait_gone(redis_child)
    assert running.process.stdout is not None
    assert "stopped" in running.process.stdout.read()


def test_sigint_stops_it_too(running: Running) -> None:
    (redis_child,) = _redis_children(running.process.pid)
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(20) == 0
    assert wait_gone(redis_child)


@pytest.mark.parametrize(
    "problem", ["bad-config", "missing-cert", "open-key", "bad-policy", "redis-down"]
)
def test_gateway_run_refuses_to_start_on_bad_material(
    tmp_path: Path, project_root: Path, problem: str
) -> None:
    down = "redis://127.0.0.1:1/0" if problem == "redis-down" else None
    config = _write_config(tmp_path, redis_url=down)
    if problem == "bad-config":
        config.write_text(config.read_text() + "surprise: 1\n")
    elif problem == "missing-cert":
        (tmp_path / "tls/gateway.crt").unlink()
    elif problem == "open-key":
        (tmp_path / "tls/gateway.key").chmod(0o644)
    elif problem == "bad-policy":
        (tmp_path / "policy.yaml").write_text(POLICY.replace("default: deny", "default: maybe"))
    result = subprocess.run(
        [GATEWAY, "run", "--config", str(config)],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    expected = {
        "bad-config": "surprise",
        "missing-cert": "no such file",
        "open-key": "o+r",
        "bad-policy": "policy.yaml:6: routes[0].default: allow or deny (got 'maybe')",
        "redis-down": "Redis unreachable",
    }
    assert expected[problem] in result.stderr
    assert "Traceback" not in result.stderr  # a clear refusal, not a crash
    # Nothing left running: no redis-server under this test's data directory.
    assert [pid for pid, _, cmd in _processes() if str(tmp_path) in cmd] == []


def test_sighup_reloads_policy_and_tls_and_keeps_serving(running: Running, tmp_path: Path) -> None:
    # `kill -HUP` is the documented reload; unhandled, it would end the process (and every
    # in-flight request with its audit outcome).
    status, _ = _get(f"http://127.0.0.1:{running.http_port}/", "beta.localhost")
    assert status == 404
    tls = TlsFiles(tmp_path / "tls/gateway.crt", tmp_path / "tls/gateway.key", running.ca_file)
    before = served_certificate(running.https_port, running.ca_file)
    (tmp_path / "policy.yaml").write_text(POLICY.replace("[acme.localhost]", "[beta.localhost]"))
    renew(tls)  # and the TLS certificate was renewed
    renewed = file_fingerprint(tls)
    running.process.send_signal(signal.SIGHUP)
    # Wait for the reload itself, generously: a loaded machine may take its time.
    deadline = time.monotonic() + 30
    after = before
    while after != renewed and running.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        after = served_certificate(running.https_port, running.ca_file)
    assert running.process.poll() is None
    assert after == renewed != before
    status, headers = _get(f"http://127.0.0.1:{running.http_port}/", "beta.localhost")
    assert status == 308
    assert headers["Location"] == f"https://beta.localhost:{running.https_port}/"
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(20) == 0
    assert running.process.stdout is not None
    assert "policy reloaded: 1 route(s)" in running.process.stdout.read()
