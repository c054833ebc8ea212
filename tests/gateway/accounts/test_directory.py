from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.accounts import Accounts, DirectoryError
from gateway.accounts.directory import import_directory, parse_directory

GOOD = """
staff:
  - {id: sam, email: sam@vendor.example, name: Sam, password: "sam-password",
     totp_secret: "JBSWY3DPEHPK3PXP"}
orgs:
  - id: acme
    name: Acme Corp
    settings: {max_duration_s: 14400, approvals_required: 1}
    members:
      - {id: alice, email: alice@acme.example, role: admin, password: "alice-password",
         totp_secret: "JBSWY3DPEHPK3PXQ"}
      - {id: bob, email: bob@acme.example, role: member, impersonable: true,
         password: "bob-password"}
"""


async def write_count(redis: aioredis.Redis) -> int:
    """Redis's own count of changes to the data set (every HSET/SET/DEL/... adds to it)."""
    info = await redis.info("persistence")
    return int(info["rdb_changes_since_last_save"])


async def contents(redis: aioredis.Redis) -> dict[bytes, object]:
    """Every key's value, compared by content (a hash's field order is Redis's business)."""
    found: dict[bytes, object] = {}
    for name in await redis.keys("*"):
        key = name if isinstance(name, bytes) else name.encode()
        kind = await redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            found[key] = await redis.hgetall(key)
        elif kind == "set":
            found[key] = await redis.smembers(key)
        elif kind == "string":
            found[key] = await redis.get(key)
        else:
            found[key] = (kind, await redis.dump(key))
        found[key + b" ttl"] = await redis.ttl(key) > 0
    return found


async def test_import_then_again_changes_nothing(accounts: Accounts, redis: aioredis.Redis) -> None:
    directory = parse_directory(GOOD, "dir.yaml")
    first = await import_directory(directory, accounts.store, accounts.enrolment)
    assert sorted(first.created) == ["member:acme:alice", "member:acme:bob", "staff:sam"]
    assert list(first.enrolment_tokens) == ["member:acme:bob"]
    snapshot = await contents(redis)
    writes_before = await write_count(redis)
    second = await import_directory(directory, accounts.store, accounts.enrolment)
    assert second.created == []
    assert second.updated == []
    assert sorted(second.unchanged) == ["member:acme:alice", "member:acme:bob", "staff:sam"]
    assert second.enrolment_tokens == {}
    # Not one write command reached Redis (Redis counts every change, even to equal values).
    assert await write_count(redis) == writes_before
    assert await contents(redis) == snapshot
    alice = await accounts.store.require("member:acme:alice")
    assert accounts.store.totp_secret(alice) == "JBSWY3DPEHPK3PXQ"
    assert alice.principal.name == "alice"
    org = await accounts.store.org("acme")
    assert org is not None
    assert org.settings["approvals_required"] == 1


async def test_changed_file_updates(accounts: Accounts) -> None:
    await import_directory(parse_directory(GOOD, "d"), accounts.store, accounts.enrolment)
    changed = GOOD.replace('"alice-password"', '"alice-new-password"').replace(
        "name: Acme Corp", "name: Acme"
    )
    report = await import_directory(
        parse_directory(changed, "d"), accounts.store, accounts.enrolment
    )
    assert report.updated == ["member:acme:alice"]
    alice = await accounts.store.require("member:acme:alice")
    assert await accounts.store.hasher.verify("alice-new-password", alice.password_hash)


