"""What an account is: staff members and org members as stored, and the rules for their fields.

Ids are `[A-Za-z0-9._-]{1,64}` (so they can never forge a Redis key), emails are
lower-cased and checked for shape, names are printable and short. An `Account` is the
stored record; its `principal` is the identity handed to stages and the audit.

Accounts of one person (a vendor employee who is also a customer admin, say) share a
`person` id, written like an account id and stored lower-cased (case never tells persons
apart); '' means the account is its own person. The access workflow reads it when a
request is decided (`gateway.access.directory`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway import keys
from gateway.accounts.errors import InvalidAccountInput
from gateway.identity import Principal, PrincipalKind

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
EMAIL_PATTERN = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")
MAX_NAME = 128
MAX_PASSWORD = 1024  # longer inputs are refused before any hashing work
MIN_PASSWORD = 8
ROLES = ("admin", "member")


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidAccountInput(f"{what} {value!r}: expected [A-Za-z0-9._-], 1 to 64 characters")
    return value


def check_person(value: object) -> str:
    """A person id links accounts of one person; same alphabet and length as an id, kept
    lower-cased."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidAccountInput(f"person {value!r}: expected [A-Za-z0-9._-], 1 to 64 characters")
    # SECURITY: "Sam" and "sam" name one person; a case variant must never split a person
    # into two who could decide each other's requests (the scripts compare stored bytes).
    return value.lower()


def check_email(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > 254
        or not EMAIL_PATTERN.fullmatch(value)
        or ".." in value
    ):
        raise InvalidAccountInput(f"email {value!r}: expected name@domain, at most 254 characters")
    return value.lower()


def check_name(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or not value.isprintable():
        raise InvalidAccountInput(f"name {value!r}: expected 1 to {MAX_NAME} printable characters")
    return value


def check_role(value: object) -> str:
    if value not in ROLES:
        raise InvalidAccountInput(f"role {value!r}: expected one of {', '.join(ROLES)}")
    return str(value)


def check_new_password(value: object) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise InvalidAccountInput(f"password: expected {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return value


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client is typed as returning either)."""
    return value.decode() if isinstance(value, bytes) else value


def redis_key(principal_key: str) -> str:
    """The account hash's Redis key for `staff:<id>` or `member:<org>:<id>`."""
    parts = principal_key.split(":")
    if len(parts) == 2 and parts[0] == "staff":
        return keys.staff(check_id(parts[1]))
    if len(parts) == 3 and parts[0] == "member":
        return keys.member(check_id(parts[1], "org"), check_id(parts[2]))
    raise InvalidAccountInput(f"principal {principal_key!r}: expected staff:ID or member:ORG:ID")


@dataclass(frozen=True)
class Account:
    """One stored account. `totp_secret` is the encrypted secret ('' before enrolment)."""

    principal: Principal
    password_hash: str
    totp_secret: str
    disabled: bool
    impersonable: bool = True
    enrolment_token: str = ""  # hash of the live enrolment token, if one was issued
    person: str = ""  # shared by every account of one person; '' = its own person

    @property
    def key(self) -> str:
        return self.principal.key

    @property
    def enrolled(self) -> bool:
        return bool(self.totp_secret)

    def to_redis(self) -> dict[str, str]:
        p = self.principal
        return {
            "kind": p.kind.value,
            "id": p.id,
            "email": p.email,
            "name": p.name,
            "org": p.org or "",
            "role": p.role or "",
            "impersonable": "1" if self.impersonable else "0",
            "password_hash": self.password_hash,
            "totp_secret": self.totp_secret,
            "disabled": "1" if self.disabled else "0",
            "enrolment_token": self.enrolment_token,
            "person": self.person,
        }

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> Account:
        f = {text(k): text(v) for k, v in raw.items()}
        kind = PrincipalKind(f["kind"])
        principal = Principal(
            kind=kind,
            id=f["id"],
            email=f["email"],
            name=f["name"],
            org=f.get("org") or None,
            role=f.get("role") or None,
        )
        return cls(
            principal=principal,
            password_hash=f.get("password_hash", ""),
            totp_secret=f.get("totp_secret", ""),
            disabled=f.get("disabled") == "1",
            impersonable=f.get("impersonable", "1") == "1",
            enrolment_token=f.get("enrolment_token", ""),
            person=f.get("person", ""),
        )
