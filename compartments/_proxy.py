"""The calling side users see: ``@compartment``, function wrappers and class proxies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from . import _largebytes, _wire
from ._connection import Connection
from ._isolate import Isolate
from ._learn import BANNER, LearnedPolicy, learn_policy
from ._rules import ruleset_to_data
from ._supervisor import START_TIMEOUT, ChildProcess, get_zygote, new_connection
from ._violations import Violation, ViolationLog, log
from ._wire import Fd, PeerRef
from .errors import CallTimeout, CompartmentClosed, CompartmentCrashed

__all__ = ["CompartmentClass", "CompartmentFunction", "Proxy", "RestartPolicy", "compartment"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

GRACE_PERIOD = 2.0


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


def _restart_policy(restart: RestartSpec) -> RestartPolicy:
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


# -- one running compartment ---------------------------------------------------------


class Supervised:
    """A compartment instance: its current child process, restarts, and closing."""

    def __init__(self, definition: Definition, args: Sequence[Any], kwargs: dict[str, Any]):
        self.definition = definition
        self.name = definition.name
        self._args = list(args)
        self._kwargs = dict(kwargs)
        self._lock = threading.RLock()
        self._child: ChildProcess | None = None
        self._connection: Connection | None = None
        self._closed = False
        self.restarts = 0
        self.generation = 0
        self.violations = ViolationLog(self.name, learn=definition.learn)
        if definition.learn:
            log.warning(BANNER.format(name=self.name))
        _check_arguments(definition, "__init__", self._args, self._kwargs)
        _all_supervised.add(self)

    # -- lifecycle ---------------------------------------------------------------------

    def connection(self) -> Connection:
        conn = self._connection  # the common case needs no lock: a live child
        if conn is not None and conn.failure is None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise CompartmentClosed(f"compartment `{self.name}` is closed")
            conn = self._connection
            if conn is not None and conn.failure is None:
                return conn
            if conn is not None:
                self._restart_or_raise(conn.failure)
            self._start()
            assert self._connection is not None
            return self._connection

    def _restart_or_raise(self, failure: BaseException | None) -> None:
        policy = self.definition.restart
        if self.restarts >= policy.max_restarts:
            raise failure or CompartmentCrashed(self.name, "it is no longer running")
        time.sleep(policy.delay(self.restarts))
        self.restarts += 1

    def _start(self) -> None:
        definition = self.definition
        zygote = get_zygote(definition.max_message)
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with child_end:
            args, kwargs, brokered = _broker_peers(self.name, self._args, self._kwargs)
            spec = {
                "name": self.name,
                "module": definition.target.__module__,
                "qualname": definition.target.__qualname__,
                "channel": Fd(child_end),
                "args": args,
                "kwargs": kwargs,
                "max_message": definition.max_message,
                "rules": definition.rules_as_data(),
                "listener": definition.report_violations,
                "unsealed_for_benchmarks": definition.unsealed_for_benchmarks,
                "isolate": None if definition.isolate is None else definition.isolate.to_data(),
            }
            try:
                pid = zygote.spawn(spec)
            finally:
                for sock in brokered:
                    sock.close()
        child = ChildProcess(self.name, pid, zygote)
        connection = new_connection(
            parent_end, self.name, definition.max_message, self.violations.on_notification
        )
        connection.set_failure_explainer(child.explain)
        self.violations.attach(connection)
        try:
            connection.call("$start", [], timeout=START_TIMEOUT)
        except BaseException:
            connection.close()
            child.reap(GRACE_PERIOD)
            raise
        self._child, self._connection = child, connection
        self.generation += 1

    def learned_policy(self) -> LearnedPolicy:
        return learn_policy(self.violations.observed)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            child, conn = self._child, self._connection
            self._child = self._connection = None
        try:
            self._stop(child, conn)
        finally:
            if self.definition.learn and self.violations.observed:
                print(f"# learned policy for compartment `{self.name}`:", file=sys.stderr)
                print(self.learned_policy().code, file=sys.stderr)

    def _stop(self, child: ChildProcess | None, conn: Connection | None) -> None:
        if conn is not None:
            conn.channel.shutdown()
        if child is not None:
            child.reap(GRACE_PERIOD)
        if conn is not None:
            conn.close()
        _all_supervised.discard(self)

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def is_running(self) -> bool:
        conn = self._connection
        return not self._closed and conn is not None and conn.failure is None

    # -- calling -------------------------------------------------------------------------

    def call(
        self, method: str, args: Sequence[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        conn = self.connection()
        args, kwargs, brokered = _broker_peers(self.name, args, kwargs)
        try:
            pending = _start_call(self.definition, conn, method, args, kwargs)
        finally:
            for sock in brokered:
                sock.close()
        timeout = self.definition.timeout if timeout is None else timeout
        try:
            return conn.wait(pending, method, timeout)
        except CallTimeout:
            self._kill_stuck(conn, method, timeout)
            raise

    def _kill_stuck(self, conn: Connection, method: str, timeout: float | None) -> None:
        """A sequential compartment that missed a deadline blocks every later call."""
        child = self._child
        if child is not None and self._connection is conn:
            child.kill(f"call `{method}` timed out after {timeout:g}s")
            conn.fail(ConnectionResetError("killed after a timeout"))


def _start_call(
    definition: Definition,
    conn: Connection,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
) -> Any:
    args, kwargs, offloaded = _largebytes.offload(args, kwargs)
    try:
        return conn.start_call(method, [args, kwargs])
    except (TypeError, OverflowError):
        _check_arguments(definition, method, args, kwargs)
        raise
    finally:
        _largebytes.close_all(offloaded)  # sent (or not): the receiver has its own copy


def _check_arguments(
    definition: Definition, method: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> None:
    """Raise a TypeError naming the argument that cannot cross, if there is one."""
    names = definition.parameter_names(method)
    values = [*args, *kwargs.values()]
    labels = [*names[: len(args)], *kwargs]
    peers_ok = [v if not isinstance(v, _Remote) else None for v in values]
    shown = "__init__" if method == "__init__" else method
    label = definition.name if method == "__call__" else f"{definition.name}.{shown}"
    _wire.encode_request(0, label, peers_ok, names=labels)


def _broker_peers(
    receiver: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any], list[socket.socket]]:
    """Replace each compartment argument by a fresh direct channel to it."""
    if not args and not kwargs:
        return [], kwargs, []
    if not any(isinstance(v, _Remote) for v in (*args, *kwargs.values())):
        return list(args), kwargs, []
    brokered: list[socket.socket] = []

    def direct_line(value: Any) -> Any:
        if not isinstance(value, _Remote):
            return value
        target = value._supervised_instance()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        brokered.append(ours)
        with theirs:
            target.connection().call("$attach", [Fd(theirs), receiver], timeout=START_TIMEOUT)
        return PeerRef(Fd(ours), target.name)

    return (
        [direct_line(v) for v in args],
        {k: direct_line(v) for k, v in kwargs.items()},
        brokered,
    )


_all_supervised: weakref.WeakSet[Supervised] = weakref.WeakSet()


def close_all() -> None:
    for supervised in list(_all_supervised):
        supervised.close()


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


class _PendingCall(concurrent.futures.Future[Any]):
    """A Future for a call already sent; waiting on it reads the channel."""

    def __init__(
        self, supervised: Supervised, conn: Connection, pending: Any, timeout: float | None
    ) -> None:
        super().__init__()
        self._call_state = (supervised, conn, pending, timeout)
        self._settle_lock = threading.Lock()

    def _settle(self, timeout: float | None) -> None:
        with self._settle_lock:
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


class _Remote:
    """Anything that stands for a compartment and can be handed to another one."""

    def _supervised_instance(self) -> Supervised:
        raise NotImplementedError


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


class CompartmentFunction(_Remote, Generic[P, R]):
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
                once.close()
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
        pending = _start_call(self._definition, conn, "__call__", args, kwargs)
        return _PendingCall(supervised, conn, pending, self._timeout)

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


class Proxy(_Remote):
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
        qualname = getattr(obj, "__qualname__", "")
        if "<locals>" in qualname or not getattr(obj, "__module__", None):
            raise TypeError(
                f"@compartment needs a module-level function or class, got {qualname!r}: "
                "the child finds it by module and name"
            )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if setup is not None and inspect.isclass(obj):
            raise TypeError("setup= is for function compartments; a class sets up in __init__")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        _check_isolate(isolate)
        if workers > 1 and (inspect.isclass(obj) or fresh):
            raise TypeError("workers= is for function compartments without fresh=True")
        definition = Definition(
            target=obj,
            rules=rules if callable(rules) else tuple(rules),
            name=name or qualname,
            timeout=timeout,
            restart=_restart_policy(restart),
            setup=setup,
            fresh=fresh,
            max_message=max_message,
            learn=learn,
            workers=workers,
            report_violations=report_violations or learn,
            isolate=isolate,
        )
        if inspect.isclass(obj):
            return CompartmentClass(definition)
        if callable(obj):
            return CompartmentFunction(definition, timeout)
        raise TypeError(f"@compartment decorates a function or a class, not {type(obj)}")

    return decorate(target) if target is not None else decorate
