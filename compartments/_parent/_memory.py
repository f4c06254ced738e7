"""Reading and writing the memory of a task stopped in a seccomp notification.

Every address and size comes from the hostile task, so each access is bounded
(``MAX_ACCESS`` bytes, below ``ADDRESS_END``) and any failure is "unknown" (None or
False), never an exception. ``still_valid`` is asked after ``/proc/<pid>/mem`` is
opened: if the task died and its pid was reused, what was opened belongs to someone
else, and nothing is read from it or written to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["ADDRESS_END", "MAX_ACCESS", "TaskMemory"]

#: The most one access reads or writes, and the first address none may reach
#: (pread's offset is a signed 64-bit off_t; user space ends far below it).
MAX_ACCESS = 4096
ADDRESS_END = 1 << 63


class TaskMemory:
    """The memory of one notifying task (same uid and dumpable, or root)."""

    def __init__(self, pid: int, still_valid: Callable[[], bool] | None = None) -> None:
        self.pid = pid
        self._still_valid = still_valid

    def _bounded(self, address: object, size: object) -> bool:
        return (
            isinstance(address, int) and isinstance(size, int)
            and address > 0 and 0 < size <= MAX_ACCESS and address <= ADDRESS_END - size
        )  # fmt: skip

    def read(self, address: int, size: int) -> bytes | None:
        if isinstance(size, int):
            size = min(size, MAX_ACCESS)
        if not self._bounded(address, size):
            return None
        try:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            if self._still_valid is not None and not self._still_valid():
                return None
            return os.pread(fd, size, address)
        except (OSError, OverflowError, ValueError):
            return None
        finally:
            os.close(fd)

    def write(self, address: int, data: bytes) -> bool:
        """Write ``data`` at ``address``: what the task's own syscall would have written.

        The task asked for it to be written there, so this reaches nothing the task
        could not write itself (``/proc/<pid>/mem`` writes through read-only private
        pages as copy-on-write, and never through a shared mapping not opened for
        writing).
        """
        if not self._bounded(address, len(data)):
            return False
        try:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
        except (OSError, ValueError):
            return False
        try:
            if self._still_valid is not None and not self._still_valid():
                return False
            return os.pwrite(fd, data, address) == len(data)
        except (OSError, OverflowError, ValueError):
            return False
        finally:
            os.close(fd)

    def string(self, address: int, limit: int = 512) -> str | None:
        raw = self.read(address, limit)
        return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")

    def path(self, address: int) -> bytes | None:
        """A NUL-terminated path of at most PATH_MAX bytes, exactly as the task has it."""
        raw = self.read(address, MAX_ACCESS)
        if raw is None or b"\0" not in raw:
            return None
        return raw.split(b"\0", 1)[0]
