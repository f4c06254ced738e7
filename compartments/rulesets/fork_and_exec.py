"""ForkAndExec: new processes and programs. Everything a sandbox usually exists to stop."""

from __future__ import annotations

from .._policy._rules import Arg, SeccompRule
from ._builder import BuilderRuleSet, BuiltinRuleSet
from .threads import CLONE3_FALLBACK, CLONE_NEW_FLAGS

__all__ = ["ForkAndExec"]


#: clone for new processes (and threads), never into new namespaces: a compartment that
#: forks must not get a user namespace, where it would hold every capability.
CLONE_WITHOUT_NAMESPACES = SeccompRule("clone").and_condition(Arg(0) & CLONE_NEW_FLAGS == 0)


class ForkAndExec(BuilderRuleSet):
    """New processes and programs. ``ForkAndExec()`` is extrasafe's ``ForkAndExec``: fork,
    exec and wait, the same as ``everything()``; ``nothing()`` builds up from none."""

    name = "ForkAndExec"

    def __init__(self) -> None:
        BuiltinRuleSet.__init__(self)
        whole = self.allow_fork().allow_exec()
        self._simple, self._conditional = whole._simple, whole._conditional

    @classmethod
    def everything(cls) -> ForkAndExec:
        """fork, vfork, clone without new namespaces, execve, execveat, wait4 and waitid."""
        return cls()

    def allow_fork(self) -> ForkAndExec:
        """fork, vfork and clone (no new namespaces; clone3 falls back to clone), and wait."""
        return self._with(simple=("fork", "vfork", "wait4", "waitid"),
                          conditional=[CLONE_WITHOUT_NAMESPACES, CLONE3_FALLBACK])

    def allow_exec(self) -> ForkAndExec:
        """execve and execveat."""
        return self._with(simple=("execve", "execveat"))
