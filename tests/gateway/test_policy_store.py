"""PolicyStore: atomic reloads, last good kept on failure, metrics, polling and SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.policy_store import PolicyStore
from policies.errors import PolicyError
from policies.model import PolicySet


def policy(*hosts: str) -> str:
    out = ["routes:"]
    for index, host in enumerate(hosts):
        out += [
            f"  - name: r{index}",
            f"    hosts: [{host}]",
            "    upstream: http://127.0.0.1:9",
            "    org: acme",
            "    default: deny",
            "    rules: [{allow: {prefix: /}}]",
        ]
    return "\n".join(out) + "\n"


BROKEN = policy("a.example").replace("default: deny", "default: sometimes")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(policy("a.example"))
    return path


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def counts(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    return (
        registry.get_sample_value("gateway_policy_reloads_total"),
        registry.get_sample_value("gateway_policy_reload_failures_total"),
    )


def test_initial_load_and_invalid_start(policy_file: Path, registry: CollectorRegistry) -> None:
    store = PolicyStore([policy_file], registry=registry)
    assert set(store.current.by_host) == {"a.example"}
    assert counts(registry) == (0.0, 0.0)
    policy_file.write_text(BROKEN)
    with pytest.raises(PolicyError) as caught:
        PolicyStore([policy_file], registry=registry)
    assert "routes[0].default: allow or deny" in str(caught.value)


def test_good_reload_swaps_and_notifies(policy_file: Path, registry: CollectorRegistry) -> None:
    seen: list[PolicySet] = []
    store = PolicyStore([policy_file], on_change=seen.append, registry=registry)
    policy_file.write_text(policy("a.example", "b.example"))
    assert store.reload() is True
    assert set(store.current.by_host) == {"a.example", "b.example"}
    assert seen == [store.current]
    assert counts(registry) == (1.0, 0.0)


def test_bad_reload_keeps_last_good_and_says_so(
    policy_file: Path, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[PolicySet] = []
    store = PolicyStore([policy_file], on_change=seen.append, registry=registry)
    before = store.current
    policy_file.write_text(BROKEN.replace("org: acme", "org: 'a b'"))
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert store.reload() is False
    assert store.current is before
    assert seen == []
    assert counts(registry) == (0.0, 1.0)
    message = caplog.records[-1].getMessage()
    assert "last good policy stays in force (2 problem(s))" in message
    assert f"{policy_file}:5: routes[0].org:" in message
    assert f"{policy_file}:6: routes[0].default: allow or deny" in message
    policy_file.unlink()
    assert store.reload() is False
    assert store.current is before
    assert counts(registry) == (0.0, 2.0)


def test_a_failing_listener_does_not_undo_the_reload(
    policy_file: Path, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(_policy_set: PolicySet) -> None:
        raise RuntimeError("listener broke")

    store = PolicyStore([policy_file], on_change=explode, registry=registry)
    policy_file.write_text(policy("c.example"))
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert store.reload() is True
    assert set(store.current.by_host) == {"c.example"}
    assert "on_change listener failed" in caplog.text


def test_stores_sharing_a_registry_share_counters(
    policy_file: Path, registry: CollectorRegistry
) -> None:
    first = PolicyStore([policy_file], registry=registry)
    second = PolicyStore([policy_file], registry=registry)
    assert first.reload()
    assert second.reload()
    assert counts(registry) == (2.0, 0.0)


def test_readers_see_old_or_new_never_a_mix(policy_file: Path, registry: CollectorRegistry) -> None:
    store = PolicyStore([policy_file], registry=registry)
    sets = [policy("a.example"), policy("x.example", "y.example", "z.example")]
    valid = [{"a.example"}, {"x.example", "y.example", "z.example"}]
    stop = threading.Event()
    observed: list[set[str]] = []

    def read() -> None:
        while not stop.is_set():
            current = store.current
            observed.append({h for r in current.routes for h in r.hosts})

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(40):
            policy_file.write_text(sets[index % 2])
            store.reload()
    finally:
        stop.set()
        reader.join(timeout=10)
    assert observed
    assert all(hosts in valid for hosts in observed)


async def wait_for(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll `condition` (the store has no event to await: reloads are fire-and-forget)."""
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_a_hostile_file_fails_the_reload_and_keeps_the_last_good(
    policy_file: Path, registry: CollectorRegistry
) -> None:
    store = PolicyStore([policy_file], registry=registry)
    policy_file.write_text("routes: " + "[" * 100_000 + "]" * 100_000)
    assert store.reload() is False
    assert counts(registry) == (0.0, 1.0)
    assert "a.example" in store.current.by_host


