"""The one Redis key schema. Every key the gateway reads or writes is named here.

Ids are validated before they reach these functions (`[A-Za-z0-9._-]{1,64}`), so a key
can never be forged by an id containing `:`. TTLs set on these keys are garbage
collection only; validity is always decided by the Clock against stored timestamps.
"""

from __future__ import annotations

P = "gw:"


# --- accounts -------------------------------------------------------------------------
def staff(staff_id: str) -> str:
    return f"{P}staff:{staff_id}"


def staff_index() -> str:
    return f"{P}staff"


def org(org_id: str) -> str:
    return f"{P}org:{org_id}"


def org_index() -> str:
    return f"{P}orgs"


def member(org_id: str, member_id: str) -> str:
    return f"{P}org:{org_id}:member:{member_id}"


def org_members(org_id: str) -> str:
    return f"{P}org:{org_id}:members"


def org_approvers(org_id: str) -> str:
    return f"{P}org:{org_id}:approvers"


def account_by_email(email: str) -> str:
    return f"{P}email:{email.lower()}"


def totp_last_step(principal_key: str) -> str:
    return f"{P}totp-step:{principal_key}"


def password_failures_account(principal_or_email: str) -> str:
    return f"{P}throttle:pw:acct:{principal_or_email}"


def password_failures_address(address: str) -> str:
    return f"{P}throttle:pw:addr:{address}"


def totp_failures(principal_key: str) -> str:
    return f"{P}throttle:totp:{principal_key}"


def enrolment(token_hash: str) -> str:
    return f"{P}enrol:{token_hash}"


# --- sessions -------------------------------------------------------------------------
def console_session(session_id: str) -> str:
    return f"{P}session:{session_id}"


def principal_sessions(principal_key: str) -> str:
    return f"{P}sessions-of:{principal_key}"


def app_session(app_session_id: str) -> str:
    return f"{P}app-session:{app_session_id}"


def app_sessions_of(console_session_id: str) -> str:
    return f"{P}app-sessions-of:{console_session_id}"


def handoff_code(code_hash: str) -> str:
    return f"{P}handoff:{code_hash}"


def session_epoch(principal_key: str) -> str:
    """Counter bumped each time every session of the account is ended (no TTL: state)."""
    return f"{P}session-epoch:{principal_key}"


# --- access workflow ------------------------------------------------------------------
def access_request(request_id: str) -> str:
    return f"{P}request:{request_id}"


def request_history(request_id: str) -> str:
    return f"{P}request:{request_id}:history"


def org_requests(org_id: str) -> str:
    return f"{P}org:{org_id}:requests"


def staff_requests(staff_id: str) -> str:
    return f"{P}staff:{staff_id}:requests"


def pending_requests() -> str:
    return f"{P}requests:pending"


def live_grants() -> str:
    return f"{P}grants:live"


def live_grant(actor_key: str, org_id: str) -> str:
    return f"{P}live-grant:{actor_key}:{org_id}"


def grant_events_channel() -> str:
    return f"{P}events:grants"


def session_events_channel() -> str:
    return f"{P}events:sessions"


def request_approvals(request_id: str) -> str:
    """Set of member ids that approved a pending request (each approver counts once)."""
    return f"{P}request:{request_id}:approvals"


def org_live_grants(org_id: str) -> str:
    """Set of live grant ids of one org (for revoke-all)."""
    return f"{P}org:{org_id}:live-grants"


def usage_flush(token: str) -> str:
    """Marker of one applied batch of request counts (so a retried batch adds nothing twice)."""
    return f"{P}access:usage-flush:{token}"


def access_outbox() -> str:
    """Stream of workflow events written by the transition scripts, for notices and audit."""
    return f"{P}access:outbox"


def mail_queue() -> str:
    return f"{P}mail:queue"


def mail_message(message_id: str) -> str:
    return f"{P}mail:{message_id}"


def mail_undelivered() -> str:
    return f"{P}mail:undelivered"


# --- audit ----------------------------------------------------------------------------
def audit_stream() -> str:
    return f"{P}audit:frames"


def audit_last_checkpoint() -> str:
    return f"{P}audit:last-checkpoint"


def audit_checkpoints_by_stream() -> str:
    """Hash: each writer stream's last checkpoint mark not yet cited by a newer stream (the
    audit writer derives this name from `audit_last_checkpoint`; audit/ never imports us)."""
    return f"{audit_last_checkpoint()}:by-stream"


# --- keys every instance shares -----------------------------------------------------------
def key_fingerprints() -> str:
    """Hash: shared secret key name -> its one-way fingerprint (gateway.key_agreement)."""
    return f"{P}keys:fingerprints"


def assertion_key_ids() -> str:
    """Set: the kid of every assertion key an instance has published (gateway.key_agreement)."""
    return f"{P}keys:assertion-kids"
