"""Directory import: load staff, orgs and members from a YAML file, idempotently.

The format (DESIGN.md):

    staff:
      - {id: sam, email: sam@vendor.example, name: Sam, password: "...", totp_secret: "BASE32...",
         person: sam}
    orgs:
      - id: acme
        name: Acme Corp
        settings: {max_duration_s: 14400, approvals_required: 1}
        members:
          - {id: alice, email: alice@acme.example, role: admin, password: "...", totp_secret: "..."}
          - {id: bob, email: bob@acme.example, role: member, impersonable: true, password: "..."}
          - {id: sam-admin, email: sam@acme.example, role: admin, person: sam}

`person` (staff and members alike) links the accounts of one person: every account naming
the same person id is that person, so none of them decides a request filed by another and
their approvals count once; without it an account is its own person. Ids are written like
account ids (`[A-Za-z0-9._-]{1,64}`) and stored lower-cased (`Sam` and `sam` are one
person); the file is the truth, so an account listed without `person` is unlinked on import.

Every problem of the file is reported at once (file:line) before anything is written;
org `settings` are checked by the access workflow's own rules (`OrgSettings`). Importing
twice writes nothing the second time: each part is compared before it is written, a
password is re-hashed only if the stored hash does not match it, a TOTP secret is
re-sealed only if it differs, and an account without a secret gets an enrolment token
only if it has no live one (tokens are shown once, in the returned report). Accounts
missing from the file are left alone.
Passwords and secrets in such files are demo and test material.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import keys
from gateway.access.errors import AccessInvalid
from gateway.access.settings import OrgSettings
from gateway.accounts.enrolment import Enrolment
from gateway.accounts.errors import AccountError, DirectoryError
from gateway.accounts.model import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    ROLES,
    Account,
    check_email,
    check_id,
    check_name,
    check_person,
    text,
)
from gateway.accounts.store import AccountStore
from gateway.accounts.totp import is_valid_secret
from gateway.identity import Principal, PrincipalKind
from policies.source import Problems, YamlList, YamlMap, load_yaml

_STAFF_KEYS = ("id", "email", "name", "password", "totp_secret", "person")
_MEMBER_KEYS = (
    "id", "email", "name", "role", "impersonable", "password", "totp_secret", "person",
)  # fmt: skip
_ORG_KEYS = ("id", "name", "settings", "members")


@dataclass(frozen=True)
class DirectoryAccount:
    kind: PrincipalKind
    id: str
    email: str
    name: str
    password: str | None
    totp_secret: str | None
    org: str | None = None
    role: str | None = None
    impersonable: bool = True
    person: str = ""  # '' = the account is its own person

    @property
    def key(self) -> str:
        return f"staff:{self.id}" if self.org is None else f"member:{self.org}:{self.id}"


@dataclass(frozen=True)
class DirectoryOrg:
    id: str
    name: str
    settings: dict[str, Any] | None


@dataclass(frozen=True)
class Directory:
    orgs: tuple[DirectoryOrg, ...]
    accounts: tuple[DirectoryAccount, ...]


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    enrolment_tokens: dict[str, str] = field(default_factory=dict)


def _check(problems: Problems, line: int, key: str, value: object, checker: Any) -> Any:
    try:
        return checker(value)
    except AccountError as exc:
        problems.add(line, key, value, str(exc).split(": ", 1)[-1])
        return None


def _password(problems: Problems, line: int, key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        problems.add(line, key, "(hidden)", f"{MIN_PASSWORD} to {MAX_PASSWORD} characters")
        return None
    return value


def _secret(problems: Problems, line: int, key: str, value: object) -> str | None:
    if value is None:
        return None
    if not is_valid_secret(value):
        problems.add(line, key, "(hidden)", "base32 (A-Z, 2-7), 16 to 128 characters")
        return None
    return str(value)


def _person(problems: Problems, item: YamlMap, where: str) -> str:
    """The account's person id; '' when the file names none (its own person)."""
    if "person" not in item:
        return ""
    value = item["person"]
    try:
        # SECURITY: person ids are compared inside the transition scripts; only the id
        # alphabet passes, so no value can stand for another person or for "no person".
        return check_person(value)
    except AccountError:
        problems.add(
            item.line_of("person"), where, value, "a person id: [A-Za-z0-9._-], 1 to 64 characters"
        )
        return ""


