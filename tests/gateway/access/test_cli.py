"""`gateway login` and `gateway request …` as real subprocesses against the real gateway
over HTTPS (demo CA), with the session kept 0600 in the user's config folder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

from gateway.accounts.totp import code_at
from tests.gateway.sessions.harness import (
    ALICE_SECRET,
    PASSWORD,
    SAM_SECRET,
    Site,
    site,
    site_factory,
)

__all__ = ["site", "site_factory"]  # fixtures of the HTTPS harness

MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


async def gateway(home: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MAIN,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def login(site: Site, home: Path, email: str, secret: str) -> tuple[int, str, str]:
    return await gateway(
        home,
        "login",
        "--console",
        site.console().rstrip("/"),
        "--email",
        email,
        "--totp",
        code_at(secret, site.clock.now()),
        "--password-stdin",
        "--ca-file",
        str(site.ca_file),
        "--connect-to",
        "127.0.0.1",
        stdin=PASSWORD + "\n",
    )


async def test_login_then_the_whole_loop(site: Site, tmp_path: Path) -> None:
    sam_home, alice_home = tmp_path / "sam", tmp_path / "alice"
    code, out, err = await login(site, sam_home, "sam@vendor.example", SAM_SECRET)
    assert code == 0, err
    assert "staff:sam" in out
    saved = sam_home / "gateway" / "session.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert json.loads(saved.read_text())["csrf_token"]

    await site.accounts.store.put_member("acme", "bob", "bob@acme.example", "Bob", "member")
    code, out, err = await gateway(
        sam_home, "request", "--json", "create", "--org", "acme", "--member", "bob",
        "--duration", "1800", "--scope", "read", "--justification", "ticket 8: login loop",
    )  # fmt: skip
    assert code == 0, err
    rid = json.loads(out)["id"]

    code, out, err = await gateway(sam_home, "request", "approve", rid)
    assert code == 1
    assert "self_approval" in err

    code, _, err = await login(site, alice_home, "alice@acme.example", ALICE_SECRET)
    assert code == 0, err
    code, out, err = await gateway(alice_home, "request", "list", "--state", "pending")
    assert code == 0, err
    assert rid in out
    code, out, err = await gateway(
        alice_home, "request", "approve", rid, "--duration", "600", "--comment", "short one"
    )
    assert code == 0, err
    assert "approved" in out

    code, out, err = await gateway(sam_home, "request", "show", rid)
    assert code == 0, err
    assert "filed" in out
    assert "short one" in out
    code, out, err = await gateway(sam_home, "request", "revoke", rid)
    assert (code, "revoked" in out) == (0, True)
    code, out, err = await gateway(sam_home, "request", "revoke", rid)
    assert code == 1
    assert "wrong_state" in err


async def test_refusals_are_clear(site: Site, tmp_path: Path) -> None:
    code, _, err = await gateway(tmp_path, "request", "list")
    assert code == 2
    assert "gateway login" in err
    code, _, err = await gateway(
        tmp_path, "login", "--console", site.console().rstrip("/"), "--email",
        "sam@vendor.example", "--totp", "000000", "--password-stdin",
        "--ca-file", str(site.ca_file), "--connect-to", "127.0.0.1", stdin="wrong\n",
    )  # fmt: skip
    assert code == 1
    assert "invalid" in err
    assert not (tmp_path / "gateway" / "session.json").exists()
    code, _, err = await gateway(
        tmp_path, "login", "--console", "http://plain.example", "--email", "a@b.example",
        "--totp", "1", "--password-stdin", stdin="x\n",
    )  # fmt: skip
    assert code == 2
