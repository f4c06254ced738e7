"""Violation reports: which syscall was denied, with what, and which RuleSet would allow it.

A sealed compartment's filter sends denied syscalls to a user-notification listener that
the parent holds. One monitor thread records each one (decoding the arguments that
matter), logs it, and answers EPERM, so the compartment sees exactly what a plain errno
filter would give it. Allowed syscalls never reach the listener and pay nothing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._policy import _roots, _seccomp
from .._policy._rules import SeccompRule
from .._text import printable
from . import _broker
from ._memory import TaskMemory as _Memory

__all__ = ["Grant", "Violation", "ViolationLog", "ViolationMonitor", "grants_allowing", "monitor"]

log = logging.getLogger("compartments")


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


# -- decoding arguments --------------------------------------------------------------

_O_FLAGS = [
    (os.O_WRONLY, "O_WRONLY"), (os.O_RDWR, "O_RDWR"), (os.O_CREAT, "O_CREAT"),
    (os.O_EXCL, "O_EXCL"), (os.O_NOCTTY, "O_NOCTTY"), (os.O_TRUNC, "O_TRUNC"),
    (os.O_APPEND, "O_APPEND"), (os.O_NONBLOCK, "O_NONBLOCK"), (os.O_DSYNC, "O_DSYNC"),
    (os.O_DIRECTORY, "O_DIRECTORY"), (os.O_NOFOLLOW, "O_NOFOLLOW"),
    (os.O_CLOEXEC, "O_CLOEXEC"), (os.O_SYNC & ~os.O_DSYNC, "O_SYNC"),
    (0o20000000, "__O_TMPFILE"), (os.O_PATH, "O_PATH"),
]  # fmt: skip
_CLONE_FLAGS = [
    (0x100, "CLONE_VM"), (0x200, "CLONE_FS"), (0x400, "CLONE_FILES"),
    (0x800, "CLONE_SIGHAND"), (0x4000, "CLONE_VFORK"), (0x8000, "CLONE_PARENT"),
    (0x10000, "CLONE_THREAD"), (0x20000, "CLONE_NEWNS"), (0x80000, "CLONE_SETTLS"),
    (0x02000000, "CLONE_NEWCGROUP"), (0x04000000, "CLONE_NEWUTS"),
    (0x08000000, "CLONE_NEWIPC"), (0x10000000, "CLONE_NEWUSER"),
    (0x20000000, "CLONE_NEWPID"), (0x40000000, "CLONE_NEWNET"), (0x80, "CLONE_NEWTIME"),
]  # fmt: skip
_FAMILIES = {
    v: k for k, v in sorted(vars(socket).items()) if k.startswith("AF_") and isinstance(v, int)
}
# Aliases share a number; name each family the way its users do.
_FAMILIES.update({socket.AF_UNIX: "AF_UNIX", socket.AF_NETLINK: "AF_NETLINK"})
_TYPES: dict[int, str] = {
    socket.SOCK_STREAM: "SOCK_STREAM", socket.SOCK_DGRAM: "SOCK_DGRAM",
    socket.SOCK_RAW: "SOCK_RAW", socket.SOCK_SEQPACKET: "SOCK_SEQPACKET",
    socket.SOCK_RDM: "SOCK_RDM",
}  # fmt: skip
_AT_FDCWD = 0xFFFFFFFFFFFFFF9C
_PATH_ARG = {
    "open": 0, "openat": 1, "openat2": 1, "stat": 0, "lstat": 0, "newfstatat": 1,
    "statx": 1, "access": 0, "faccessat": 1, "faccessat2": 1, "execve": 0, "execveat": 1,
    "unlink": 0, "unlinkat": 1, "mkdir": 0, "mkdirat": 1, "rmdir": 0, "chdir": 0,
    "readlink": 0, "readlinkat": 1, "truncate": 0, "chmod": 0, "chown": 0, "creat": 0,
    "rename": 0, "renameat": 1, "renameat2": 1, "link": 0, "symlink": 0, "mount": 1,
    "chroot": 0, "umount2": 0,
}  # fmt: skip


def _flag_names(value: int, table: Sequence[tuple[int, str]], rest: str = "") -> str:
    names = [name for bit, name in table if bit and value & bit == bit]
    known = functools.reduce(lambda acc, item: acc | item[0], table, 0)
    leftover = value & ~known
    if rest:
        names.insert(0, rest)
    if leftover:
        names.append(hex(leftover))
    return "|".join(names) or "0"


def open_flags(flags: int) -> str:
    access = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}[flags & 3] if flags & 3 != 3 else ""
    return _flag_names(flags & ~3, _O_FLAGS[2:], rest=access)


def socket_kind(domain: int, kind: int) -> str:
    family = _FAMILIES.get(domain & 0xFFFFFFFF, str(domain))
    base = _TYPES.get(kind & 0xF, str(kind & 0xF))
    extras = [n for bit, n in ((socket.SOCK_CLOEXEC, "SOCK_CLOEXEC"),
                               (socket.SOCK_NONBLOCK, "SOCK_NONBLOCK")) if kind & bit]  # fmt: skip
    return f"{family}, {'|'.join([base, *extras])}"


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _dirfd(value: int) -> str:
    return "AT_FDCWD" if value == _AT_FDCWD or (value & 0xFFFFFFFF) == 0xFFFFFF9C else str(
        _signed(value)
    )


def _sockaddr(memory: _Memory, address: int, length: int) -> str:
    raw = memory.read(address, min(length, 110))
    if raw is None or len(raw) < 2:
        return "?"
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"{ipaddress.IPv4Address(raw[4:8])}:{port}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"[{ipaddress.IPv6Address(raw[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        name = raw[2:]
        if name[:1] == b"\0":  # abstract: shown as `@name`, as ss and strace do
            return "@" + _quoted(name[1:].decode(errors="replace"))
        return _quoted(name.split(b"\0", 1)[0].decode(errors="replace"))
    return _FAMILIES.get(family, str(family))


def decode(syscall: str, args: Sequence[int], memory: _Memory | None) -> tuple[str, str | None]:
    """A readable call, e.g. ``openat(AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC)``,
    and the path it names, if any."""
    path = None
    index = _PATH_ARG.get(syscall)
    if index is not None and memory is not None:
        path = memory.string(args[index])
    quoted = _quoted(path) if path is not None else "?"
    if syscall in ("open", "creat"):
        flags = args[1] if syscall == "open" else os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        return f"{syscall}({quoted}, {open_flags(flags)})", path
    if syscall == "openat":
        return f"openat({_dirfd(args[0])}, {quoted}, {open_flags(args[2])})", path
    if syscall in ("socket", "socketpair"):
        return f"{syscall}({socket_kind(args[0], args[1])}, {_signed(args[2])})", None
    if syscall in ("connect", "bind") and memory is not None:
        return f"{syscall}({_signed(args[0])}, {_sockaddr(memory, args[1], args[2])})", None
    if syscall == "clone":
        return f"clone({_flag_names(args[0] & ~0xFF, _CLONE_FLAGS)})", None
    if syscall in ("kill", "tgkill", "tkill"):
        return f"{syscall}({', '.join(str(_signed(a)) for a in args[:3 if syscall == 'tgkill' else 2])})", None  # noqa: E501
    if index is not None:
        shown = [hex(a) for a in args[:3]]
        shown[index] = quoted
        if index == 1:
            shown[0] = _dirfd(args[0])
        return f"{syscall}({', '.join(shown)})", path
    if syscall in _FD_FIRST:
        return f"{syscall}({_signed(args[0])}, ...)", None
    return f"{syscall}({', '.join(hex(a) for a in args[:3])}, ...)", None


def _quoted(text: str) -> str:
    """``text`` from the compartment's memory in double quotes, as strace shows it:
    quotes and backslashes escaped, controls as escapes, so it cannot fake the rest of
    the line nor reach a log or a terminal raw."""
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


_FD_FIRST = frozenset({
    "read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "fstat", "ioctl",
    "fcntl", "close", "sendto", "recvfrom", "sendmsg", "recvmsg", "accept", "accept4",
    "listen", "shutdown", "getsockopt", "setsockopt", "fsync", "fdatasync", "ftruncate",
    "getdents64", "dup", "dup2", "dup3",
})


# -- which builtin grant would allow a call ---------------------------------------------


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
    from .. import rulesets
    from ..rulesets import YesReally

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
    if path is None or not path.startswith("/") or syscall not in _PATH_ARG:
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
    from ..rulesets import BasicCapabilities, CPythonRuntime
    from ..rulesets.runtime import ChannelRuntime, SelfSignals, TerminalQuery

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
            f"SystemIO.nothing().allow_shared_mapping({_signed(args[4])})"
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


def describe_violation(compartment: str, pid: int, syscall: str, args: Sequence[int],
                       memory: _Memory | None) -> Violation:  # fmt: skip
    decoded, path = decode(syscall, args, memory)
    suggestion, codes = suggest(syscall, args, path)
    return Violation(compartment, pid, syscall, tuple(args), decoded, time.time(), suggestion,
                     codes, path)  # fmt: skip


# -- the monitor --------------------------------------------------------------------------

Sink = Callable[[Violation], None]

#: A compartment may cost the monitor this many reports at once, then this many a second.
#: Each report costs the parent 50-250 us of CPU (measured here: ~200 us with logging,
#: ~40 us merely receiving and answering), so no cheaper way of answering bounds a flood:
#: above the rate the listener is closed, and the parent pays nothing more (see
#: ``ViolationMonitor``). The burst leaves room for legitimate bursts of harmless denials.
FLOOD_BURST = 2048
FLOOD_RATE = 100.0


@dataclass
class _Budget:
    """A compartment's report budget (a token bucket). It belongs to the compartment's
    name, not to one process: restarts, ``fresh=True`` calls and a Pool's fresh workers
    share it, or each new process would bring a new burst."""

    tokens: float = field(default_factory=lambda: float(FLOOD_BURST))
    refilled: float = field(default_factory=time.monotonic)

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(FLOOD_BURST), self.tokens + (now - self.refilled) * FLOOD_RATE)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class _Listener:
    fd: int
    compartment: str
    learn: bool
    sink: Sink
    budget: _Budget = field(default_factory=_Budget)

    def spend(self) -> bool:
        """Take one report from this compartment's budget."""
        return self.budget.spend()


