"""The policy language's exception types.

PolicyLanguageError
 ├── PolicyError    policy files could not be loaded; `.problems` holds every problem at once
 └── PathRejected   a request path is refused before judging (the gateway answers 400);
                    `.reason` says why, for people
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.source import Problem


class PolicyLanguageError(Exception):
    """Base of every error the policy language raises on purpose."""


class PolicyError(PolicyLanguageError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PathRejected(PolicyLanguageError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
