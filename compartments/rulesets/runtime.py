"""The framework's own needs inside a sealed compartment: its channels and nothing else.

Channels live in a reserved block of fd numbers (64-127). One masked comparison per
syscall confines channel I/O to that block, and peers that arrive after the seal are
moved into it with dup3, the only place dup3 may write to.

Files the parent opens for the compartment under the interpreter's import roots (see
``compartments._parent._broker``) arrive in a second block (128-191): reading them, seeking,
fstat and listing a directory are allowed there and nowhere else.

Two more needs of ordinary code on itself: signalling its own process (``abort()``,
``raise()``, ``os.kill(os.getpid(), ...)``) and asking whether an fd is a terminal
(``isatty``, which ``open()`` asks of every file it opens).
"""

from __future__ import annotations

import functools

from .._policy._floor import SETFL_REFUSED
from .._policy._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet

__all__ = [
    "CHANNEL_FD_BASE",
    "CHANNEL_FD_LIMIT",
    "IMPORT_FD_BASE",
    "IMPORT_FD_LIMIT",
    "ChannelRuntime",
    "ImportRootsRuntime",
    "SelfSignals",
    "TerminalQuery",
    "compartment_runtime",
]

CHANNEL_FD_BASE = 64
CHANNEL_FD_LIMIT = 128  # exclusive
_BLOCK_MASK = ~(CHANNEL_FD_LIMIT - CHANNEL_FD_BASE - 1) & 0xFFFFFFFF
IMPORT_FD_BASE = 128
IMPORT_FD_LIMIT = 192  # exclusive; the same size as the channel block, so the same mask

CHANNEL_IO = ("recvfrom", "recvmsg", "sendto", "sendmsg", "getsockopt", "getsockname")

# fcntl/ioctl on the block take a command allowlist, never any command: a socket object
# built around a received fd sets its blocking mode with ioctl(FIONBIO). Unchecked,
# fcntl(F_SETOWN/F_SETSIG) + O_ASYNC makes the kernel signal (even SIGKILL) any process
# of the same uid, and ioctl on a socket reaches dev_ioctl (SIOCSIF*: with root's
# CAP_NET_ADMIN, reconfigure the host's interfaces) or, after dup3 into the block,
# TIOCSTI on a terminal.
#
# F_SETFL may toggle O_NONBLOCK only. dup3 takes any fd into the block, a passed fd among
# them, and a passed fd shares its file description with the parent: O_APPEND, O_ASYNC,
# O_DIRECT or O_NOATIME set here would change the parent's own file (O_DIRECT on a shared
# stderr made the parent's writes fail). Access-mode and other bits that F_SETFL ignores
# stay allowed: callers toggling O_NONBLOCK with F_SETFL pass back what F_GETFL returned
# (O_RDWR, O_LARGEFILE, ...). os.set_blocking() itself uses ioctl(FIONBIO).
# The always-loaded floor (compartments._policy._floor) refuses the same bits for every grant.
_F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL = 1, 2, 3, 4
_FIONBIO, _FIONCLEX, _FIOCLEX = 0x5421, 0x5450, 0x5451
SAFE_COMMANDS = {
    "fcntl": (_F_GETFD, _F_SETFD, _F_GETFL),
    "ioctl": (_FIONBIO, _FIONCLEX, _FIOCLEX),
}


def _in_channel_block(syscall: str, arg: int) -> SeccompRule:
    return SeccompRule(syscall).and_condition(Arg(arg, bits=32) & _BLOCK_MASK == CHANNEL_FD_BASE)


def _in_import_block(syscall: str) -> SeccompRule:
    return SeccompRule(syscall).and_condition(Arg(0, bits=32) & _BLOCK_MASK == IMPORT_FD_BASE)


def _command_on_channel(syscall: str, command: int) -> SeccompRule:
    return _in_channel_block(syscall, 0).and_condition(Arg(1, bits=32) == command)


class ChannelRuntime(BuiltinRuleSet):
    """Channel I/O on the reserved fd block, waiting on several channels, closing fds."""

    name = "CompartmentRuntime"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(
            simple=("poll", "ppoll", "close"),
            conditional=[_in_channel_block(name, 0) for name in CHANNEL_IO]
            + [
                _command_on_channel(name, cmd)
                for name, cmds in SAFE_COMMANDS.items()
                for cmd in cmds
            ]
            + [
                _command_on_channel("fcntl", _F_SETFL).and_condition(
                    Arg(2, bits=32) & SETFL_REFUSED == 0
                ),
                _in_channel_block("dup3", 1),
            ],
        )
        self._simple = granted._simple
        self._conditional = granted._conditional


