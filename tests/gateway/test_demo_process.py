"""`gateway demo` as a real process: TLS material, Acme CRM, mail catcher, gateway, clean stop."""

from __future__ import annotations

import json
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.assertion import load_signer
from gateway.identity import ActingGrant, Principal, PrincipalKind
from policies.model import Scope
from tests.gateway.redis_servers import free_port

GATEWAY = str(Path(sys.executable).parent / "gateway")


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    output: list[str]
    root: Path
    https_port: int
    app_port: int
    smtp_port: int

    @property
    def ca_file(self) -> Path:
        return self.root / "var/tls/demo-ca.crt"

    def read_until(self, needle: str, timeout_s: float = 30) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if needle in line:
                return line
        pytest.fail(f"no {needle!r} in the demo's output:\n{''.join(self.output)}")


@dataclass(frozen=True)
class DemoRoot:
    root: Path
    https_port: int
    app_port: int
    smtp_port: int


@pytest.fixture
def demo_root(tmp_path: Path, project_root: Path) -> DemoRoot:
    """A copy of the demo's config files with free ports, as a fresh clone would have."""
    https_port, plain_port, app_port, smtp_port = (free_port() for _ in range(4))
    (tmp_path / "config/policies").mkdir(parents=True)
    shutil.copy(project_root / "config/demo-directory.yaml", tmp_path / "config")
    policy = (project_root / "config/policies/demo.yaml").read_text()
    (tmp_path / "config/policies/demo.yaml").write_text(
        policy.replace("127.0.0.1:9001", f"127.0.0.1:{app_port}")
    )
    config = (project_root / "config/gateway.yaml").read_text()
    config = (
        config.replace("port: 8443", f"port: {https_port}")
        .replace("port: 8080", f"port: {plain_port}")
        .replace("port: 8025", f"port: {smtp_port}")
        .replace("gateway.localhost:8443", f"gateway.localhost:{https_port}")
    )
    (tmp_path / "config/gateway.yaml").write_text(config)
    return DemoRoot(tmp_path, https_port, app_port, smtp_port)


@pytest.fixture
def demo(demo_root: DemoRoot) -> Iterator[DemoRun]:
    process = subprocess.Popen(
        [GATEWAY, "demo", "--app-port", str(demo_root.app_port)],
        cwd=demo_root.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = DemoRun(
        process, [], demo_root.root, demo_root.https_port, demo_root.app_port, demo_root.smtp_port
    )
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _https_get(port: int, host: str, path: str, ca_file: Path) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_demo_runs_everything_and_stops_cleanly(demo: DemoRun) -> None:
    demo.read_until("Ctrl-C stops everything", timeout_s=60)
    printed = "".join(demo.output)
    # Only https URLs are shown, for both origins, on the listener's port.
    assert "http://" not in printed
    assert f"https://gateway.localhost:{demo.https_port}/" in printed
    assert f"https://acme.localhost:{demo.https_port}/whoami" in printed
    assert str(demo.ca_file) in printed
    assert "demo directory" in printed
    assert demo.ca_file.exists()

    # The console publishes the assertion keys over TLS signed by the demo CA.
    status, headers, body = _https_get(
        demo.https_port, "gateway.localhost", "/.gateway/jwks.json", demo.ca_file
    )
    assert status == 200
    assert headers["strict-transport-security"].startswith("max-age=")
    assert json.loads(body)["keys"]

    # The routed host answers, but forwards nothing without a login.
    status, headers, _ = _https_get(demo.https_port, "acme.localhost", "/whoami", demo.ca_file)
    assert status in (302, 303, 401, 403)
    assert "strict-transport-security" in headers

    # Acme verifies an assertion signed with the running gateway's key, fetching its key set
    # over HTTPS from the gateway, as it does behind the gateway.
    signer = load_signer(
        demo.root / "var/keys", issuer=f"https://gateway.localhost:{demo.https_port}", create=False
    )
    now = time.time()
    sam = Principal(PrincipalKind.STAFF, "sam", "sam@vendor.example", "Sam")
    grant = ActingGrant("r-1", "acme", "bob", sam, Scope.READ, now - 60, now + 600)
    token = signer.sign(grant, f"https://acme.localhost:{demo.https_port}", now)
    status, body = _http_get(
        demo.app_port, "/whoami", {"X-Gateway-User": "bob", "X-Gateway-Assertion": token}
    )
    assert status == 200
    answer = json.loads(body)
    assert answer["assertion"]["verified"] is True, answer
    assert answer["assertion"]["claims"]["sub"] == "bob"

    # The mail catcher prints what it receives.
    message = EmailMessage()
    message["From"] = "gateway@gateway.localhost"
    message["To"] = "alice@acme.example"
    message["Subject"] = "Access request r-1 needs your decision"
    message.set_content("Review it in the console.")
    with smtplib.SMTP("127.0.0.1", demo.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    demo.read_until("subject: Access request r-1 needs your decision")

    redis_pids = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(demo.root) in _cmdline(p) and "redis-server" in _cmdline(p)
    ]
    assert len(redis_pids) == 1
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(30) == 0
    demo.read_until("stopped")
    deadline = time.monotonic() + 10
    while Path(f"/proc/{redis_pids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{redis_pids[0]}").exists() or "Z" in _state(redis_pids[0])


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_demo_refuses_a_busy_app_port_and_leaves_nothing_running(
    demo_root: DemoRoot,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [GATEWAY, "demo", "--app-port", str(port)],
            cwd=demo_root.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
    assert [p for p in Path("/proc").iterdir() if str(demo_root.root) in _cmdline(p)] == []
