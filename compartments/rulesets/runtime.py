"""The framework's own needs inside a sealed compartment: its channels and nothing else.

Channels live in a reserved block of fd numbers (64-127). One masked comparison per
syscall confines channel I/O to that block, and peers that arrive after the seal are
moved into it with dup3, the only place dup3 may write to.
"""

from __future__ import annotations

from .._rules import Arg, SeccompRule
from ._builder import BuiltinRuleSet

__all__ = ["CHANNEL_FD_BASE", "CHANNEL_FD_LIMIT", "ChannelRuntime"]

CHANNEL_FD_BASE = 64
CHANNEL_FD_LIMIT = 128  # exclusive
_BLOCK_MASK = ~(CHANNEL_FD_LIMIT - CHANNEL_FD_BASE - 1) & 0xFFFFFFFF

# fcntl/ioctl: socket objects set their blocking mode when built around a received fd.
CHANNEL_IO = (
    "recvfrom", "recvmsg", "sendto", "sendmsg", "getsockopt", "getsockname", "fcntl", "ioctl",
)  # fmt: skip


def _in_channel_block(syscall: str, arg: int) -> SeccompRule:
    return SeccompRule(syscall).and_condition(Arg(arg, bits=32) & _BLOCK_MASK == CHANNEL_FD_BASE)


class ChannelRuntime(BuiltinRuleSet):
    """Channel I/O on the reserved fd block, waiting on several channels, closing fds."""

    name = "CompartmentRuntime"

    def __init__(self) -> None:
        super().__init__()
        granted = self._with(
            simple=("poll", "ppoll", "close", "getppid"),
            conditional=[_in_channel_block(name, 0) for name in CHANNEL_IO]
            + [_in_channel_block("dup3", 1)],
        )
        self._simple = granted._simple
        self._conditional = granted._conditional
