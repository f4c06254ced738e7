"""The extensions that ride beside the msgpack (fds, PeerRefs, trailing bytes): their
shape checked as the parser meets them, acted on once the frame's head is whole.

Claiming fds and allocating trailing bytes must happen once, in wire order, against the
fds that came with the frame. A mixin of ``FrameDecoder``, whose stream state it uses.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ProtocolError
from . import _largebytes
from ._fd import MAX_NAME_LENGTH, Fd, PeerRef, close_received
from ._frames import _FD_INDEX, _TRAILING, EXT_FD, EXT_MEMFD, EXT_PEER, EXT_TRAILING

__all__ = ["MAX_EXT_LEN", "MAX_PENDING_FDS", "Ext", "ExtensionDecoding", "FdBatch"]

# Fds received ahead of the frame that claims them; more than this is an attack.
MAX_PENDING_FDS = 64
MAX_EXT_LEN = _FD_INDEX.size + 4 * MAX_NAME_LENGTH


class Ext:
    """An extension seen while parsing, acted on only once its frame's head is complete:
    claiming fds and allocating trailing bytes must happen once, in wire order, and a
    parser that starts over (msgpack's pure-Python build) would do them twice."""

    __slots__ = ("code", "payload")

    def __init__(self, code: int, payload: bytes) -> None:
        self.code = code
        self.payload = payload


class FdBatch:
    """Fds that arrived with the bytes at stream offsets [start, end)."""

    __slots__ = ("claimed", "end", "fds", "start")

    def __init__(self, start: int, end: int, fds: list[int]) -> None:
        self.start = start
        self.end = end
        self.fds = fds
        self.claimed = 0


class ExtensionDecoding:
    """Checking and realizing one frame's extensions, and the fds that came with it."""

    max_message: int
    _from_parent: bool
    _fail: Callable[[str], ProtocolError]
    # What the frame being parsed has announced so far: trailing bytes, fd refs.
    _announced_trailing: int
    _fd_refs: int
    _extensions: bool
    _trailers: list[tuple[bytes, memoryview]]
    _trailing_total: int
    _frame_start: int
    _batches: deque[FdBatch]
    _frame_batch: FdBatch | None
    _frame_fds: list[Fd]
    _fed: int
    trailing_target: memoryview | None

    @property
    def pending_fds(self) -> int:
        """Fds received that no frame has claimed yet."""
        return sum(len(batch.fds) - batch.claimed for batch in self._batches)

    def _decode_ext(self, code: int, payload: bytes) -> object:
        """Check an extension's shape now; act on it in :meth:`_act_on_extensions`."""
        if code == EXT_TRAILING:
            if len(payload) != _TRAILING.size:
                raise self._fail(f"trailing-bytes extension of {len(payload)} bytes")
            self._announce_trailing(_TRAILING.unpack(payload)[0])
        elif code == EXT_FD:
            if len(payload) != _FD_INDEX.size:
                raise self._fail(f"Fd extension of {len(payload)} bytes")
        elif code == EXT_PEER:
            if not self._from_parent:
                raise self._fail("a PeerRef; only the parent may hand out direct lines")
            if len(payload) <= _FD_INDEX.size:
                raise self._fail("PeerRef extension without a name")
        elif code == EXT_MEMFD:  # retired: its fd is never read (a device would block)
            raise self._fail("a memfd payload; large bytes travel as trailing bytes")
        else:
            raise self._fail(f"unknown extension type {code}")
        if code != EXT_TRAILING:
            self._fd_refs += 1
            if self._fd_refs > MAX_PENDING_FDS:  # the kernel delivers at most that many
                raise self._fail(f"frame references more than {MAX_PENDING_FDS} fds")
        self._extensions = True
        return Ext(code, payload)

    def _announce_trailing(self, size: int) -> None:
        """Refuse now, before the rest of the head is parsed, trailing bytes that could
        never be accepted: tiny ones from a compartment, or more than max_message."""
        # Honest senders inline anything smaller (tiny bytes would be shared objects). A
        # compartment announcing tiny ones by the thousand costs ~1 KiB and 13 us each.
        if size < (2 if self._from_parent else _largebytes.TRAILING_MIN):
            raise self._fail(f"trailing bytes of {size} bytes")
        self._announced_trailing += size
        if self._announced_trailing > self.max_message:
            raise self._fail(f"trailing bytes exceed max_message ({self.max_message} bytes)")

    def _act_on_extensions(self, root: list[Any]) -> None:
        """Replace each _Ext in the complete frame by its value, in wire order (depth
        first, map values in order: keys never hold one), without recursion."""
        containers: list[Any] = [root]
        pending: list[Iterator[tuple[Any, Any]]] = [iter(enumerate(root))]
        while pending:
            for slot, value in pending[-1]:
                kind = type(value)
                if kind is Ext:
                    containers[-1][slot] = self._realize(value)
                elif kind is list or kind is dict:
                    containers.append(value)
                    pending.append(iter(enumerate(value) if kind is list else list(value.items())))
                    break
            else:
                pending.pop()
                containers.pop()

    def _realize(self, ext: Ext) -> object:
        code, payload = ext.code, ext.payload
        if code == EXT_TRAILING:
            return self._trailing_bytes(payload)
        if code == EXT_FD:
            return self._claim_fd(_FD_INDEX.unpack(payload)[0])
        if code == EXT_PEER:
            try:
                name = payload[_FD_INDEX.size :].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail("PeerRef name is not valid UTF-8") from None
            if len(name) > MAX_NAME_LENGTH:
                raise self._fail(f"PeerRef name longer than {MAX_NAME_LENGTH} chars")
            return PeerRef(self._claim_fd(_FD_INDEX.unpack_from(payload)[0]), name)
        raise self._fail(f"unknown extension type {code}")  # never: _decode_ext refused it

    def _trailing_bytes(self, payload: bytes) -> bytes:
        (size,) = _TRAILING.unpack(payload)  # its size was checked as it was parsed
        self._trailing_total += size
        if self._trailing_total > self.max_message:
            raise self._fail(f"trailing bytes exceed max_message ({self.max_message} bytes)")
        data, view = _largebytes.unfilled_bytes(size)
        self._trailers.append((data, view))
        return data

    def _claim_fd(self, index: int) -> Fd:
        batch = self._frame_batch
        if batch is None:
            if not self._batches:
                raise self._fail("frame references an fd but none was received")
            batch = self._batches[0]
            if not batch.start <= self._frame_start < batch.end:
                raise self._fail("frame references an fd that was sent with another frame")
            self._frame_batch = batch
        if index != batch.claimed:
            raise self._fail(f"fd index {index} out of order (expected {batch.claimed})")
        if batch.claimed >= len(batch.fds):
            raise self._fail(
                f"frame references more fds than the {len(batch.fds)} received with it"
            )
        fd = Fd._adopt(batch.fds[batch.claimed])
        batch.claimed += 1
        self._frame_fds.append(fd)
        return fd

    def _accept_fds(self, size: int, fds: Sequence[int]) -> None:
        incoming = list(fds)
        if size == 0:
            close_all(incoming)
            raise self._fail("fds arrived without any bytes")
        if self.trailing_target is not None:
            close_all(incoming)
            raise self._fail("fds arrived inside a frame's trailing bytes")
        if self.pending_fds + len(incoming) > MAX_PENDING_FDS:
            close_all(incoming)
            raise self._fail(f"more than {MAX_PENDING_FDS} fds pending without a frame")
        self._batches.append(FdBatch(self._fed, self._fed + size, incoming))

    def _finish_frame(self, end: int) -> None:
        batch = self._frame_batch
        if batch is not None:
            if batch.claimed != len(batch.fds):
                raise self._fail(
                    f"frame came with {len(batch.fds)} fds but references {batch.claimed}"
                )
            self._batches.popleft()
            self._frame_batch = None
        if self._batches and self._batches[0].end <= end:
            raise self._fail("fds arrived with a frame that does not reference them")


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            close_received(fd)
