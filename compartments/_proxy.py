"""The calling side users see: ``@compartment``, function wrappers and class proxies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _wire
from ._checks import check_rules, check_target
from ._connection import Connection
from ._isolate import Isolate
from ._learn import LearnedPolicy, learning_everything
from ._supervised import (
    GRACE_PERIOD,
    SPENT_GRACE,
    Definition,
    Remote,
    RestartPolicy,
    RestartSpec,
    Supervised,
    restart_policy,
    send_call,
)
from ._violations import Violation
from .errors import CallTimeout

__all__ = ["CompartmentClass", "CompartmentFunction", "Proxy", "RestartPolicy", "compartment"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# -- what users hold ------------------------------------------------------------------

_aio_executor: concurrent.futures.ThreadPoolExecutor | None = None
_aio_lock = threading.Lock()


def _aio_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _aio_executor
    with _aio_lock:
        if _aio_executor is None:
            _aio_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="compartments-aio"
            )
        return _aio_executor


async def _in_thread(call: Callable[[], T]) -> T:
    """Await a blocking call. Cancelling stops the wait, never the call mid-frame."""
    return await asyncio.get_running_loop().run_in_executor(_aio_pool(), call)


_background_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _background() -> concurrent.futures.ThreadPoolExecutor:
    global _background_pool
    with _aio_lock:
        if _background_pool is None:
            _background_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="compartments-submit"
            )
        return _background_pool


#: How often a thread waiting on another's settling of a Future checks its own deadline.
_SETTLE_SLICE = 0.05


class _PendingCall(concurrent.futures.Future[Any]):
    """A Future for a call already sent; waiting on it reads the channel."""

    def __init__(
        self, supervised: Supervised, conn: Connection, pending: Any, timeout: float | None
    ) -> None:
        super().__init__()
        self._call_state = (supervised, conn, pending, timeout)
        self._settle_lock = threading.Lock()

    def _settle(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        # Another thread may be settling it: wait for that in slices, so our own timeout
        # holds, and take over if that thread stops waiting first.
        while not self._settle_lock.acquire(timeout=_SETTLE_SLICE):
            if self.done():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise concurrent.futures.TimeoutError()
        try:
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            self._settle_holding_lock(timeout)
        finally:
            self._settle_lock.release()

    def _settle_holding_lock(self, timeout: float | None) -> None:
        if self.done():
            return
        supervised, conn, pending, call_timeout = self._call_state
        waiting_only = timeout is not None and (call_timeout is None or timeout < call_timeout)
        try:
            value = conn.wait(
                pending, "__call__", timeout if waiting_only else call_timeout,
                abandon_on_timeout=not waiting_only,
            )  # fmt: skip
        except CallTimeout as late:
            if waiting_only:
                raise concurrent.futures.TimeoutError() from None
            supervised._kill_stuck(conn, "__call__", call_timeout)
            self.set_exception(late)
        except BaseException as exc:
            self.set_exception(exc)
        else:
            self.set_result(value)

    def result(self, timeout: float | None = None) -> Any:
        self._settle(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._settle(timeout)
        return super().exception(0)


class _AsyncMethods:
    """``await proxy.aio.method(...)``: the same calls, awaitable."""

    def __init__(self, call: Callable[[str, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        self._call = call

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        async def remote(*args: Any, **kwargs: Any) -> Any:
            return await _in_thread(functools.partial(self._call, method, args, kwargs))

        return remote

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await _in_thread(functools.partial(self._call, "__call__", args, kwargs))


class CompartmentFunction(Remote, Generic[P, R]):
    """A module-level function that runs in its own sealed child process."""

    def __init__(
        self,
        definition: Definition,
        timeout: float | None = None,
        owner: CompartmentFunction[P, R] | None = None,
    ) -> None:
        self._definition = definition
        self._timeout = timeout
        self._owner = owner
        self._lock = threading.Lock()
        self._supervised: Supervised | None = None
        self._worker_set: Any = None
        functools.update_wrapper(self, definition.target)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call("__call__", args, kwargs)  # type: ignore[no-any-return]

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._definition.fresh:
            once = Supervised(self._definition, (), {})
            try:
                return once.call(method, args, kwargs, self._timeout)
            finally:
                once.close(SPENT_GRACE)
        if self._definition.workers > 1:
            return self._workers().call(method, args, kwargs, self._timeout)
        return self._supervised_instance().call(method, args, kwargs, self._timeout)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[R]:
        """Send the call now and return a Future: many calls in flight at once.

        The reply is read when someone waits on a Future (``result()``/``exception()``),
        so collect them; the compartment still runs the calls in order, back to back.
        """
        if self._definition.fresh or self._definition.workers > 1:
            return _background().submit(self._call, "__call__", args, kwargs)
        supervised = self._supervised_instance()
        conn = supervised.connection()
        timeout = self._timeout
        try:
            pending = send_call(
                self._definition, "__call__", args, kwargs,
                lambda params: conn.start_call("__call__", params, timeout=timeout),
            )  # fmt: skip
        except CallTimeout:
            supervised._kill_stuck(conn, "__call__", timeout)
            raise
        return _PendingCall(supervised, conn, pending, timeout)

    def _workers(self) -> Any:
        if self._owner is not None:
            return self._owner._workers()
        from ._pool import REPLACE_CRASHED, WorkerSet

        with self._lock:
            if self._worker_set is None:
                definition = dataclasses.replace(self._definition, restart=REPLACE_CRASHED)
                self._worker_set = WorkerSet(definition, definition.workers)
            return self._worker_set

    def _supervised_instance(self) -> Supervised:
        if self._owner is not None:
            return self._owner._supervised_instance()
        supervised = self._supervised
        if supervised is not None and not supervised._closed:
            return supervised
        with self._lock:
            if self._supervised is None or self._supervised._closed:
                self._supervised = Supervised(self._definition, (), {})
            return self._supervised

    @property
    def aio(self) -> _AsyncMethods:
        """``await parse.aio(data)``: call without blocking the event loop."""
        return _AsyncMethods(self._call)

    def with_timeout(self, seconds: float | None) -> CompartmentFunction[P, R]:
        """The same compartment, called with a different per-call timeout."""
        return CompartmentFunction(self._definition, seconds, owner=self._owner or self)

    @property
    def pid(self) -> int | None:
        if self._owner is not None:
            return self._owner.pid
        return None if self._supervised is None else self._supervised.pid

    @property
    def violations(self) -> list[Violation]:
        """The syscalls the current child was denied (the last 1,000)."""
        return list(self._supervised_instance().violations.recent)

    def learned_policy(self) -> LearnedPolicy:
        """With ``learn=True``: the minimal policy for what the workload did so far."""
        return self._supervised_instance().learned_policy()

    def close(self) -> None:
        """Stop the child; the next call starts a new one."""
        if self._owner is not None:
            return self._owner.close()
        with self._lock:
            supervised, self._supervised = self._supervised, None
            workers, self._worker_set = self._worker_set, None
        if supervised is not None:
            supervised.close()
        if workers is not None:
            workers.close()

    def __repr__(self) -> str:
        return f"<compartment function {self._definition.name}>"


class Proxy(Remote):
    """The parent's handle on one instance of a compartment class."""

    def __init__(self, supervised: Supervised, methods: frozenset[str], timeout: float | None):
        self._supervised = supervised
        self._methods = methods
        self._timeout = timeout

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or method not in self._methods or method == "close":
            raise AttributeError(
                f"compartment class `{self._supervised.name}` has no public method `{method}`"
            )
        supervised, timeout = self._supervised, self._timeout

        def remote(*args: Any, **kwargs: Any) -> Any:
            return supervised.call(method, args, kwargs, timeout)

        remote.__name__ = method
        return remote

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return getattr(self, method)(*args, **kwargs)

    def _supervised_instance(self) -> Supervised:
        return self._supervised

    @property
    def aio(self) -> _AsyncMethods:
        """``await store.aio.get()``: call without blocking the event loop."""
        return _AsyncMethods(self._call)

    def with_timeout(self, seconds: float | None) -> Proxy:
        return Proxy(self._supervised, self._methods, seconds)

    @property
    def pid(self) -> int | None:
        return self._supervised.pid

    @property
    def restarts(self) -> int:
        return self._supervised.restarts

    @property
    def violations(self) -> list[Violation]:
        """The syscalls this compartment was denied (the last 1,000)."""
        return list(self._supervised.violations.recent)

    def learned_policy(self) -> LearnedPolicy:
        """With ``learn=True``: the minimal policy for what the workload did so far."""
        return self._supervised.learned_policy()

    def close(self) -> None:
        """Stop the child: the class's own ``close()`` if it has one, then EOF, then
        SIGKILL after a grace period. No zombie remains."""
        if "close" in self._methods and self._supervised.is_running():
            try:
                self._supervised.call("close", (), {}, GRACE_PERIOD)
            finally:
                self._supervised.close()
            return
        self._supervised.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<compartment {self._supervised.name} pid={self.pid}>"


