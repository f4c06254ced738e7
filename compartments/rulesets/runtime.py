"""The framework's own needs inside a sealed compartment: its channels and nothing else.

Channels live in a reserved block of fd numbers (64-127). One masked comparison per
syscall confines channel I/O to that block, and peers that arrive after the seal are
moved into it with dup3, the only place dup3 may write to.
"""

from __future__ import annotations

from .._floor import SETFL_REFUSED
from .._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet

__all__ = ["CHANNEL_FD_BASE", "CHANNEL_FD_LIMIT", "ChannelRuntime"]

CHANNEL_FD_BASE = 64
CHANNEL_FD_LIMIT = 128  # exclusive
_BLOCK_MASK = ~(CHANNEL_FD_LIMIT - CHANNEL_FD_BASE - 1) & 0xFFFFFFFF

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
# The always-loaded floor (compartments._floor) refuses the same bits for every grant.
_F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL = 1, 2, 3, 4
_FIONBIO, _FIONCLEX, _FIOCLEX = 0x5421, 0x5450, 0x5451
SAFE_COMMANDS = {
    "fcntl": (_F_GETFD, _F_SETFD, _F_GETFL),
    "ioctl": (_FIONBIO, _FIONCLEX, _FIOCLEX),
}


def _in_channel_block(syscall: str, arg: int) -> SeccompRule:
    return SeccompRule(syscall).and_condition(Arg(arg, bits=32) & _BLOCK_MASK == CHANNEL_FD_BASE)


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
