"""``@compartment``: a function or class, with its policy and runtime options, turned into
a ``CompartmentFunction`` or a ``CompartmentClass`` whose instances are proxies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from .._isolation._isolate import Isolate
from .._policy._checks import check_rules, check_target
from .._wire import _frames
from ._definition import Definition, RestartSpec, restart_policy
from ._learn import learning_everything
from ._proxy import CompartmentClass, CompartmentFunction

__all__ = ["compartment"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _check_isolate(isolate: object) -> None:
    if isolate is None:
        return
    if not isinstance(isolate, Isolate):
        raise TypeError(f"isolate= takes an Isolate, got {type(isolate).__name__}")
    if isolate.timeout is not None or isolate.pass_fds:
        raise ValueError(
            "a compartment's Isolate takes no timeout or pass_fds: use @compartment's "
            "timeout=, and pass fds as arguments"
        )


class _Decorator(Protocol):
    """What ``@compartment(rules=...)`` returns: it keeps the decorated object's types."""

    @overload
    def __call__(self, target: type[T], /) -> type[T]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, target: Callable[P, R], /) -> CompartmentFunction[P, R]: ...


@overload
def compartment(target: type[T], /) -> type[T]: ...  # type: ignore[overload-overlap]
@overload
def compartment(target: Callable[P, R], /) -> CompartmentFunction[P, R]: ...
@overload
def compartment(
    target: None = None,
    /,
    *,
    rules: Any = (),
    name: str | None = None,
    timeout: float | None = None,
    restart: RestartSpec = "never",
    setup: Callable[[], object] | None = None,
    fresh: bool = False,
    max_message: int = _frames.DEFAULT_MAX_MESSAGE,
    learn: bool = False,
    workers: int = 1,
    report_violations: bool = True,
    isolate: Isolate | None = None,
) -> _Decorator: ...


def compartment(
    target: Any = None,
    /,
    *,
    rules: Any = (),
    name: str | None = None,
    timeout: float | None = None,
    restart: RestartSpec = "never",
    setup: Callable[[], object] | None = None,
    fresh: bool = False,
    max_message: int = _frames.DEFAULT_MAX_MESSAGE,
    learn: bool = False,
    workers: int = 1,
    report_violations: bool = True,
    isolate: Isolate | None = None,
) -> Any:
    """Run a module-level function or class in its own process, sealed by ``rules``.

    ``rules`` is a list of RuleSets (empty: pure computation), or a callable returning
    one, evaluated in the child after setup (for a class, it gets the instance), so a
    policy can name fds the setup opened.

    ``workers=N`` (functions) spreads calls over N sealed processes; a crashed worker
    fails only its own call and is replaced.

    ``isolate=Isolate(...)`` runs the compartment in new user, mount, PID, IPC, UTS (and
    network) namespaces on a size-limited tmpfs root with read-only binds (see Isolate).

    ``report_violations=False`` answers denied syscalls with a plain EPERM in the kernel,
    without the parent's listener (and without PolicyViolation reports).

    ``learn=True`` is UNSAFE: denied syscalls are allowed and recorded, and
    ``learned_policy()`` (also printed to stderr at close) suggests the rules to use.
    """

    def decorate(obj: Any) -> Any:
        check_target(obj)  # a lambda, a nested or guarded def, python -c: refused now
        qualname = obj.__qualname__
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if setup is not None and inspect.isclass(obj):
            raise TypeError("setup= is for function compartments; a class sets up in __init__")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        _check_isolate(isolate)
        if workers > 1 and (inspect.isclass(obj) or fresh):
            raise TypeError("workers= is for function compartments without fresh=True")
        learning = learn or learning_everything()
        definition = Definition(
            target=obj,
            rules=check_rules(rules),
            name=name or qualname,
            timeout=timeout,
            restart=restart_policy(restart),
            setup=setup,
            fresh=fresh,
            max_message=max_message,
            learn=learning,
            workers=workers,
            report_violations=report_violations or learning,
            isolate=isolate,
        )
        if inspect.isclass(obj):
            return CompartmentClass(definition)
        if callable(obj):
            return CompartmentFunction(definition, timeout)
        raise TypeError(f"@compartment decorates a function or a class, not {type(obj)}")

    return decorate(target) if target is not None else decorate
