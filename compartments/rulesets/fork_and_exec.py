"""ForkAndExec: new processes and programs. Everything a sandbox usually exists to stop."""

from __future__ import annotations

from ._builder import BuiltinRuleSet
from .threads import CLONE3_FALLBACK

__all__ = ["ForkAndExec"]


class ForkAndExec(BuiltinRuleSet):
    name = "ForkAndExec"

    @classmethod
    def everything(cls) -> ForkAndExec:
        """fork, vfork, clone, execve, execveat, wait4 and waitid."""
        return cls()._with(
            simple=("fork", "vfork", "clone", "execve", "execveat", "wait4", "waitid"),
            conditional=[CLONE3_FALLBACK],
        )

    def allow_fork(self) -> ForkAndExec:
        return self._with(simple=("fork", "vfork", "clone", "wait4", "waitid"),
                          conditional=[CLONE3_FALLBACK])

    def allow_exec(self) -> ForkAndExec:
        return self._with(simple=("execve", "execveat"))
