"""Time: reading clocks."""

from __future__ import annotations

from ._builder import BuilderRuleSet

__all__ = ["Time"]


class Time(BuilderRuleSet):
    """Clocks. The vDSO answers most reads, but some VMs fall back to the real syscall."""

    name = "Time"

    def allow_gettime(self) -> Time:
        return self._with(simple=("clock_gettime", "clock_getres", "gettimeofday", "time"))
