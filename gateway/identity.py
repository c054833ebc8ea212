"""Who is acting and as whom: the identity facts stages hand to each other and to the audit.

A `Principal` is whoever logged in (vendor staff, or a member of a customer org). An
`ActingGrant` is the live permission to act as one customer member: approved access for
staff, or a customer admin's own audited impersonation of a member of their org.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from policies.model import Scope


class PrincipalKind(StrEnum):
    STAFF = "staff"
    MEMBER = "member"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    id: str
    email: str
    name: str
    org: str | None = None  # members only
    role: str | None = None  # members only: "admin" | "member"

    @property
    def key(self) -> str:
        """Stable, unique reference: `staff:sam` or `member:acme:alice`."""
        if self.kind is PrincipalKind.STAFF:
            return f"staff:{self.id}"
        return f"member:{self.org}:{self.id}"


@dataclass(frozen=True)
class ActingGrant:
    """A live grant, as checked against Redis for this very request."""

    grant_id: str
    org: str
    member_id: str  # the customer user acted as
    actor: Principal  # the staff member, or the customer admin acting
    scope: Scope
    starts_at: float
    expires_at: float
