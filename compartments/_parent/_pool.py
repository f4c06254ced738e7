"""Sealed workers: ``Pool`` (a concurrent.futures Executor) and ``@compartment(workers=N)``.

Both hand each call to a free worker; a worker that crashes fails only its own call and
is replaced on its next one. Functions run by a Pool must be importable at module level:
their modules are imported before the seal (``preload=``), since a sealed worker cannot
open source files.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .._child._target import MAIN_ALIAS, import_target_module
from .._policy._checks import check_static_rules
from .._wire import _frames
from ._definition import Definition
from ._proxy import CompartmentFunction
from ._workers import REPLACE_CRASHED, WorkerSet, checked_max_tasks

__all__ = ["Pool"]

T = TypeVar("T")

class _PoolWorker:
    """What each Pool worker runs: any preloaded module-level function, by name."""

    def __init__(self, preload: list[str]) -> None:
        for module in preload:
            import_target_module(module)

    def run(self, module: str, qualname: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        loaded = sys.modules.get(MAIN_ALIAS if module == "__main__" else module)
        if loaded is None:
            raise ImportError(f"module `{module}` was not preloaded into this Pool's workers")
        target: Any = loaded
        for part in qualname.split("."):
            target = getattr(target, part)
        target = (getattr(target, "_definition", None) and target._definition.target) or target
        return target(*args, **kwargs)


def _locate(fn: Callable[..., Any]) -> tuple[str, str]:
    if isinstance(fn, CompartmentFunction):
        fn = fn._definition.target
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise TypeError(
            f"a Pool runs module-level functions (found by module and name), got {fn!r}"
        )
    return module, qualname


class Pool(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose workers are sealed compartments.

    ``Pool(rules=[...], workers=N)``: ``submit``, ``map`` and ``shutdown`` as usual, with
    msgpack-native arguments and results. Workers start on the first submit and import
    the submitted function's module (and ``preload``) before sealing.

    Workers are reused across tasks and callers, so a compromised worker sees the tasks
    that follow. ``max_tasks_per_child=1`` (as in ``ProcessPoolExecutor``) gives every task
    a fresh worker, at the cost of a spawn (about a millisecond) per task.
    """

    def __init__(
        self,
        rules: Iterable[Any] = (),
        workers: int | None = None,
        *,
        preload: Iterable[str] = (),
        timeout: float | None = None,
        max_message: int = _frames.DEFAULT_MAX_MESSAGE,
        name: str = "Pool",
        max_tasks_per_child: int | None = None,
    ) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self._definition = Definition(
            target=_PoolWorker, rules=check_static_rules(rules), name=name, timeout=timeout,
            restart=REPLACE_CRASHED, setup=None, fresh=False, max_message=max_message,
        )  # fmt: skip
        self._count = count
        self._max_tasks = checked_max_tasks(max_tasks_per_child)
        self._preload = list(preload)
        self._workers: WorkerSet | None = None
        self._lock = threading.Lock()
        self._shutdown = False
        self._dispatch = concurrent.futures.ThreadPoolExecutor(
            max_workers=count, thread_name_prefix=f"compartments-{name}"
        )

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        module, qualname = _locate(fn)
        workers = self._started(module)
        call_args = [module, qualname, list(args), kwargs]
        return self._dispatch.submit(workers.call, "run", call_args, {}, None)

    def _started(self, module: str) -> WorkerSet:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._workers is None:
                if module not in self._preload:
                    self._preload.append(module)
                self._workers = WorkerSet(
                    self._definition, self._count, [self._preload],
                    max_tasks_per_child=self._max_tasks,
                )  # fmt: skip
                self._workers.start()
            elif module not in self._preload:
                raise ValueError(
                    f"module `{module}` was not imported by this Pool's workers before they "
                    f"were sealed; create the Pool with preload=[{module!r}, ...]"
                )
            return self._workers

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids (None before the first submit)."""
        return [] if self._workers is None else self._workers.pids

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            workers, self._workers = self._workers, None
        if wait:
            self._dispatch.shutdown(wait=True, cancel_futures=cancel_futures)
            if workers is not None:
                workers.close()
            return

        def finish_then_close() -> None:
            self._dispatch.shutdown(wait=True, cancel_futures=cancel_futures)
            if workers is not None:
                workers.close()

        threading.Thread(target=finish_then_close, name="compartments-pool-shutdown").start()
