"""N compartments of one definition, each serving one call at a time: what ``Pool`` and
``@compartment(workers=N)`` both hand their calls to.

Below both (``_pool`` builds on the proxy, and the proxy's ``workers=N`` functions on
this), so neither imports the other.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Sequence
from typing import Any

from ._definition import SPENT_GRACE, Definition, RestartPolicy
from ._supervised import Supervised

__all__ = ["REPLACE_CRASHED", "WorkerSet", "checked_max_tasks"]

#: Workers replace themselves after a crash, however often: only that call fails.
REPLACE_CRASHED = RestartPolicy(max_restarts=sys.maxsize, backoff=0.0)


class WorkerSet:
    """N compartments of one definition, each serving one call at a time."""

    def __init__(
        self,
        definition: Definition,
        workers: int,
        args: Sequence[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.definition = definition
        self._args = list(args)
        self._max_tasks = checked_max_tasks(max_tasks_per_child)
        self._workers = [Supervised(definition, args, {}) for _ in range(workers)]
        self._tasks = [0] * workers
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(workers):
            self._free.put(index)

    def __len__(self) -> int:
        return len(self._workers)

    def start(self) -> None:
        for worker in self._workers:
            worker.connection()

    def call(
        self, method: str, args: Sequence[Any], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        index = self._free.get()
        try:
            return self._workers[index].call(method, args, kwargs, timeout)
        finally:
            self._retire_if_spent(index)
            self._free.put(index)

    def _retire_if_spent(self, index: int) -> None:
        """Replace a worker that has served its ``max_tasks_per_child`` tasks: a compromised
        worker then never sees a later caller's task."""
        if self._max_tasks is None:
            return
        self._tasks[index] += 1
        if self._tasks[index] < self._max_tasks:
            return
        spent = self._workers[index]
        self._workers[index] = Supervised(self.definition, self._args, {})
        self._tasks[index] = 0
        spent.close(SPENT_GRACE)

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


def checked_max_tasks(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_tasks_per_child must be a positive int or None, got {value!r}")
    return value
