"""What `make demo` prints for a person to follow: URLs, the demo people, current codes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis

from gateway.accounts.totp import code_at
from gateway.clock import SystemClock
from tests.e2e.conftest import ALICE, DIRECTORY, SAM, StackFactory

MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


async def demo_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MAIN,
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_announcement_names_urls_people_and_steps(
    stack_factory: StackFactory, redis: aioredis.Redis, redis_url: str
) -> None:
    stack = await stack_factory(redis_url)
    stack.demo.announce()
    text = stack.out.getvalue()
    assert stack.console("/") in text
    assert stack.routed("/whoami") in text
    assert str(stack.ca_file) in text
    for email, password, secret in (SAM, ALICE):
        assert f"{email}  " in text
        assert f"password: {password}" in text
        assert f"secret={secret}" in text
    # bob has no TOTP secret in the file: the import's one-time enrolment token is shown.
    assert "no TOTP yet: enrol at the console with token" in text
    assert "gateway request create --org acme --member bob" in text
    assert "gateway demo --codes" in text


async def test_codes_are_the_current_totp_codes() -> None:
    before = SystemClock().now()
    code, out, err = await demo_cli("--codes", "--directory", str(DIRECTORY))
    after = SystemClock().now()
    assert code == 0, err
    lines = dict(line.split() for line in out.splitlines() if "@" in line)
    assert set(lines) == {SAM[0], ALICE[0]}
    for email, _, secret in (SAM, ALICE):
        assert lines[email] in {code_at(secret, before), code_at(secret, after)}


async def test_codes_of_a_bad_directory_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "directory.yaml"
    broken.write_text("staff:\n  - {id: sam, email: not-an-email, totp_secret: 12}\n")
    code, out, err = await demo_cli("--codes", "--directory", str(broken))
    assert code == 1
    assert out == ""
    assert f"{broken}:2" in err
    code, _, err = await demo_cli("--codes", "--directory", str(tmp_path / "missing.yaml"))
    assert code == 1
    assert "missing.yaml" in err
