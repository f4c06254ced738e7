"""One violation report: the ``Violation`` record, built from a notification (its
arguments decoded, its advice), and how it is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .._text import printable
from ._advice import suggest
from ._arguments import decode
from ._memory import TaskMemory as _Memory

log = logging.getLogger("compartments")

__all__ = ["Violation", "describe_violation", "log_violation"]

@dataclass(frozen=True)
class Violation:
    """One denied (or, in learn mode, recorded) syscall."""

    compartment: str
    pid: int
    syscall: str
    args: tuple[int, ...]
    decoded: str
    time: float
    suggestion: str
    allowed_by: tuple[str, ...] = ()
    path: str | None = None



def describe_violation(compartment: str, pid: int, syscall: str, args: Sequence[int],
                       memory: _Memory | None) -> Violation:  # fmt: skip
    decoded, path = decode(syscall, args, memory)
    suggestion, codes = suggest(syscall, args, path)
    return Violation(compartment, pid, syscall, tuple(args), decoded, time.time(), suggestion,
                     codes, path)  # fmt: skip


def log_violation(violation: Violation) -> None:
    log.warning(  # each part is escaped already; printable again costs nothing and is sure
        "compartment `%s` (pid %d) was denied %s; %s", printable(violation.compartment),
        violation.pid, printable(violation.decoded), printable(violation.suggestion),
    )  # fmt: skip