class ViolationMonitor:
    """One thread answering every compartment's listener fd; nothing a compartment does
    may stop it.

    - Each notification is handled on its own: whatever decoding or recording raises,
      the notification is answered (EPERM), and the next one is served.
    - If the thread dies anyway (a BaseException), it is restarted: by itself as it
      unwinds, and by ``register``/``retire``/``ensure_running`` if it is found dead.
    - A compartment that floods denials (above ``FLOOD_RATE`` a second, after a burst of
      ``FLOOD_BURST``) stops costing the parent anything: its listener is closed and
      that is logged once, naming it. The kernel then answers its denied syscalls
      itself, with **ENOSYS, not EPERM** (kernel/seccomp.c answers a notification
      without a listener ENOSYS; measured here). The parent cannot make it EPERM: a
      loaded filter cannot change, and an EPERM filter stacked in the child would
      always win over the notifying one. ENOSYS is still a denial: the call never runs,
      and a libc fallback it triggers (clone3 -> clone, openat2 -> openat) goes through
      the same filter. Those later denials are no longer reported or translated into
      ``PolicyViolation``. Learn mode is exempt: it lets every call through, and closing
      its listener would turn the run into ENOSYS failures.
    """

    def __init__(self) -> None:
        self._listeners: dict[int, _Listener] = {}
        self._budgets: dict[str, _Budget] = {}
        self._retiring: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._restarts: deque[float] = deque(maxlen=8)

    @property
    def thread(self) -> threading.Thread | None:
        """The thread serving now (for tests and diagnostics)."""
        return self._thread

    def close_inherited(self) -> None:
        """Close this process's copies of the listener fds and the wake pipe."""
        for fd in [*self._listeners, self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._listeners.clear()

    def register(
        self, fd: int, compartment: str, sink: Sink, *, learn: bool = False
    ) -> _Listener:
        """Take ownership of a listener fd; it is closed when its compartment is gone."""
        with self._lock:
            budget = self._budgets.setdefault(compartment, _Budget())
        listener = _Listener(fd, compartment, learn, sink, budget)
        with self._lock:
            self._listeners[fd] = listener
        self.ensure_running()
        self._wake()
        return listener

    def ensure_running(self) -> None:
        """Start the monitor thread if there is none, or if the last one died."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="compartments-violations", daemon=True
            )
            self._thread.start()

    def retire(self, listener: _Listener, timeout: float = 2.0) -> None:
        """Close a listener now, from this thread's point of view.

        Only the monitor thread closes listeners, so a number it polls is never closed
        and reused under it; the caller waits until it has happened.
        """
        done = threading.Event()
        with self._lock:
            # Identity, not the number: a listener closed on hang-up may have had its
            # number reused by another compartment's since.
            if self._listeners.get(listener.fd) is not listener:
                return
            self._retiring[listener.fd] = done
        self.ensure_running()
        self._wake()
        done.wait(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already awake: the pipe is full
            os.write(self._wake_w, b"\0")

    def _close_retired(self) -> None:
        with self._lock:
            retiring, self._retiring = self._retiring, {}
            for fd in retiring:
                if self._listeners.pop(fd, None) is not None:
                    os.close(fd)
        for done in retiring.values():
            done.set()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the monitor must outlive anything
            log.error("the violation monitor stopped (%s); restarting it", type(exc).__name__)
        finally:
            self._restart()

    def _restart(self) -> None:
        now = time.monotonic()
        self._restarts.append(now)
        if len(self._restarts) == self._restarts.maxlen and now - self._restarts[0] < 1.0:
            time.sleep(0.1)  # failing on every pass: do not spin
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None
        self.ensure_running()

    def _serve(self) -> None:
        while True:
            self._close_retired()
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._lock:
                for fd in self._listeners:
                    poller.register(fd, select.POLLIN)
            for fd, events in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif events & select.POLLIN:
                    self._answer(fd)
                else:
                    self._forget(fd)

    def _answer(self, fd: int) -> None:
        with self._lock:
            listener = self._listeners.get(fd)
        if listener is None:
            return
        notification = _seccomp.receive_notification(fd)
        if notification is None:
            return
        if self._brokered(listener, notification):
            return
        flooded = False
        try:  # from here on, whatever happens, the notification is answered
            flooded = not listener.learn and not listener.spend()
            if not flooded:
                self._report(listener, notification)
        finally:
            # Record first, answer second: the caller's reply then always finds it.
            _seccomp.respond(fd, notification.id, error=errno.EPERM, proceed=listener.learn)
            if flooded:
                self._silence(listener)

    def _brokered(self, listener: _Listener, notification: _seccomp.Notification) -> bool:
        """Serve a read under the import roots (``_broker``); True once it is answered.

        In learn mode such a read is let through unrecorded: it needs no grant.
        """
        try:
            memory = _Memory(
                notification.pid,
                functools.partial(_seccomp.notification_valid, listener.fd, notification.id),
            )
            syscall = _seccomp.syscall_name(notification.syscall)
            request = _broker.parse(syscall, notification.args, notification.pid, memory)
            if request is None or not request.servable:
                return False
            if listener.learn:
                _seccomp.respond(listener.fd, notification.id, proceed=True)
                return True
            return _broker.serve(listener.fd, notification, request, memory, owner=listener)
        except Exception as exc:  # a request is not worth the monitor: deny it instead
            log.error("serving a read of compartment `%s` failed (%s)",
                      printable(listener.compartment), type(exc).__name__)  # fmt: skip
            return False

    def _report(self, listener: _Listener, notification: _seccomp.Notification) -> None:
        """Describe and record one notification; an Exception costs only this report."""
        syscall = _seccomp.syscall_name(notification.syscall)
        try:
            memory = _Memory(
                notification.pid,
                functools.partial(_seccomp.notification_valid, listener.fd, notification.id),
            )
            violation = describe_violation(
                listener.compartment, notification.pid, syscall, notification.args, memory
            )
        except Exception as exc:  # a report is not worth the monitor
            log.error("decoding a denied %s of compartment `%s` failed (%s)",
                      syscall, printable(listener.compartment), type(exc).__name__)  # fmt: skip
            violation = Violation(listener.compartment, notification.pid, syscall,
                                  notification.args, f"{syscall}(?)", time.time(), "")  # fmt: skip
        try:
            listener.sink(violation)
        except Exception as exc:
            log.error("recording a denied %s of compartment `%s` failed (%s)",
                      syscall, printable(listener.compartment), type(exc).__name__)  # fmt: skip

    def _silence(self, listener: _Listener) -> None:
        log.warning(
            "compartment `%s` floods denied syscalls (over %d a second): its listener is "
            "closed, so the kernel now answers them ENOSYS, unreported",
            printable(listener.compartment), int(FLOOD_RATE),
        )  # fmt: skip
        self._forget(listener.fd)

    def _forget(self, fd: int) -> None:
        with self._lock:
            if self._listeners.pop(fd, None) is not None:
                os.close(fd)


_monitor: ViolationMonitor | None = None
_monitor_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked copy of the parent has no monitor thread, and must not answer the
    parent's listeners (it would steal their reports): it closes its copies."""
    global _monitor, _monitor_lock
    inherited, _monitor, _monitor_lock = _monitor, None, threading.Lock()
    if inherited is not None:
        inherited.close_inherited()


os.register_at_fork(after_in_child=_forget_in_child)


def monitor() -> ViolationMonitor:
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = ViolationMonitor()
        return _monitor


def log_violation(violation: Violation) -> None:
    log.warning(  # each part is escaped already; printable again costs nothing and is sure
        "compartment `%s` (pid %d) was denied %s; %s", printable(violation.compartment),
        violation.pid, printable(violation.decoded), printable(violation.suggestion),
    )  # fmt: skip


# -- per compartment ------------------------------------------------------------------------

_MAX_KEPT = 1000
_fallback_reported = False


class ViolationLog:
    """What one compartment was denied (or, learning, used), and the errors it explains."""

    def __init__(self, compartment: str, *, learn: bool) -> None:
        self.compartment = compartment
        self.learn = learn
        self.recent: deque[Violation] = deque(maxlen=_MAX_KEPT)
        self.observed: list[Violation] = []
        self._lock = threading.Lock()
        self._connection: Any = None
        self._unexplained: list[tuple[int, Violation]] = []
        self._listener_seen = False
        self._listener: _Listener | None = None

    def attach(self, connection: Any) -> None:
        """Follow a new child's connection (after a restart, a new one)."""
        with self._lock:
            self._connection = connection
            self._unexplained.clear()
            self._listener_seen = False
        connection.translate_error = self.translate

    def on_notification(self, method: str, params: list[Any]) -> None:
        from .._wire._frames import Fd
        from ..errors import ProtocolError

        if method != "$listener" or self._listener_seen or len(params) != 2:
            raise ProtocolError(f"`{self.compartment}` sent an unexpected notification")
        self._listener_seen = True
        listener, reason = params
        if listener is None:
            if reason:  # the kernel lacks it; no reason means reports were turned off
                _report_fallback(str(reason))
        elif isinstance(listener, Fd):
            self._listener = monitor().register(
                listener.detach(), self.compartment, self.record, learn=self.learn
            )
        else:
            raise ProtocolError(f"`{self.compartment}` sent a malformed listener")

    def retire_listener(self) -> None:
        """Release the current child's listener as the compartment closes."""
        listener, self._listener = self._listener, None
        if listener is not None:
            monitor().retire(listener)

    def record(self, violation: Violation) -> None:
        with self._lock:
            self.recent.append(violation)
            if self.learn:
                self.observed.append(violation)
                return
            seen = getattr(self._connection, "responses_seen", 0)
            self._unexplained.append((seen, violation))
            del self._unexplained[:-16]
        log_violation(violation)

    def translate(self, error: BaseException) -> BaseException:
        """A PermissionError whose call hit the filter becomes that PolicyViolation."""
        if not isinstance(error, PermissionError) or error.errno != errno.EPERM:
            return error
        from ..errors import PolicyViolation

        with self._lock:
            # Answered in order: violations recorded since the previous reply are this call's.
            seen = getattr(self._connection, "responses_seen", 0)
            mine = [v for at, v in self._unexplained if at == seen - 1]
            self._unexplained.clear()
        if not mine:
            return error
        violation = _raised_by(mine)
        translated = PolicyViolation(
            violation.syscall, violation.args, self.compartment, violation.suggestion,
            violation.decoded,
        )  # fmt: skip
        translated.__cause__ = error.__cause__
        return translated


_STDIO_WRITES = frozenset({"write", "writev"})


def _raised_by(violations: Sequence[Violation]) -> Violation:
    """The denial a call's PermissionError came from: its last one, but not the write to
    stdout or stderr that the compartment's end-of-call flush hits after the error was
    raised (``_sealed_stdio``), unless that is all there is."""
    raised = [v for v in violations
              if not (v.syscall in _STDIO_WRITES and v.args and v.args[0] in (1, 2))]  # fmt: skip
    return (raised or violations)[-1]


def _report_fallback(reason: str) -> None:
    global _fallback_reported
    if not _fallback_reported:
        _fallback_reported = True
        log.warning(
            "seccomp user notification is unavailable (%s): denied syscalls are plain "
            "EPERM, without violation reports", printable(reason, 200) or "unknown reason",
        )  # fmt: skip