# Reading a file the parent opened read-only: what open(), dlopen() and os.listdir() do
# with it. ioctl only TCGETS (open() asks isatty(); a regular file answers ENOTTY).
# fstat as glibc spells it, newfstatat(fd, "", AT_EMPTY_PATH), is *not* granted here:
# the filter cannot see that the path is empty, and with a path (an absolute one
# ignores the fd) the kernel would stat anything. The parent serves it (``_broker``);
# statx(fd, "", AT_EMPTY_PATH) stays denied (Rust's std falls back to fstat).
IMPORT_READ = ("read", "readv", "pread64", "preadv", "preadv2", "lseek", "fstat", "getdents64")
_TCGETS = 0x5401


class ImportRootsRuntime(BuiltinRuleSet):
    """Read, seek, fstat and list the read-only files in the import block (128-191)."""

    name = "ImportRootsRuntime"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(
            conditional=[_in_import_block(name) for name in IMPORT_READ]
            + [
                _in_import_block("ioctl").and_condition(Arg(1, bits=32) == _TCGETS),
                *(
                    _in_import_block("fcntl").and_condition(Arg(1, bits=32) == command)
                    for command in SAFE_COMMANDS["fcntl"]
                ),
            ],
        )
        self._simple = granted._simple
        self._conditional = granted._conditional


# Signals to the compartment itself, by the pid it has when it seals (in an Isolate,
# the pid inside its namespace, which is what these calls take). glibc's abort() and
# raise() are tgkill(getpid(), gettid(), sig): tgkill is allowed for any thread of our
# own thread group (the kernel answers ESRCH for a tid not in it), kill and tkill for
# our own pid only. Never pid 0 nor a negative pid: those name a process group, and the
# compartment shares its group with the parent. A live process's pid cannot be reused,
# so the rule always means "this process". A process it forks (ForkAndExec) has another
# pid and cannot signal itself this way, but can signal the compartment, its parent.
_SELF_SIGNALS = ("kill", "tkill", "tgkill")


class SelfSignals(BuiltinRuleSet):
    """kill, tkill and tgkill aimed at the compartment's own process (``pid``) only."""

    name = "SelfSignals"

    def __init__(self, pid: int) -> None:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            # 0 and negative pids name process groups: never "this process"
            raise ValueError(f"SelfSignals needs the compartment's own pid, got {pid!r}")
        super().__init__()
        self.pid = pid
        granted = self._with(
            conditional=[
                SeccompRule(name).and_condition(Arg(0, bits=32) == pid) for name in _SELF_SIGNALS
            ]
        )
        self._conditional = granted._conditional


class TerminalQuery(BuiltinRuleSet):
    """ioctl(fd, TCGETS) on any fd: ``isatty()``, which ``open()`` asks of every file.

    TCGETS only reads a terminal's attributes (a regular file, pipe or socket answers
    ENOTTY); every command that changes a terminal stays denied, and the floor refuses
    the injecting ones whatever is granted.
    """

    name = "TerminalQuery"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(
            conditional=[SeccompRule("ioctl").and_condition(Arg(1, bits=32) == _TCGETS)]
        )
        self._conditional = granted._conditional


def compartment_runtime(pid: int) -> list[BuiltinRuleSet]:
    """Every framework RuleSet a compartment whose pid is ``pid`` seals with, after its
    own RuleSets (enabled yielding: a RuleSet's simple grant of a syscall replaces their
    conditions on it). What ``inspect`` and the example show as a compartment's policy."""
    channels, imports, terminal = _fixed_runtime()
    return [channels, imports, SelfSignals(pid), terminal]


@functools.cache
def _fixed_runtime() -> tuple[BuiltinRuleSet, BuiltinRuleSet, BuiltinRuleSet]:
    """Built once (in the zygote, which warms it): a compartment's seal is on its spawn
    path, and building these costs more than a millisecond in a fresh fork."""
    return ChannelRuntime(), ImportRootsRuntime(), TerminalQuery()
