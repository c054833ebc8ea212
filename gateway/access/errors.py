"""The access workflow's exception types; each carries a stable `code` and an HTTP status.

GatewayError (gateway.errors)
 └── AccessError              code + reason; the API turns it into {error, reason}
      ├── AccessInvalid        422: the input breaks a rule (too short, over the maximum, ...)
      ├── AccessForbidden      403: the principal may not do this (not an approver, self-approval)
      ├── AccessNotFound       404: no such request/org/member, or not visible to the principal
      ├── AccessConflict       409: the request is in the wrong state, or a live grant exists
      └── AccessUnavailable    503: Redis could not be reached; nothing was changed
"""

from __future__ import annotations

from gateway.errors import GatewayError


class AccessError(GatewayError):
    status = 400

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class AccessInvalid(AccessError):
    status = 422


class AccessForbidden(AccessError):
    status = 403


class AccessNotFound(AccessError):
    status = 404


class AccessConflict(AccessError):
    status = 409


class AccessUnavailable(AccessError):
    status = 503