#: Names a proxy answers itself; ``close`` also runs the class's own ``close()`` first.
PROXY_ATTRIBUTES = frozenset(
    {"aio", "learned_policy", "pid", "restarts", "violations", "with_timeout"}
)


class CompartmentClass(Generic[T]):
    """A class whose instances each live in their own sealed child process."""

    def __init__(self, definition: Definition) -> None:
        self._definition = definition
        self._methods = frozenset(
            name
            for name, member in inspect.getmembers(definition.target)
            if not name.startswith("_") and callable(member)
        )
        clash = sorted(self._methods & PROXY_ATTRIBUTES)
        if clash:
            raise TypeError(
                f"compartment class `{definition.name}` defines {', '.join(clash)}, which the "
                f"proxy itself provides ({', '.join(sorted(PROXY_ATTRIBUTES))}); rename it"
            )
        functools.update_wrapper(self, definition.target, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Proxy:
        supervised = Supervised(self._definition, args, kwargs)
        supervised.connection()  # spawn now: __init__ errors belong to the caller
        return Proxy(supervised, self._methods, self._definition.timeout)

    def __repr__(self) -> str:
        return f"<compartment class {self._definition.name}>"


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


@overload
def compartment(target: type[T], /) -> CompartmentClass[T]: ...  # type: ignore[overload-overlap]
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
    max_message: int = _wire.DEFAULT_MAX_MESSAGE,
    learn: bool = False,
    workers: int = 1,
    report_violations: bool = True,
    isolate: Isolate | None = None,
) -> Callable[[Any], Any]: ...


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
    max_message: int = _wire.DEFAULT_MAX_MESSAGE,
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
