"""The account package's exception types.

AccountError                    base of every refusal or failure raised on purpose here
 ├── InvalidAccountInput        an id, email, name, role or secret is malformed
 ├── AccountNotFound            no such org, staff member or member
 ├── AccountConflict            the id or email is already taken by someone else
 ├── DirectoryError             a directory file could not be imported; carries every problem
 ├── SecretKeyError             the TOTP encryption key is missing, unreadable or malformed
 └── LoginRefused               a login step said no; carries a stable code, status and reason
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.identity import Principal
from policies.source import Problem


class AccountError(Exception):
    """Base of every error raised on purpose by gateway.accounts."""


class InvalidAccountInput(AccountError):
    pass


class AccountNotFound(AccountError):
    pass


class AccountConflict(AccountError):
    pass


class SecretKeyError(AccountError):
    pass


class DirectoryError(AccountError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LoginRefused(AccountError):
    """One refusal of a login step, as the client may see it.

    `error` is the stable machine code (`invalid_credentials`, `too_many_attempts`,
    `invalid_totp`, `account_locked`, `account_disabled`, `enrolment_required`,
    `sessions_ended`, ...), `reason` is for people and never says more than the step has
    earned. `principal` names the account once its password was proven (for the audit
    record only; never shown to the client).
    """

    def __init__(
        self,
        error: str,
        reason: str,
        *,
        status: int,
        retry_after: int | None = None,
        principal: Principal | None = None,
    ) -> None:
        super().__init__(f"{error}: {reason}")
        self.error = error
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.principal = principal