async def test_user_enrolled_secret_survives_reimport(accounts: Accounts) -> None:
    report = await import_directory(parse_directory(GOOD, "d"), accounts.store, accounts.enrolment)
    await accounts.store.set_totp_secret("member:acme:bob", "JBSWY3DPEHPK3PXR")
    await import_directory(parse_directory(GOOD, "d"), accounts.store, accounts.enrolment)
    bob = await accounts.store.require("member:acme:bob")
    assert accounts.store.totp_secret(bob) == "JBSWY3DPEHPK3PXR"
    assert report.enrolment_tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("staff: [{id: 'a:b', email: a@b.example, name: A}]", "staff[0].id"),
        ("staff: [{id: a, email: nope, name: A}]", "staff[0].email"),
        ("staff: [{id: a, email: a@b.example}]", "staff[0].name: required"),
        ("staff: [{id: a, email: a@b.example, name: A, pasword: x}]", "no such key"),
        ("staff: [{id: a, email: a@b.example, name: A, password: short}]", "staff[0].password"),
        ("staff: [{id: a, email: a@b.example, name: A, totp_secret: '!!'}]", "totp_secret"),
        ("orgs: [{id: acme, members: [{id: b, email: b@x.example, role: owner}]}]", "role"),
        (
            "orgs: [{id: acme, members: [{id: b, email: b@x.example, role: member,"
            " impersonable: 'yes'}]}]",
            "impersonable",
        ),
        ("orgs: {id: acme}", "orgs"),
        ("people: []", "no such key"),
        (
            "staff: [{id: a, email: a@b.example, name: A}, {id: a, email: c@b.example, name: C}]",
            "unique",
        ),
        (
            "staff: [{id: a, email: a@b.example, name: A}, {id: c, email: A@b.example, name: C}]",
            "unique",
        ),
        ("staff: [&x {id: a, email: a@b.example, name: A}, *x]", "aliases"),
        ("staff: [", "valid YAML"),
    ],
)
async def test_bad_files_rejected_whole(
    accounts: Accounts, redis: aioredis.Redis, text: str, expected: str
) -> None:
    with pytest.raises(DirectoryError) as caught:
        parse_directory(text, "bad.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("bad.yaml:")
    assert await redis.dbsize() == 0


def test_every_problem_reported_at_once() -> None:
    text = "staff:\n  - {id: 'a b', email: x, name: A}\n  - {id: c, email: c@x.example}\n"
    with pytest.raises(DirectoryError) as caught:
        parse_directory(text, "f.yaml")
    lines = {p.line for p in caught.value.problems}
    assert len(caught.value.problems) >= 3
    assert lines == {2, 3}


def test_secrets_never_echoed_in_errors() -> None:
    with pytest.raises(DirectoryError) as caught:
        parse_directory("staff: [{id: a, email: a@b.example, name: A, password: tiny}]", "f")
    assert "tiny" not in str(caught.value)


def test_demo_directory_is_valid(project_root: Path) -> None:
    text = (project_root / "config" / "demo-directory.yaml").read_text()
    directory = parse_directory(text, "demo-directory.yaml")
    keys = {a.key for a in directory.accounts}
    assert keys == {"staff:sam", "member:acme:alice", "member:acme:bob"}
    assert "DEMO MATERIAL" in text


async def test_changed_settings_write_only_the_org(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    await import_directory(parse_directory(GOOD, "d"), accounts.store, accounts.enrolment)
    accounts_before = {
        k: v for k, v in (await contents(redis)).items() if not k.startswith(b"gw:org:acme")
    }
    changed = GOOD.replace("approvals_required: 1", "approvals_required: 2")
    report = await import_directory(
        parse_directory(changed, "d"), accounts.store, accounts.enrolment
    )
    assert sorted(report.unchanged) == ["member:acme:alice", "member:acme:bob", "staff:sam"]
    org = await accounts.store.org("acme")
    assert org is not None
    assert org.settings == {"max_duration_s": 14400, "approvals_required": 2}
    after = {k: v for k, v in (await contents(redis)).items() if not k.startswith(b"gw:org:acme")}
    assert after == accounts_before


SETTINGS_FILE = """orgs:
  - id: acme
    name: Acme Corp
    settings:
      max_duration_s: 5
      approvals_required: 2
      ticket_pattern: "(unclosed"
      colour: blue
    members:
      - {id: bob, email: bob@acme.example, role: member}
"""


async def test_bad_org_settings_reported_with_lines_and_nothing_imported(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    with pytest.raises(DirectoryError) as caught:
        parse_directory(SETTINGS_FILE, "dir.yaml")
    problems = {(p.line, p.key) for p in caught.value.problems}
    assert problems == {
        (5, "orgs[0].settings.max_duration_s"),
        (7, "orgs[0].settings.ticket_pattern"),
        (8, "orgs[0].settings.colour"),
    }
    shown = str(caught.value)
    assert "dir.yaml:5: orgs[0].settings.max_duration_s: 5 is not an integer from 60" in shown
    assert "dir.yaml:8: orgs[0].settings.colour: no such setting" in shown
    assert "is not a regular expression" in shown
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    "settings",
    [
        "{approvals_required: 0}",
        "{approvals_required: true}",
        "{admins_impersonable: 'yes'}",
        "{pending_lapse_s: 99999999999}",
        "{ticket_pattern: 7}",
        "{justification_min_length: -1}",
    ],
)
def test_each_bad_setting_is_refused(settings: str) -> None:
    text = f"orgs: [{{id: acme, name: Acme, settings: {settings}}}]\n"
    with pytest.raises(DirectoryError) as caught:
        parse_directory(text, "d.yaml")
    assert all(p.key.startswith("orgs[0].settings.") for p in caught.value.problems)


def test_good_settings_are_kept_as_written() -> None:
    text = (
        "orgs: [{id: acme, name: Acme, settings: {max_duration_s: 3600, "
        "ticket_pattern: '^[A-Z]+-[0-9]+', admins_impersonable: true}}]\n"
    )
    (org,) = parse_directory(text, "d.yaml").orgs
    assert org.settings == {
        "max_duration_s": 3600,
        "ticket_pattern": "^[A-Z]+-[0-9]+",
        "admins_impersonable": True,
    }
