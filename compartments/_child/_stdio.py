"""``print()`` without a write grant: Python-level stdout and stderr over the channel.

A compartment's fds 1 and 2 are its own pipes, relayed by the parent (``_output``), but
writing to them takes a grant (``SystemIO.allow_stdout()``): a policy that allowed
``write`` on fds 1 and 2 by default would also allow it on whatever the compartment
puts there after closing them (a passed ``Fd`` arrives at the lowest free number). So
when the policy does not allow those writes, ``sys.stdout`` and ``sys.stderr`` become
streams that send their text to the parent as ``$out`` notifications instead, and the
parent relays it exactly as if read from the pipes: one ``[name] `` prefix per line,
escaped, within the same budget. Writes below Python (a C library writing to fd 2)
still need the grant, and are reported as before.

Never blocking the child: text over the budget, or that finds the socket full, is
dropped and counted, and the count travels with the next text that goes.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from typing import Any

from .._text import printable
from .._wire._channel import Channel
from .._wire._frames import encode_notification
from ..errors import ProtocolError

__all__ = ["BYTES_PER_SECOND", "MAX_CHUNK", "METHOD", "ChannelStream", "forward_stdio", "receive"]

METHOD = "$out"
#: What one compartment may print per second, stdout and stderr together (the parent's
#: relay, ``_parent._output``, holds its pipes to the same budget).
BYTES_PER_SECOND = 256 * 1024
#: The most text one notification carries (bytes); longer writes go in several.
MAX_CHUNK = 16 * 1024
_MAX_DROPPED = 1 << 48


class ChannelStream(io.TextIOBase):
    """A text stream whose lines go to the parent's relay (see the module docstring)."""

    def __init__(self, channel: Channel, fd: int, name: str) -> None:
        super().__init__()
        self._channel = channel
        self._fd = fd
        self._name = name
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._tokens = float(BYTES_PER_SECOND)
        self._refilled = time.monotonic()
        self.dropped = 0
        #: False in a fork of the compartment: the channel is not its own to write to.
        self.live = True

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only, as on TextIOWrapper
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    @property
    def name(self) -> str:
        return self._name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._pending.append(text)
            self._size += len(text)
            if "\n" in text or self._size >= MAX_CHUNK:
                self._send_pending()
        return len(text)

    def flush(self) -> None:
        if not self._pending:  # every call ends with a flush: nothing to do, no lock
            return
        with self._lock:
            self._send_pending()

    def _send_pending(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        self._pending.clear()
        self._size = 0
        for start in range(0, len(data), MAX_CHUNK):
            chunk = data[start : start + MAX_CHUNK]
            if not (self.live and self._spend(len(chunk)) and self._send(chunk)):
                self.dropped += len(chunk)

    def _spend(self, size: int) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(BYTES_PER_SECOND), self._tokens + (now - self._refilled) * BYTES_PER_SECOND
        )
        self._refilled = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True

    def _send(self, chunk: bytes) -> bool:
        data, _ = encode_notification(METHOD, [self._fd, chunk, self.dropped])
        frame = data if isinstance(data, bytes) else b"".join(data)
        try:
            sent = self._channel.send_if_room(frame, 0.01)
        except OSError:  # the parent is gone; the compartment is ending
            return False
        if sent:
            self.dropped = 0
        return sent


def forward_stdio(channel: Channel, allowed: dict[int, bool]) -> None:
    """Before the seal: replace sys.stdout / sys.stderr whose fd the policy won't write."""
    import sys

    for fd, attr in ((1, "stdout"), (2, "stderr")):
        if allowed.get(fd, False):
            continue
        old = getattr(sys, attr)
        if old is not None:
            with contextlib.suppress(Exception):  # replaced, whatever state it is in
                old.flush()
        stream = ChannelStream(channel, fd, f"<{attr}>")
        os.register_at_fork(after_in_child=lambda s=stream: setattr(s, "live", False))
        setattr(sys, attr, stream)


def receive(params: Any, compartment: str) -> tuple[bool, bytes, int]:
    """Check one ``$out`` notification: (to stderr, text, bytes the child dropped)."""
    if (
        not isinstance(params, list)
        or len(params) != 3
        or params[0] not in (1, 2)
        or type(params[0]) is not int
        or not isinstance(params[1], bytes)
        or type(params[2]) is not int
        or params[2] < 0
    ):
        raise ProtocolError(
            f"compartment `{printable(compartment)}` sent a malformed `{METHOD}` notification "
            "(expected [1 or 2, bytes, dropped count])"
        )
    text = params[1]
    dropped = min(params[2], _MAX_DROPPED) + max(len(text) - MAX_CHUNK, 0)
    return params[0] == 2, text[:MAX_CHUNK], dropped
