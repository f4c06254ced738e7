"""Which builtin grant would allow a denied syscall, and how narrowly: the advice a
violation report carries and learn mode builds its policy from.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import rulesets
from .._policy import _roots
from .._policy._rules import SeccompRule
from ..rulesets import BasicCapabilities, CPythonRuntime, YesReally
from ..rulesets.runtime import ChannelRuntime, SelfSignals, TerminalQuery
from . import _broker
from ._arguments import PATH_ARG, signed

__all__ = ["Grant", "builtin_grants", "grants_allowing", "raw_advice_widens", "suggest"]

@dataclass(frozen=True)
class Grant:
    """One builtin ``allow_*`` method, as code and as the rules it adds."""

    ruleset: str
    method: str
    risky: bool
    simple: frozenset[str]
    conditional: tuple[SeccompRule, ...]
    rulesets: tuple[Any, ...] = field(default=(), compare=False)

    @property
    def code(self) -> str:
        suffix = ".yes_really()" if self.risky else ""
        return f"{self.ruleset}.{self.method}(){suffix}"

    @property
    def breadth(self) -> int:
        return len(self.simple) + len({r.syscall for r in self.conditional})

    def allows(self, syscall: str, args: Sequence[int]) -> bool:
        """Whether this grant lets exactly this call run."""
        if syscall in self.simple:
            return True
        return any(
            rule.syscall == syscall and rule.errno is None and rule.holds_for(args)
            for rule in self.conditional
        )

    def answers(self, syscall: str, args: Sequence[int]) -> int | None:
        """The errno this grant answers the call with instead (clone3 -> ENOSYS), if any.

        Such a rule exists so that libc falls back to a call the filter can check
        (clone, openat): the grant covers the job without ever running this syscall.
        """
        for rule in self.conditional:
            if rule.syscall == syscall and rule.errno is not None and rule.holds_for(args):
                return rule.errno
        return None

    def covers(self, syscall: str, args: Sequence[int]) -> bool:
        return self.allows(syscall, args) or self.answers(syscall, args) is not None

    def has_conditions_on(self, syscall: str) -> bool:
        return any(rule.syscall == syscall for rule in self.conditional)

    @property
    def is_server_grant(self) -> bool:
        return self.method.startswith("allow_start_") and self.method.endswith("_servers")


@functools.lru_cache(maxsize=1)
def builtin_grants() -> tuple[Grant, ...]:
    """Every argument-free ``allow_*`` method of the builtin RuleSets, read from the code."""
    found = []
    for cls in (rulesets.SystemIO, rulesets.Networking, rulesets.Time, rulesets.Pipes,
                rulesets.Threads, rulesets.ForkAndExec):  # fmt: skip
        for method, function in inspect.getmembers(cls, inspect.isfunction):
            if not method.startswith("allow_") or len(inspect.signature(function).parameters) != 1:
                continue
            granted = getattr(cls.nothing(), method)()
            risky = isinstance(granted, YesReally)
            if risky:
                granted = granted.yes_really()
            if granted.landlock_rules():
                continue  # path grants are suggested from the path, not from the syscall
            conditional = tuple(r for rs in granted.conditional_rules().values() for r in rs)
            simple = frozenset(granted.simple_rules())
            found.append(Grant(cls.name, method, risky, simple, conditional, (granted,)))
    return tuple(found)


def _narrowness(grant: Grant, syscall: str) -> tuple[bool, bool, bool, int]:
    """Sort key: conditions on this syscall before none, safe before risky, a client's
    grant before a server's for a socket, fewer syscalls before more."""
    socket_call = syscall in ("socket", "socketpair")
    return (syscall in grant.simple, grant.risky, socket_call and grant.is_server_grant,
            grant.breadth)  # fmt: skip


