"""What a compartment is before any process runs it: the ``Definition`` that
``@compartment`` builds (shared by the parent and the zygote), and its ``RestartPolicy``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._policy._rules import ruleset_to_data

__all__ = [
    "GRACE_PERIOD",
    "NEVER",
    "SPENT_GRACE",
    "Definition",
    "RestartPolicy",
    "RestartSpec",
    "restart_policy",
]

GRACE_PERIOD = 2.0
#: For a child that has served all it will serve (a spent Pool worker, a fresh=True call):
#: time to flush its output, not to hold the caller's result past its timeout.
SPENT_GRACE = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a crashed compartment on its next call, at most ``max_restarts`` times,
    waiting ``backoff`` seconds before the first restart and doubling each time."""

    max_restarts: int = 3
    backoff: float = 0.05
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"RestartPolicy values must not be negative: {self}")

    def delay(self, restarts_so_far: int) -> float:
        return float(min(self.backoff * (2**restarts_so_far), self.max_backoff))


NEVER = RestartPolicy(max_restarts=0)
RestartSpec = Literal["never", "on-crash"] | RestartPolicy


def restart_policy(restart: RestartSpec) -> RestartPolicy:
    if restart == "never":
        return NEVER
    if restart == "on-crash":
        return RestartPolicy()
    if isinstance(restart, RestartPolicy):
        return restart
    raise ValueError(f'restart must be "never", "on-crash" or a RestartPolicy, got {restart!r}')


@dataclass(frozen=True)
class Definition:
    """Everything ``@compartment`` was told, shared by the parent and the zygote."""

    target: Any
    rules: Any
    name: str
    timeout: float | None
    restart: RestartPolicy
    setup: Callable[[], object] | None
    fresh: bool
    max_message: int
    learn: bool = False
    workers: int = 1
    report_violations: bool = True
    #: An Isolate: run the compartment in its own namespaces on a tmpfs root.
    isolate: Any = None
    #: Only for measuring the filter's own cost in bench/; no public API reaches it.
    unsealed_for_benchmarks: bool = False

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.target)

    def rules_as_data(self) -> list[dict[str, object]] | None:
        """The policy as plain data for the child; None when only the child can compute it."""
        if callable(self.rules):
            return None
        return [ruleset_to_data(ruleset) for ruleset in self.rules]

    def parameter_names(self, method: str) -> list[str]:
        func: Any = self.target
        if self.is_class:
            func = getattr(self.target, method, None)
        try:
            names = list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return []
        return names[1:] if self.is_class and names[:1] == ["self"] else names
