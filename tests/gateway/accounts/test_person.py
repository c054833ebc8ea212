"""`person:` in the directory file: accounts of one person, stored with each account, imported
idempotently, validated before anything is written, and in force for the access workflow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.access import AccessForbidden, AccessRequest, AccessStore, RequestState
from gateway.accounts import Accounts, DirectoryError, InvalidAccountInput
from gateway.accounts.directory import import_directory, parse_directory
from gateway.clock import ManualClock
from tests.gateway.accounts.test_admin_cli import admin
from tests.gateway.accounts.test_directory import contents, write_count

LINKED = """
staff:
  - {id: sam, email: sam@vendor.example, name: Sam, person: sam.p,
     totp_secret: "JBSWY3DPEHPK3PXP"}
orgs:
  - id: acme
    name: Acme Corp
    members:
      - {id: sam-admin, email: sam@acme.example, role: admin, person: sam.p,
         totp_secret: "JBSWY3DPEHPK3PXQ"}
      - {id: alice, email: alice@acme.example, role: admin, totp_secret: "JBSWY3DPEHPK3PXR"}
      - {id: bob, email: bob@acme.example, role: member, totp_secret: "JBSWY3DPEHPK3PXS"}
"""

ACCOUNTS = ["member:acme:alice", "member:acme:bob", "member:acme:sam-admin", "staff:sam"]


async def load(accounts: Accounts, text: str) -> None:
    await import_directory(parse_directory(text, "dir.yaml"), accounts.store, accounts.enrolment)


def test_person_is_parsed_for_staff_and_members() -> None:
    directory = parse_directory(LINKED, "dir.yaml")
    persons = {a.key: a.person for a in directory.accounts}
    assert persons == {
        "staff:sam": "sam.p",
        "member:acme:sam-admin": "sam.p",
        "member:acme:alice": "",
        "member:acme:bob": "",
    }


async def test_person_is_stored_and_reimport_writes_nothing(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    await load(accounts, LINKED)
    assert await redis.hget(keys.staff("sam"), "person") == b"sam.p"
    assert await redis.hget(keys.member("acme", "sam-admin"), "person") == b"sam.p"
    assert (await accounts.store.require("member:acme:alice")).person == ""
    snapshot = await contents(redis)
    writes = await write_count(redis)
    report = await import_directory(
        parse_directory(LINKED, "dir.yaml"), accounts.store, accounts.enrolment
    )
    assert sorted(report.unchanged) == ACCOUNTS
    assert await write_count(redis) == writes
    assert await contents(redis) == snapshot


async def test_changing_and_removing_a_link_is_an_update(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    await load(accounts, LINKED)
    moved = LINKED.replace("role: admin, person: sam.p", "role: admin, person: other")
    report = await import_directory(
        parse_directory(moved, "dir.yaml"), accounts.store, accounts.enrolment
    )
    assert report.updated == ["member:acme:sam-admin"]
    assert await redis.hget(keys.member("acme", "sam-admin"), "person") == b"other"
    unlinked = LINKED.replace(", person: sam.p", "")
    report = await import_directory(
        parse_directory(unlinked, "dir.yaml"), accounts.store, accounts.enrolment
    )
    assert sorted(report.updated) == ["member:acme:sam-admin", "staff:sam"]
    assert (await accounts.store.require("staff:sam")).person == ""
    assert (await accounts.store.require("member:acme:sam-admin")).person == ""
    # The secrets were left alone by the profile updates.
    sam = await accounts.store.require("staff:sam")
    assert accounts.store.totp_secret(sam) == "JBSWY3DPEHPK3PXP"


@pytest.mark.parametrize(
    "value",
    [
        '""',
        "null",
        "12",
        "true",
        "[sam]",
        "{a: 1}",
        '"sam:acme"',
        '"{id}"',
        '"sam p"',
        '"sam\\n"',
        '"sam\\u0000"',
        '"s\\u00e4m"',
        '"person:sam"',
        "x" * 65,
    ],
)
async def test_bad_person_ids_are_refused_and_nothing_is_written(
    accounts: Accounts, redis: aioredis.Redis, value: str
) -> None:
    await load(accounts, LINKED)
    snapshot = await contents(redis)
    bad = LINKED.replace("role: admin, person: sam.p", f"role: admin, person: {value}")
    with pytest.raises(DirectoryError) as caught:
        parse_directory(bad, "bad.yaml")
    [problem] = caught.value.problems
    assert problem.key == "orgs[0].members[0].person"
    assert problem.line == 9
    assert "a person id" in problem.expected
    assert await contents(redis) == snapshot


def test_every_bad_person_is_reported_at_once() -> None:
    bad = LINKED.replace("person: sam.p,\n     totp", "person: 'a:b',\n     totp").replace(
        "role: admin, person: sam.p", "role: admin, person: [x]"
    )
    with pytest.raises(DirectoryError) as caught:
        parse_directory(bad, "bad.yaml")
    assert [(p.key, p.line) for p in caught.value.problems] == [
        ("staff[0].person", 3),
        ("orgs[0].members[0].person", 9),
    ]


async def test_the_store_refuses_a_bad_person(accounts: Accounts, redis: aioredis.Redis) -> None:
    with pytest.raises(InvalidAccountInput):
        await accounts.store.put_staff("sam", "sam@vendor.example", "Sam", person="a:b")
    assert await redis.exists(keys.staff("sam")) == 0
    made = await accounts.store.put_staff("sam", "sam@vendor.example", "Sam", person="sam.p")
    assert made.person == "sam.p"


async def test_concurrent_imports_of_one_file_end_as_one(
    accounts: Accounts, redis: aioredis.Redis
) -> None:
    directory = parse_directory(LINKED, "dir.yaml")
    outcomes = await asyncio.gather(
        *(import_directory(directory, accounts.store, accounts.enrolment) for _ in range(3)),
        return_exceptions=True,
    )
    # Racing creations may refuse each other ("exists already"); none leaves a half account.
    assert any(not isinstance(o, BaseException) for o in outcomes)
    await load(accounts, LINKED)
    for key, person in (("staff:sam", "sam.p"), ("member:acme:sam-admin", "sam.p")):
        assert (await accounts.store.require(key)).person == person
    writes = await write_count(redis)
    await load(accounts, LINKED)
    assert await write_count(redis) == writes


async def filed_by_sam(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> tuple[AccessStore, AccessRequest]:
    """A request filed by staff:sam (to act as acme's bob), and the store it was filed in."""
    store = AccessStore(redis, clock)
    sam = (await accounts.store.require("staff:sam")).principal
    request = await store.file(
        sam, org="acme", member="bob", justification="ticket 3: cannot log in",
        duration_s=600, scope="read",
    )  # fmt: skip
    return store, request


async def test_imported_link_refuses_approving_ones_own_request(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    await load(accounts, LINKED)
    store, request = await filed_by_sam(accounts, redis, clock)
    sam_admin = (await accounts.store.require("member:acme:sam-admin")).principal
    alice = (await accounts.store.require("member:acme:alice")).principal
    with pytest.raises(AccessForbidden) as refused:
        await store.approve(request.id, sam_admin)
    assert refused.value.code == "self_approval"
    # Unlinked by a new import: judged at decision time, the same request may now be approved.
    await load(accounts, LINKED.replace(", person: sam.p", ""))
    assert (await store.approve(request.id, sam_admin)).state is RequestState.APPROVED
    await store.revoke(request.id, alice)


async def test_admin_cli_import_refuses_a_bad_person(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    bad = tmp_path / "dir.yaml"
    bad.write_text(LINKED.replace("person: sam.p,\n     totp", "person: '../x',\n     totp"))
    result = admin(tmp_path, redis_url, "import", str(bad))
    assert result.returncode == 1
    assert f"{bad}:3: staff[0].person: a person id" in result.stderr
    assert "nothing was imported" in result.stderr
    assert await redis.dbsize() == 0
    good = tmp_path / "good.yaml"
    good.write_text(LINKED)
    assert admin(tmp_path, redis_url, "import", str(good)).returncode == 0
    listing = admin(tmp_path, redis_url, "list")
    assert "staff:sam <sam@vendor.example> active person=sam.p" in listing.stdout
    assert "member:acme:sam-admin <sam@acme.example> active person=sam.p role=admin" in (
        listing.stdout
    )


async def test_admin_cli_create_takes_a_person_and_refuses_a_bad_one(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    for bad in ("a:b", "x" * 65, "", "sam\n"):
        refused = admin(tmp_path, redis_url, "staff", "create", "sam", "--email",
                        "sam@vendor.example", "--name", "Sam", "--person", bad)  # fmt: skip
        assert refused.returncode == 1
        assert "person" in refused.stderr
    assert await redis.exists(keys.staff("sam")) == 0
    made = admin(tmp_path, redis_url, "staff", "create", "sam",
                 "--email", "sam@vendor.example", "--name", "Sam", "--person", "sam.p")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert await redis.hget(keys.staff("sam"), "person") == b"sam.p"


async def test_person_ids_differing_only_in_case_are_one_person(
    accounts: Accounts, redis: aioredis.Redis, clock: ManualClock
) -> None:
    # "Sam.P" and "sam.p" in one file are one person: a case variant never splits a person
    # into two who could approve each other's requests.
    await load(accounts, LINKED.replace("role: admin, person: sam.p", "role: admin, person: Sam.P"))
    assert await redis.hget(keys.member("acme", "sam-admin"), "person") == b"sam.p"
    made = await accounts.store.put_staff("eve", "eve@vendor.example", "Eve", person="SAM.p")
    assert made.person == "sam.p"
    store, request = await filed_by_sam(accounts, redis, clock)
    sam_admin = (await accounts.store.require("member:acme:sam-admin")).principal
    with pytest.raises(AccessForbidden) as refused:
        await store.approve(request.id, sam_admin)
    assert refused.value.code == "self_approval"
    assert await redis.scard(keys.request_approvals(request.id)) == 0