async def write(path: Path, text: str, *, mtime_ns: int | None = None) -> None:
    """Replace `path` in one rename, so a poll never sees it half written or mid-utime."""

    def replace() -> None:
        staged = path.with_name(path.name + ".new")
        staged.write_text(text)
        if mtime_ns is not None:
            os.utime(staged, ns=(mtime_ns, mtime_ns))
        os.replace(staged, path)

    await asyncio.to_thread(replace)


async def test_watch_reloads_on_change_and_reports_a_bad_file_once(
    policy_file: Path, registry: CollectorRegistry
) -> None:
    store = PolicyStore([policy_file], registry=registry)
    watcher = asyncio.create_task(store.watch(0.02))
    try:
        await asyncio.sleep(0.1)
        assert counts(registry) == (0.0, 0.0)  # nothing changed: nothing reloaded
        await write(policy_file, policy("b.example"))
        await wait_for(lambda: "b.example" in store.current.by_host)
        # Same size, mtime forced back: only the content hash can notice this change.
        stat = await asyncio.to_thread(policy_file.stat)
        await write(policy_file, policy("d.example"), mtime_ns=stat.st_mtime_ns)
        await wait_for(lambda: "d.example" in store.current.by_host)
        await write(policy_file, BROKEN)
        await wait_for(lambda: counts(registry)[1] == 1.0)
        await asyncio.sleep(0.15)
        assert counts(registry) == (2.0, 1.0)  # the same bad content is not retried
        assert "d.example" in store.current.by_host
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_install_sighup_in_process(policy_file: Path, registry: CollectorRegistry) -> None:
    store = PolicyStore([policy_file], registry=registry)
    loop = asyncio.get_running_loop()
    store.install_sighup(loop)
    try:
        await write(policy_file, policy("e.example"))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: "e.example" in store.current.by_host)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


@pytest.fixture
def child(policy_file: Path) -> Iterator[subprocess.Popen[str]]:
    script = Path(__file__).with_name("policy_store_child.py")
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, str(script), str(policy_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def read_line(process: subprocess.Popen[str], prefix: str) -> str:
    """The next output line starting with `prefix` (a watchdog kills a stuck child)."""
    assert process.stdout is not None
    watchdog = threading.Timer(20, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith(prefix):
                return line.rstrip("\n")
    finally:
        watchdog.cancel()
    raise AssertionError(f"child exited before printing {prefix!r}")


def test_sighup_reloads_a_real_process(policy_file: Path, child: subprocess.Popen[str]) -> None:
    read_line(child, "ready")
    policy_file.write_text(policy("a.example", "b.example"))
    child.send_signal(signal.SIGHUP)
    assert read_line(child, "hosts:") == "hosts: a.example,b.example"
    policy_file.write_text(BROKEN)
    child.send_signal(signal.SIGHUP)
    failure = read_line(child, "ERROR")
    assert "policy reload failed; the last good policy stays in force" in failure
    assert "routes[0].default: allow or deny" in read_line(child, str(policy_file))
    child.send_signal(signal.SIGUSR1)
    assert read_line(child, "hosts:") == "hosts: a.example,b.example"
    policy_file.write_text(policy("c.example"))
    child.send_signal(signal.SIGHUP)
    assert read_line(child, "hosts:") == "hosts: c.example"
