"""The calling side users see: ``@compartment``, function wrappers and class proxies."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar

from . import _calls
from ._definition import SPENT_GRACE, Definition, RestartPolicy
from ._learn import LearnedPolicy
from ._report import Violation
from ._supervised import Remote, Supervised
from ._workers import REPLACE_CRASHED, WorkerSet

__all__ = ["CompartmentClass", "CompartmentFunction", "Proxy", "RestartPolicy"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# -- what users hold ------------------------------------------------------------------

_background_pool: concurrent.futures.ThreadPoolExecutor | None = None
_background_lock = threading.Lock()


def _background() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the calls that block before they are sent: a ``fresh=True`` call spawns
    its child first, and ``workers=N`` waits for a free worker."""
    global _background_pool
    with _background_lock:
        if _background_pool is None:
            _background_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="compartments-submit"
            )
        return _background_pool


class _AsyncFunction(Generic[P, R]):
    """``await parse.aio(data)``: the same call, awaitable, holding no thread."""

    def __init__(self, function: CompartmentFunction[P, R]) -> None:
        self._function = function

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        function = self._function
        if function._definition.fresh or function._definition.workers > 1:
            return await asyncio.wrap_future(function.submit(*args, **kwargs))
        return await _calls.call_async(  # type: ignore[no-any-return]
            function._supervised_instance(), "__call__", args, kwargs, function._timeout
        )


class AsyncMethods:
    """``await compartments.control(store).aio.get()``: a class's methods, awaitable."""

    def __init__(self, supervised: Supervised, timeout: float | None) -> None:
        self._supervised = supervised
        self._timeout = timeout

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if method.startswith("_") or method not in _methods_of(self._supervised.definition):
            raise AttributeError(
                f"compartment class `{self._supervised.name}` has no public method `{method}`"
            )
        supervised, timeout = self._supervised, self._timeout

        async def remote(*args: Any, **kwargs: Any) -> Any:
            return await _calls.call_async(supervised, method, args, kwargs, timeout)

        remote.__name__ = method
        return remote


class CompartmentFunction(Remote, Generic[P, R]):
    """A module-level function that runs in its own sealed child process.

    Besides calling it, ``fn.submit(...)`` returns a Future and ``await fn.aio(...)``
    awaits the call; ``compartments.control(fn)`` has the process controls."""

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
        self._worker_set: WorkerSet | None = None
        functools.update_wrapper(self, definition.target)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        supervised = self._supervised  # set once its child runs: then no mode to look at
        if supervised is None or supervised._closed:
            return self._call("__call__", args, kwargs)  # type: ignore[no-any-return]
        return supervised.call("__call__", args, kwargs, self._timeout)  # type: ignore[no-any-return]

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
        """Send the call now and return a Future that settles when the reply arrives:
        many calls in flight at once, run by the compartment in order, back to back.

        As with an Executor, the Future is running once the call is sent, so ``cancel()``
        then returns False; ``fresh=True`` and ``workers=N`` calls wait for a child first
        and can be cancelled until then. An argument that cannot cross raises here; a
        compartment that crashed or is stuck fails the Future."""
        if self._definition.fresh or self._definition.workers > 1:
            return _background().submit(self._call, "__call__", args, kwargs)
        return _calls.submit(self._supervised_instance(), "__call__", args, kwargs, self._timeout)

    def _workers(self) -> WorkerSet:
        if self._owner is not None:
            return self._owner._workers()
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
    def aio(self) -> _AsyncFunction[P, R]:
        """``await parse.aio(data)``: call without blocking the event loop or a thread."""
        return _AsyncFunction(self)

    def with_timeout(self, seconds: float | None) -> CompartmentFunction[P, R]:
        """The same compartment, called with a different per-call timeout."""
        return CompartmentFunction(self._definition, seconds, owner=self._owner or self)

    @property
    def pid(self) -> int | None:
        """The current child's process id (None before the first call)."""
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


#: What ``compartments.control(proxy)`` offers. A proxy itself answers none of these
#: names: they are the user's, and its methods by those names are remote calls.
CONTROL_NAMES = frozenset(
    {"aio", "close", "learned_policy", "pid", "restarts", "violations", "with_timeout"}
)


class Proxy(Remote):
    """The parent's handle on one instance of a compartment class.

    Its public attributes are exactly the class's public methods, each a remote call;
    the framework's own controls are in :func:`compartments.control`. ``with proxy:``
    stops the child at the end of the block."""

    _compartment_class: ClassVar[CompartmentClass[Any] | None] = None

    def __init__(self, supervised: Supervised, timeout: float | None) -> None:
        self._compartment_supervised = supervised
        self._compartment_timeout = timeout

    def __getattr__(self, name: str) -> Any:
        who = f"compartment class `{self._compartment_supervised.name}`"
        if name in CONTROL_NAMES:
            raise AttributeError(
                f"{who} has no method `{name}`; the framework's `{name}` is "
                f"`compartments.control(proxy).{name}`"
            )
        raise AttributeError(f"{who} has no public method `{name}`")

    def _supervised_instance(self) -> Supervised:
        return self._compartment_supervised

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._compartment_supervised.close()

    def __repr__(self) -> str:
        supervised = self._compartment_supervised
        return f"<compartment {supervised.name} pid={supervised.pid}>"


def _remote_method(definition: Definition, name: str) -> Callable[..., Any]:
    """A proxy method: the original's name, docstring and signature, calling remotely."""

    def remote(self: Proxy, /, *args: Any, **kwargs: Any) -> Any:
        return self._compartment_supervised.call(name, args, kwargs, self._compartment_timeout)

    original = getattr(definition.target, name)
    with contextlib.suppress(AttributeError, TypeError):
        functools.update_wrapper(remote, original)
    remote.__dict__.pop("__wrapped__", None)  # help() and signature() show this one
    remote.__qualname__ = f"{definition.target.__qualname__}.{name}"
    with contextlib.suppress(TypeError, ValueError):
        signature = inspect.signature(original)
        if not inspect.isfunction(inspect.getattr_static(definition.target, name)):
            # a staticmethod or classmethod: its signature has no self; the proxy's has
            self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
            signature = signature.replace(
                parameters=[self_parameter, *signature.parameters.values()]
            )
        remote.__signature__ = signature  # type: ignore[attr-defined]
    return remote


def _methods_of(definition: Definition) -> frozenset[str]:
    return frozenset(
        name
        for name, member in inspect.getmembers(definition.target)
        if not name.startswith("_") and callable(member)
    )


class CompartmentClass(Generic[T]):
    """A class whose instances each live in their own sealed child process."""

    def __init__(self, definition: Definition) -> None:
        self._definition = definition
        methods = _methods_of(definition)
        namespace: dict[str, Any] = {
            name: _remote_method(definition, name) for name in methods
        }
        namespace["__doc__"] = definition.target.__doc__
        namespace["__module__"] = definition.target.__module__
        namespace["__qualname__"] = f"{definition.target.__qualname__} (compartment proxy)"
        namespace["_compartment_class"] = self
        self._proxy_type: type[Proxy] = type(definition.target.__name__, (Proxy,), namespace)
        functools.update_wrapper(self, definition.target, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        supervised = Supervised(self._definition, args, kwargs)
        supervised.connection()  # spawn now: __init__ errors belong to the caller
        return self._proxy_type(supervised, self._definition.timeout)

    def __instancecheck__(self, instance: object) -> bool:
        return isinstance(instance, self._proxy_type)

    def __repr__(self) -> str:
        return f"<compartment class {self._definition.name}>"
