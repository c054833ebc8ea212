"""The access workflow's records: an `AccessRequest` (which becomes the grant once approved)
and one `HistoryEntry` per thing that happened to it.

A request is stored as one Redis hash (`keys.access_request(id)`), its history as a list of
JSON entries (`keys.request_history(id)`). The grant's id is the request's id.

    pending ─┬─> approved ─┬─> expired    (duration over, decided by the Clock)
             │             └─> revoked    (any approver, or the requester ending it early)
             ├─> denied                   (one denial ends the request)
             ├─> cancelled                (requester)
             └─> lapsed                   (not decided in time)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.access.text import as_text
from gateway.identity import ActingGrant, Principal, PrincipalKind
from policies.model import Scope


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"
    EXPIRED = "expired"
    REVOKED = "revoked"


class RequestKind(StrEnum):
    REQUEST = "request"  # staff asked; approvers decide
    IMPERSONATION = "impersonation"  # a customer admin acting as a member of their own org


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    action: str  # filed | approval | approved | denied | cancelled | revoked | lapsed | expired
    actor: str  # a principal key, or "gateway" for time-driven transitions
    comment: str = ""
    duration_s: int | None = None
    scope: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at, "action": self.action, "actor": self.actor}
        if self.comment:
            out["comment"] = self.comment
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        if self.scope is not None:
            out["scope"] = self.scope
        return out

    @classmethod
    def from_stored(cls, raw: bytes | str) -> HistoryEntry:
        data = json.loads(raw)
        duration = data.get("duration_s")
        return cls(
            at=float(data["at"]),
            action=str(data["action"]),
            actor=str(data["actor"]),
            comment=str(data.get("comment", "")),
            duration_s=int(duration) if duration not in (None, "") else None,
            scope=str(data["scope"]) if data.get("scope") not in (None, "") else None,
        )


def _text(fields: Mapping[str, str], name: str) -> str:
    return fields.get(name, "")


def _number(fields: Mapping[str, str], name: str) -> float | None:
    value = fields.get(name, "")
    return float(value) if value else None


@dataclass(frozen=True)
class AccessRequest:
    id: str
    kind: RequestKind
    org: str
    member: str  # the customer member to act as
    requester: Principal  # staff (requests) or the customer admin (impersonation)
    justification: str
    requested_duration_s: int
    requested_scope: Scope
    duration_s: int  # in force: the shortest any approver allowed
    scope: Scope  # in force: the narrowest any approver allowed
    approvals_required: int
    approvals: tuple[str, ...]  # member ids that approved, in no particular order
    state: RequestState
    created_at: float
    lapses_at: float
    starts_at: float | None = None
    expires_at: float | None = None
    ended_at: float | None = None
    ended_by: str = ""

    @classmethod
    def from_stored(
        cls, raw: Mapping[bytes | str, bytes | str], approvals: set[bytes | str] | None = None
    ) -> AccessRequest:
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        requester = Principal(
            kind=PrincipalKind(fields["requester_kind"]),
            id=fields["requester_id"],
            email=_text(fields, "requester_email"),
            name=_text(fields, "requester_name"),
            org=fields.get("requester_org") or None,
            role=fields.get("requester_role") or None,
        )
        return cls(
            id=fields["id"],
            kind=RequestKind(fields["kind"]),
            org=fields["org"],
            member=fields["member"],
            requester=requester,
            justification=_text(fields, "justification"),
            requested_duration_s=int(fields["requested_duration_s"]),
            requested_scope=Scope(fields["requested_scope"]),
            duration_s=int(fields["duration_s"]),
            scope=Scope(fields["scope"]),
            approvals_required=int(fields["approvals_required"]),
            approvals=tuple(sorted(as_text(a) for a in approvals or ())),
            state=RequestState(fields["state"]),
            created_at=float(fields["created_at"]),
            lapses_at=float(fields["lapses_at"]),
            starts_at=_number(fields, "starts_at"),
            expires_at=_number(fields, "expires_at"),
            ended_at=_number(fields, "ended_at"),
            ended_by=_text(fields, "ended_by"),
        )

    def is_live(self, now: float) -> bool:
        """Approved, started and not yet over, judged by the caller's clock."""
        return (
            self.state is RequestState.APPROVED
            and self.starts_at is not None
            and self.expires_at is not None
            and self.starts_at <= now < self.expires_at
        )

    def acting_grant(self) -> ActingGrant:
        if self.starts_at is None or self.expires_at is None:
            raise ValueError(f"request {self.id} is not a grant (state {self.state})")
        return ActingGrant(
            grant_id=self.id,
            org=self.org,
            member_id=self.member,
            actor=self.requester,
            scope=self.scope,
            starts_at=self.starts_at,
            expires_at=self.expires_at,
        )

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The API's view of a request; `state` is as stored, `live` as judged at `now`."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "org": self.org,
            "member": self.member,
            "requester": {
                "kind": self.requester.kind.value,
                "id": self.requester.id,
                "email": self.requester.email,
                "name": self.requester.name,
            },
            "justification": self.justification,
            "requested_duration_s": self.requested_duration_s,
            "requested_scope": self.requested_scope.value,
            "duration_s": self.duration_s,
            "scope": self.scope.value,
            "approvals_required": self.approvals_required,
            "approvals": list(self.approvals),
            "state": self.state.value,
            "created_at": self.created_at,
            "lapses_at": self.lapses_at,
            "starts_at": self.starts_at,
            "expires_at": self.expires_at,
            "ended_at": self.ended_at,
            "ended_by": self.ended_by or None,
        }
        if now is not None:
            out["live"] = self.is_live(now)
        return out
