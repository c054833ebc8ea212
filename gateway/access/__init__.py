"""The access workflow: requests, approvals, grants, revocation, approvers and notices.

`AccessStore` makes every state change (one atomic Redis script each, decided by the Clock);
`Sweeper` makes the time-driven ones; `Notices` turns the outbox of events into queued mail
and audit records; `MailSender` delivers the queue over SMTP with retries.
"""

from gateway.access.errors import (
    AccessConflict,
    AccessError,
    AccessForbidden,
    AccessInvalid,
    AccessNotFound,
    AccessUnavailable,
)
from gateway.access.mail import MailMessage, MailQueue
from gateway.access.model import AccessRequest, HistoryEntry, RequestKind, RequestState
from gateway.access.notices import Notices
from gateway.access.sender import MailSender
from gateway.access.settings import OrgSettings, load_settings, save_settings
from gateway.access.store import AccessStore, GrantCheck
from gateway.access.sweeper import Sweeper

__all__ = [
    "AccessConflict",
    "AccessError",
    "AccessForbidden",
    "AccessInvalid",
    "AccessNotFound",
    "AccessRequest",
    "AccessStore",
    "AccessUnavailable",
    "GrantCheck",
    "HistoryEntry",
    "MailMessage",
    "MailQueue",
    "MailSender",
    "Notices",
    "OrgSettings",
    "RequestKind",
    "RequestState",
    "Sweeper",
    "load_settings",
    "save_settings",
]