def grants_allowing(syscall: str, args: Sequence[int]) -> list[Grant]:
    """The narrowest builtin grants that cover exactly this call, by code.

    Covering means allowing it, or answering it with an errno that makes libc fall back
    to a call the filter can check (``Threads.allow_create()`` answers clone3 ENOSYS).
    Only grants as narrow as the narrowest are kept: when a grant with conditions on the
    syscall covers the call, no grant that allows the syscall outright is offered.
    """
    matching = [g for g in builtin_grants() if g.covers(syscall, args)]
    if not matching:
        return []
    matching.sort(key=lambda g: (_narrowness(g, syscall), g.code))
    narrowest = _narrowness(matching[0], syscall)
    return [g for g in matching if _narrowness(g, syscall) == narrowest]


def grants_with_conditions_on(syscall: str) -> list[Grant]:
    """Builtin grants that allow ``syscall`` only under conditions (or answer it)."""
    return [g for g in builtin_grants() if g.has_conditions_on(syscall)]


_LANDLOCK_HINTS = {"read": "SystemIO.allow_read_path({path!r})",
                   "write": "SystemIO.allow_write_file({path!r})",
                   "create": "SystemIO.allow_create_in_dir({parent!r})"}  # fmt: skip


def _landlock_hint(syscall: str, args: Sequence[int], path: str | None) -> str | None:
    if path is None or syscall not in ("open", "openat", "openat2"):
        return None
    flags = args[1] if syscall == "open" else args[2]
    kind = "create" if flags & os.O_CREAT else "write" if flags & 3 else "read"
    parent = os.path.dirname(path) or "."
    return _LANDLOCK_HINTS[kind].format(path=path, parent=parent)


def _grant_text(grant: Grant, syscall: str, args: Sequence[int]) -> str:
    answer = grant.answers(syscall, args)
    if answer is None:
        return grant.code
    name = errno.errorcode.get(answer, str(answer))
    return (f"{grant.code} (it answers {syscall} with {name}, so libc falls back to a "
            "call the filter can check)")  # fmt: skip


_WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under_roots_hint(syscall: str, args: Sequence[int], path: str | None) -> str | None:
    """Advice for a path under the import roots: reads there need no grant (the parent
    serves them), so no RuleSet is ever suggested for one, nor for a write there."""
    if path is None or not path.startswith("/") or syscall not in PATH_ARG:
        return None
    if _roots.root_of(os.path.normpath(path)) is None:
        return None
    flags = {"open": 1, "openat": 2}.get(syscall)
    if syscall in ("creat", "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat",
                   "renameat2", "rmdir", "truncate", "chmod", "chown", "link", "symlink") or (
        flags is not None and args[flags] & _WRITE_INTENT
    ):  # fmt: skip
        return (
            "a write under the import roots (the stdlib, site-packages): a sealed "
            "compartment never writes there, so no RuleSet is suggested"
        )
    module = _roots.module_for(path)
    served, reason = _broker.mode()
    what = f"lazy import of `{module}` after the seal" if module else "a read under the roots"
    if not served:
        return (
            f"{what}: this machine cannot serve the import roots to a sealed compartment "
            f"({reason}); import it before the seal, at the top of the compartment's module"
        )
    return (
        f"{what}, which the parent did not serve: it leads out of the roots (a symlink), "
        f"is not a plain file or directory, or its memory was unreadable; no RuleSet is "
        f"suggested"
    )


def suggest(syscall: str, args: Sequence[int], path: str | None) -> tuple[str, tuple[str, ...]]:
    """What to grant for this denied call: never more than the narrowest builtin covering it,
    and never the raw syscall when a builtin covers that syscall with conditions."""
    under_roots = _under_roots_hint(syscall, args, path)
    if under_roots is not None:
        return under_roots, ()
    grants = grants_allowing(syscall, args)[:3]
    if grants and all(g.is_server_grant for g in grants) and syscall == "socket":
        return _server_only_socket(grants), ()
    codes = tuple(g.code for g in grants)
    hint = _landlock_hint(syscall, args, path)
    if codes:
        text = "allowed by " + " or ".join(_grant_text(g, syscall, args) for g in grants)
        if hint:
            text += f", or only this path with {hint}"
        return text, codes
    if syscall == "socket":
        never = "netlink, packet, AF_ALG and raw sockets are never granted"
        return f"no builtin RuleSet allows this kind of socket ({never}); a custom RuleSet can", ()
    base = _base_condition_hint(syscall, args)
    if base is not None:
        return base, ()
    if syscall in NEVER_ADVISED_RAW:
        return (
            f"`{syscall}` can act on other processes (the parent, the zygotes, siblings) "
            "or lift the runtime's fd rules, so no RuleSet is suggested; a custom RuleSet "
            "can allow it on the compartment itself, with a condition such as pid == 0",
            (),
        )
    conditional = grants_with_conditions_on(syscall)
    if conditional:
        names = " or ".join(sorted({g.code for g in conditional})[:3])
        return (
            f"no builtin RuleSet allows `{syscall}` with these arguments ({names} allow it "
            "only under conditions this call does not meet); a custom RuleSet with a "
            "condition on its arguments can",
            (),
        )
    return (
        f"no builtin RuleSet allows this call; if the job really needs `{syscall}`, "
        f'enable it by name (rules=[..., "{syscall}"]) or with a custom RuleSet',
        (),
    )