def _mapping(
    problems: Problems, doc: object, where: str, line: int, known: tuple[str, ...]
) -> YamlMap | None:
    if not isinstance(doc, YamlMap):
        problems.add(line, where, doc, "a mapping")
        return None
    for key in doc:
        if key not in known:
            problems.add(
                doc.line_of(key), f"{where}.{key}", None, "no such key; known: " + ", ".join(known)
            )
    return doc


def _account(
    problems: Problems, doc: object, where: str, line: int, org: str | None
) -> DirectoryAccount | None:
    item = _mapping(problems, doc, where, line, _STAFF_KEYS if org is None else _MEMBER_KEYS)
    if item is None:
        return None
    before = len(problems.items)
    for required in ("id", "email") + (("name",) if org is None else ("role",)):
        if required not in item:
            problems.add(item.line, f"{where}.{required}", None, "required")
    ident = _check(problems, item.line_of("id"), f"{where}.id", item.get("id"), check_id)
    email = _check(
        problems, item.line_of("email"), f"{where}.email", item.get("email"), check_email
    )
    name = _check(
        problems, item.line_of("name"), f"{where}.name", item.get("name", ident or "?"), check_name
    )
    role = item.get("role")
    if org is not None and role not in ROLES:
        problems.add(item.line_of("role"), f"{where}.role", role, "one of " + ", ".join(ROLES))
    impersonable = item.get("impersonable", True)
    if not isinstance(impersonable, bool):
        problems.add(
            item.line_of("impersonable"), f"{where}.impersonable", impersonable, "true or false"
        )
    password = _password(
        problems, item.line_of("password"), f"{where}.password", item.get("password")
    )
    secret = _secret(
        problems, item.line_of("totp_secret"), f"{where}.totp_secret", item.get("totp_secret")
    )
    person = _person(problems, item, f"{where}.person")
    if len(problems.items) != before:
        return None
    return DirectoryAccount(
        kind=PrincipalKind.STAFF if org is None else PrincipalKind.MEMBER,
        id=ident,
        email=email,
        name=name,
        password=password,
        totp_secret=secret,
        org=org,
        role=str(role) if org is not None else None,
        impersonable=bool(impersonable),
        person=person,
    )


def _settings(problems: Problems, value: object, where: str, line: int) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, YamlMap) or not all(
        isinstance(v, str | int | float | bool) or v is None for v in value.values()
    ):
        problems.add(line, where, value, "a mapping of names to plain values")
        return None
    before = len(problems.items)
    for name, setting in value.items():
        # Checked one name at a time by the access workflow's own rules, so that each bad
        # value is reported on its own line; stored settings are checked again on load.
        try:
            OrgSettings().merged({name: setting})
        except AccessInvalid as exc:
            problems.add(value.line_of(name), f"{where}.{name}", setting, _setting_rule(exc))
    return dict(value) if len(problems.items) == before else None


def _setting_rule(exc: AccessInvalid) -> str:
    # The reason names the setting first ("max_duration_s: 5 is not an integer ..."); the
    # problem names it already, with its place in the file.
    return exc.reason.split(": ", 1)[-1]


