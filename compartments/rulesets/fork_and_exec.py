"""ForkAndExec: new processes and programs. Everything a sandbox usually exists to stop."""

from __future__ import annotations

from .._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet
from .threads import CLONE3_FALLBACK, CLONE_NEW_FLAGS

__all__ = ["ForkAndExec"]


#: clone for new processes (and threads), never into new namespaces: a compartment that
#: forks must not get a user namespace, where it would hold every capability.
CLONE_WITHOUT_NAMESPACES = SeccompRule("clone").and_condition(Arg(0) & CLONE_NEW_FLAGS == 0)


class ForkAndExec(BuiltinRuleSet):
    name = "ForkAndExec"

    @classmethod
    def everything(cls) -> ForkAndExec:
        """fork, vfork, clone without new namespaces, execve, execveat, wait4 and waitid."""
        return cls()._with(
            simple=("fork", "vfork", "execve", "execveat", "wait4", "waitid"),
            conditional=[CLONE_WITHOUT_NAMESPACES, CLONE3_FALLBACK],
        )

    def allow_fork(self) -> ForkAndExec:
        """fork, vfork and clone (no new namespaces; clone3 falls back to clone), and wait."""
        return self._with(simple=("fork", "vfork", "wait4", "waitid"),
                          conditional=[CLONE_WITHOUT_NAMESPACES, CLONE3_FALLBACK])

    def allow_exec(self) -> ForkAndExec:
        return self._with(simple=("execve", "execveat"))