@functools.lru_cache(maxsize=1)
def _base_conditioned() -> dict[str, str]:
    """syscall -> the always-enabled set that allows it only under conditions."""
    found: dict[str, str] = {}
    # Only the syscall names count here, so any pid will do for SelfSignals.
    for base in (BasicCapabilities(), CPythonRuntime(), ChannelRuntime(),
                 SelfSignals(os.getpid()), TerminalQuery()):  # fmt: skip
        for syscall in base.conditional_rules():
            found.setdefault(syscall, base.name)
    return found


#: Syscalls that reach other processes by pid (or, for dup/dup2, move an fd where the
#: runtime's dup3 may not): enabled by name they would let a compartment kill, starve or
#: read the parent, the zygotes or its siblings (prlimit64 with a 1 s CPU limit kills the
#: parent). Ordinary code calls several on itself (getrlimit is prlimit64(0, ...)), so
#: they are denied often and must never be advised by name.
NEVER_ADVISED_RAW = frozenset({
    "prlimit64", "setrlimit", "setpriority", "getpriority", "sched_setscheduler",
    "sched_setparam", "sched_setattr", "sched_getscheduler", "sched_getparam",
    "sched_getattr", "ioprio_set", "ioprio_get", "kill", "tkill", "tgkill",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "process_vm_readv", "process_vm_writev", "process_madvise",
    "process_mrelease", "migrate_pages", "move_pages", "kcmp", "ptrace", "waitid",
    "dup", "dup2", "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "semget",
    "semop", "semctl",
})  # fmt: skip


def raw_advice_widens(syscall: str) -> bool:
    """Naming ``syscall`` would lift conditions a builtin or the base set puts on it, or
    reach beyond the compartment itself."""
    return (
        bool(grants_with_conditions_on(syscall))
        or syscall in _base_conditioned()
        or syscall in NEVER_ADVISED_RAW
    )


def _base_condition_hint(syscall: str, args: Sequence[int]) -> str | None:
    """Advice for a call the always-enabled sets allow only under conditions: naming the
    syscall would lift those conditions, so that is never what is suggested."""
    if syscall == "mmap":
        return (
            "a shared mapping of a file is refused, since it writes through whatever the "
            "fd was opened with and mprotect cannot be checked; map it MAP_PRIVATE, or "
            "grant this one fd with "
            f"SystemIO.nothing().allow_shared_mapping({signed(args[4])})"
        )
    base = _base_conditioned().get(syscall)
    if base is None:
        return None
    return (
        f"`{syscall}` is allowed only under the conditions of the always-enabled {base} "
        "set, which this call does not meet; enabling it by name would lift them, so no "
        "RuleSet is suggested"
    )


def _server_only_socket(grants: Sequence[Grant]) -> str:
    """A socket only a server's grant creates: a client's probe is not told to serve."""
    return (
        "no builtin client grant creates this kind of socket. A denied client probe is "
        "harmless (glibc tries socket(AF_UNIX) and connect to nscd while resolving names, "
        "and carries on without it); a compartment that serves on it needs "
        + " or ".join(g.code for g in grants)
        + ", which also allows bind and listen"
    )