def parse_directory(text: str, file: str) -> Directory:
    """Parse and validate a directory file; DirectoryError lists every problem."""
    problems = Problems(file)
    doc = load_yaml(text, problems)
    orgs: list[DirectoryOrg] = []
    accounts: list[DirectoryAccount] = []
    root = _mapping(problems, doc, "(document)", 1, ("staff", "orgs")) if not problems else None
    if root is not None:
        staff = root.get("staff", YamlList())
        if not isinstance(staff, YamlList):
            problems.add(root.line_of("staff"), "staff", staff, "a list of staff members")
        else:
            for i, item in enumerate(staff):
                found = _account(problems, item, f"staff[{i}]", staff.line_of(i), None)
                if found:
                    accounts.append(found)
        org_list = root.get("orgs", YamlList())
        if not isinstance(org_list, YamlList):
            problems.add(root.line_of("orgs"), "orgs", org_list, "a list of orgs")
            org_list = YamlList()
        for i, raw in enumerate(org_list):
            where = f"orgs[{i}]"
            item = _mapping(problems, raw, where, org_list.line_of(i), _ORG_KEYS)
            if item is None:
                continue
            org_id = _check(problems, item.line_of("id"), f"{where}.id", item.get("id"), check_id)
            name = _check(
                problems,
                item.line_of("name"),
                f"{where}.name",
                item.get("name", org_id or "?"),
                check_name,
            )
            settings = _settings(
                problems, item.get("settings"), f"{where}.settings", item.line_of("settings")
            )
            if org_id is None or name is None:
                continue
            orgs.append(DirectoryOrg(org_id, name, settings))
            members = item.get("members", YamlList())
            if not isinstance(members, YamlList):
                problems.add(
                    item.line_of("members"), f"{where}.members", members, "a list of members"
                )
                continue
            for j, member in enumerate(members):
                found = _account(
                    problems, member, f"{where}.members[{j}]", members.line_of(j), org_id
                )
                if found:
                    accounts.append(found)
    seen: dict[str, str] = {}
    for account in accounts:
        for label in (account.key, f"email {account.email}"):
            if label in seen:
                problems.add(1, label, None, f"unique in the file (also {seen[label]})")
            seen[label] = account.key
    if problems:
        raise DirectoryError(problems.items)
    return Directory(tuple(orgs), tuple(accounts))


async def import_directory(
    directory: Directory, store: AccountStore, enrolment: Enrolment
) -> ImportReport:
    """Write a parsed directory into the store; safe to run again with the same file.

    Everything is compared first and only differences are written: importing an
    unchanged directory issues no write command at all.
    """
    report = ImportReport()
    for org in directory.orgs:
        if not await _org_current(store, org):
            await store.put_org(org.id, org.name, org.settings)
    for entry in directory.accounts:
        existing = await store.get(entry.key)
        changed = existing is None
        if existing is not None and await _profile_current(store, entry, existing):
            account = existing
        else:
            account = await _put_profile(store, entry, create=existing is None)
            changed = True
        if entry.password is not None and not (
            account.password_hash
            and await store.hasher.verify(entry.password, account.password_hash)
        ):
            await store.set_password(entry.key, entry.password)
            changed = True
        if entry.totp_secret is not None:
            current = store.totp_secret(account) if account.enrolled else None
            if current != entry.totp_secret:
                await store.set_totp_secret(entry.key, entry.totp_secret)
                changed = True
        elif not account.enrolled and not await enrolment.has_live_token(entry.key):
            report.enrolment_tokens[entry.key] = await enrolment.issue(entry.key)
            changed = True
        target = (
            report.created if existing is None else report.updated if changed else report.unchanged
        )
        target.append(entry.key)
    return report


async def _org_current(store: AccountStore, org: DirectoryOrg) -> bool:
    """The org is stored exactly as the file says (settings only when the file names them)."""
    stored = await store.org(org.id)
    if stored is None or stored.name != org.name:
        return False
    if org.settings is not None and stored.settings != org.settings:
        return False
    return bool(await store.redis.sismember(keys.org_index(), org.id))


async def _profile_current(store: AccountStore, entry: DirectoryAccount, stored: Account) -> bool:
    """The stored profile, its email owner and index entry already match the file."""
    wanted = Principal(entry.kind, entry.id, entry.email, entry.name, entry.org, entry.role)
    if (
        stored.principal != wanted
        or stored.impersonable != entry.impersonable
        or stored.person != entry.person
    ):
        return False
    owner = await store.redis.get(keys.account_by_email(entry.email))
    if owner is None or text(owner) != entry.key:
        return False
    index = keys.staff_index() if entry.org is None else keys.org_members(entry.org)
    return bool(await store.redis.sismember(index, entry.id))


async def _put_profile(store: AccountStore, entry: DirectoryAccount, *, create: bool) -> Account:
    if entry.kind is PrincipalKind.STAFF:
        return await store.put_staff(
            entry.id, entry.email, entry.name, create=create, person=entry.person
        )
    return await store.put_member(
        entry.org or "",
        entry.id,
        entry.email,
        entry.name,
        entry.role or "member",
        impersonable=entry.impersonable,
        create=create,
        person=entry.person,
    )
