"""The login machinery of one app, bundled: `Logins` and `logins_of`.

`logins_of(request.config_dict)` gives the one `Logins` of an app (built on first use,
once Redis is open, and kept per Redis client), bundling the account services, the
console-session storage, return addresses, hand-off codes, app sessions and the
account-event recorder:

    logins = logins_of(request.config_dict)
    login = await logins.app_sessions.lookup(cookie, host)
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp_session import Session

from audit.record import Person, event_record
from gateway.accounts import Accounts, LoginRefused, ProvenPassword, open_accounts
from gateway.appkeys import AUDIT, CLOCK, CONFIG, POLICIES, REDIS, AuditSink
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.identity import Principal
from gateway.sessions.app_sessions import AppLogin, AppSessions
from gateway.sessions.console import ConsoleLogin
from gateway.sessions.ending import end_console_session
from gateway.sessions.handoff import HandoffCodes, ReturnAddresses, handoff_key
from gateway.sessions.records import sid_of

log = logging.getLogger(__name__)

__all__ = ["AppLogin", "ConsoleLogin", "Logins", "logins_of"]


@dataclass(frozen=True)
class Logins:
    config: GatewayConfig
    clock: Clock
    redis: aioredis.Redis
    accounts: Accounts
    addresses: ReturnAddresses
    codes: HandoffCodes
    app_sessions: AppSessions
    config_dict: Mapping[Any, Any]

    def is_routed_host(self, host: str) -> bool:
        """A host the policy routes now (never the console itself)."""
        host = host.lower().rstrip(".")
        if host == self.config.console_host:
            return False
        policies = self.config_dict.get(POLICIES)
        return policies is not None and policies.current.route_for(host) is not None

    @property
    def audit(self) -> AuditSink | None:
        return self.config_dict.get(AUDIT)

    async def record(
        self,
        action: str,
        *,
        outcome: str,
        principal: Principal | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        session_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an account event to the audit stream; raises if the stream refuses."""
        audit = self.audit
        if audit is None:
            raise RuntimeError("no audit writer: account events cannot be recorded")
        actor = None
        if principal is not None:
            actor = Person(
                principal.id,
                kind=principal.kind.value,
                email=principal.email,
                name=principal.name,
                org=principal.org,
                role=principal.role,
            )
        await audit.append(
            event_record(
                action,
                at=self.clock.now(),
                category="account",
                outcome=outcome,
                actor=actor,
                org=principal.org if principal else None,
                session_id=session_id,
                client_ip=client_ip,
                user_agent=user_agent,
                reason=reason,
                details=details,
            )
        )

    async def password(
        self,
        email: str,
        password: str,
        client_ip: str,
        *,
        action: str = "login.password",
        user_agent: str | None = None,
    ) -> ProvenPassword:
        """The password step of a login or enrolment; a refusal is recorded, then raised."""
        try:
            return await self.accounts.login.password(email, password, client_ip)
        except LoginRefused as exc:
            await self.record_failure(
                action,
                principal=exc.principal,  # only once the password was right
                client_ip=client_ip,
                user_agent=user_agent,
                reason=exc.error,
                details={"email": email.lower()},
            )
            raise

    async def record_login(
        self,
        session: Session,
        principal: Principal,
        *,
        via: str,
        client_ip: str,
        user_agent: str | None,
    ) -> bool:
        """Audit a completed login. False when the audit refuses: the new session is then
        invalidated, since there is no login without its record (fail closed)."""
        try:
            await self.record(
                "login",
                outcome="success",
                principal=principal,
                client_ip=client_ip,
                user_agent=user_agent,
                session_id=sid_of(str(session.identity)) if session.identity else None,
                details={"via": via},
            )
        except Exception:
            log.exception("login of %s could not be recorded", principal.key)
            # SECURITY: no login without its audit record. The session exists in Redis
            # already (its cookie was never sent): it ends here, out of its account's set.
            if session.identity is not None:
                await end_console_session(self.redis, sid_of(str(session.identity)), principal.key)
            session.invalidate()
            return False
        return True

    async def record_failure(self, action: str, **fields: Any) -> None:
        """Record a refusal; the refusal stands even if the audit cannot take it."""
        if fields.get("reason") == "account_locked":
            action = "lockout"  # the lock itself is the event auditors look for
        try:
            await self.record(action, outcome="failure", **fields)
        except Exception:
            log.exception("account event %s could not be recorded", action)


_BUILT: weakref.WeakKeyDictionary[aioredis.Redis, Logins] = weakref.WeakKeyDictionary()


def logins_of(config_dict: Mapping[Any, Any]) -> Logins:
    """The app's Logins (request.config_dict or the app); Redis must be open."""
    redis: aioredis.Redis = config_dict[REDIS]
    found = _BUILT.get(redis)
    if found is not None:
        return found
    config: GatewayConfig = config_dict[CONFIG]
    clock: Clock = config_dict[CLOCK]
    limits = config.sessions
    logins = Logins(
        config=config,
        clock=clock,
        redis=redis,
        accounts=open_accounts(redis, clock, config.data_dir),
        addresses=ReturnAddresses(handoff_key(config.data_dir), clock),
        codes=HandoffCodes(redis, clock, limits.handoff_code_ttl_s),
        app_sessions=AppSessions(redis, clock, limits),
        config_dict=config_dict,
    )
    _BUILT[redis] = logins
    return logins
