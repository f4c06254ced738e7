"""Threads: creating threads (never processes or namespaces) and sleeping."""

from __future__ import annotations

import errno

from .._policy._rules import Arg, SeccompRule
from ._builder import BuilderRuleSet, YesReally

__all__ = ["CLONE_NEW_FLAGS", "CLONE_THREAD", "Threads"]

CLONE_THREAD = 0x00010000
CLONE_NEW_FLAGS = (
    0x00000080  # CLONE_NEWTIME
    | 0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
# clone3 passes its flags behind a pointer; answering ENOSYS makes glibc fall back to
# clone, whose flags the filter can see.
CLONE3_FALLBACK = SeccompRule("clone3").returning_errno(errno.ENOSYS)


class Threads(BuilderRuleSet):
    name = "Threads"

    def allow_create(self) -> Threads:
        """clone only with CLONE_THREAD and no CLONE_NEW* flag: threads, never processes."""
        thread_only = SeccompRule("clone").and_condition(
            Arg(0) & (CLONE_THREAD | CLONE_NEW_FLAGS) == CLONE_THREAD
        )
        return self._with(conditional=[thread_only, CLONE3_FALLBACK])

    def allow_sleep(self) -> YesReally[Threads]:
        """nanosleep and clock_nanosleep (time.sleep): must be confirmed, as in extrasafe."""
        granted = self._with(simple=("nanosleep", "clock_nanosleep"))
        return YesReally(granted, "Threads.allow_sleep()")
