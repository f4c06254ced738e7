"""``compartments.control(proxy)``: the framework's handle on one compartment (its pid,
restarts, violations, timeouts, awaitable calls, closing), kept apart from the proxy so
that every public name on the proxy is the user's.
"""

from __future__ import annotations

from typing import Any, Generic, ParamSpec, TypeVar, cast

from ._learn import LearnedPolicy
from ._proxy import AsyncMethods, CompartmentFunction, Proxy
from ._report import Violation
from ._supervised import (
    Supervised,
)

__all__ = ["Control", "control"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Control(Generic[T]):
    """The framework's controls for one compartment: ``compartments.control(proxy)``.

    Kept apart from the proxy so that every public name on the proxy is the user's."""

    __slots__ = ("_target",)

    def __init__(self, target: Proxy | CompartmentFunction[..., Any]) -> None:
        self._target = target

    def _supervised(self) -> Supervised:
        return self._target._supervised_instance()

    @property
    def pid(self) -> int | None:
        """The current child's process id (None while none runs)."""
        if isinstance(self._target, CompartmentFunction):
            return self._target.pid
        return self._supervised().pid

    @property
    def restarts(self) -> int:
        """How many times the child was restarted after a crash."""
        return self._supervised().restarts

    @property
    def violations(self) -> list[Violation]:
        """The syscalls the current child was denied (the last 1,000)."""
        return list(self._supervised().violations.recent)

    def learned_policy(self) -> LearnedPolicy:
        """With ``learn=True``: the minimal policy for what the workload did so far."""
        return self._supervised().learned_policy()

    def with_timeout(self, seconds: float | None) -> T:
        """The same compartment, called with a different per-call timeout."""
        target: Any = self._target
        if seconds is not None and seconds <= 0:
            raise ValueError(f"timeout must be positive or None, got {seconds!r}")
        if isinstance(target, CompartmentFunction):
            copy: Any = target.with_timeout(seconds)
        else:
            copy = type(target)(target._compartment_supervised, seconds)
        return cast(T, copy)

    @property
    def aio(self) -> Any:
        """Awaitable calls: ``await control(store).aio.get()``, or ``control(fn).aio(x)``."""
        target = self._target
        if isinstance(target, CompartmentFunction):
            return target.aio
        return AsyncMethods(target._compartment_supervised, target._compartment_timeout)

    def close(self) -> None:
        """Stop the child: EOF, then SIGKILL after a grace period. No zombie remains.
        A class's own ``close()`` is not called: call it first if it should run."""
        target = self._target
        if isinstance(target, CompartmentFunction):
            target.close()
        else:
            target._compartment_supervised.close()

    def __enter__(self) -> Control[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<control of {self._target!r}>"


def control(target: T) -> Control[T]:
    """The framework's controls for a compartment proxy or function: its pid, restarts,
    violations, learned policy, a copy with another timeout, awaitable calls, and close."""
    if isinstance(target, (Proxy, CompartmentFunction)):
        return Control(target)
    raise TypeError(
        "compartments.control() takes a compartment proxy or a @compartment function, got "
        f"{type(target).__name__}"
    )
