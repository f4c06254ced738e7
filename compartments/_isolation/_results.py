"""What an isolated run sends back, and how the caller reads it: tagged frames on one
pipe (the return value, msgpack-native only; the wait status; a setup error) and the
``IsolateResult`` they become.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

import msgpack

from ..errors import CompartmentsError, UnsupportedError

__all__ = [
    "SETUP_FAILED",
    "STATUS",
    "VALUE",
    "IsolateResult",
    "IsolateSetupError",
    "read_result",
    "send",
    "send_error",
]

#: The frames' tags: the return value, the wait status, a setup error, an unsupported kernel.
VALUE, STATUS, _SETUP_ERROR, _UNSUPPORTED = b"V", b"S", b"E", b"U"


class IsolateSetupError(CompartmentsError, OSError):
    """Building the isolated environment failed before the callable ran."""


SETUP_FAILED = 125  # exit code of a process whose setup failed (as in podman/env)


@dataclass(frozen=True)
class IsolateResult:
    """How the callable ended, what it printed, and what it returned."""

    status: int
    """Raw wait status (os.waitpid) of the worker."""
    stdout: bytes
    stderr: bytes
    value: object = None
    timed_out: bool = False

    @property
    def returncode(self) -> int:
        """Exit code, or -N when killed by signal N (subprocess's convention)."""
        return os.waitstatus_to_exitcode(self.status)

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out


_HEADER = struct.Struct("<cI")


def send(fd: int, tag: bytes, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(tag, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def send_error(fd: int, exc: BaseException, stage: str) -> None:
    number = exc.errno if isinstance(exc, OSError) and exc.errno else 0
    tag = _UNSUPPORTED if stage == "unshare" else _SETUP_ERROR
    text = f"{stage}: {exc}".encode("utf-8", "backslashreplace")
    send(fd, tag, struct.pack("<i", number) + text)


def _frames(data: bytes) -> list[tuple[bytes, bytes]]:
    frames = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        tag, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        frames.append((tag, data[offset:offset + length]))
        offset += length
    return frames


def read_result(control: bytes, outer_status: int, stdout: bytes, stderr: bytes,
            timed_out: bool) -> IsolateResult:
    status, value = None, None
    for tag, payload in _frames(control):
        if tag in (_SETUP_ERROR, _UNSUPPORTED):
            (number,) = struct.unpack_from("<i", payload)
            text = payload[4:].decode("utf-8", "replace")
            kind = UnsupportedError if tag == _UNSUPPORTED else IsolateSetupError
            detail = stderr.decode("utf-8", "replace").strip()
            raise kind(number or errno.EINVAL, text + (f"\n{detail}" if detail else ""))
        if tag == VALUE:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        elif tag == STATUS and status is None:
            (status,) = struct.unpack("<i", payload)
    return IsolateResult(outer_status if status is None else status, stdout, stderr,
                         value, timed_out)
