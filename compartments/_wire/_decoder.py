"""Decoding frames from a peer that may be hostile: bounded, validated, fds accounted.

The encoding side and the message types live in ``_frames``. A frame is one msgpack
message, then the raw bytes of any trailing-bytes extensions it holds, in order; those
are written straight into the ``bytes`` objects the message will hold (see
``_largebytes``), and the message is held back until they are complete.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import msgpack

from ..errors import ProtocolError
from . import _largebytes
from ._extensions import MAX_EXT_LEN, MAX_PENDING_FDS, ExtensionDecoding, FdBatch, close_all
from ._fd import Fd
from ._frames import (
    DEFAULT_MAX_MESSAGE,
    MAX_METHOD_LENGTH,
    MAX_MSGID,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    Message,
    Notification,
    Request,
    Response,
)
from ._keys import KeyChecks
from ._shapes import describe_unpack_error, why_not_a_message

__all__ = ["MAX_PENDING_FDS", "FrameDecoder"]

# Feeding in slices keeps the unpacker buffer at max_message + one slice.
_FEED_SLICE = 2**20
# What the unpacker sees first of each chunk: a frame head at the start of a chunk is
# found before its trailing bytes are copied into the unpacker's buffer.
_HEAD_SLICE = 16 << 10
#: A receive of up to this many bytes that holds exactly one whole frame (no fds, no
#: trailing bytes) is decoded by one ``unpackb``, never copied into the unpacker's buffer.
#: Below TRAILING_MIN every honest frame is inline msgpack, so that is the bound (an
#: inline 64 KiB echo measured 2.7-2.9x raw with it, 3.6-3.8x with 16 KiB, same runs).
_ALONE_MAX = _largebytes.TRAILING_MIN
_tuple_new = tuple.__new__


#: msgpack's pure-Python Unpacker re-parses a partial top-level object from its start
#: whenever more bytes arrive, calling the hooks again for what it had already seen.
_REPARSES = msgpack.Unpacker.__module__.endswith("fallback")






class FrameDecoder(KeyChecks, ExtensionDecoding):
    """Turns a byte stream (plus received fds) into validated messages.

    Every malformed, oversized or out-of-protocol input raises
    :class:`~compartments.errors.ProtocolError`; after that the decoder stays broken
    (the stream has lost sync) and the caller should close the channel.

    Memory is bounded: a frame, trailing bytes included, may not exceed ``max_message``
    bytes on the wire, and a container header may announce at most ``max_message // 8``
    entries (msgpack preallocates them), unless the stream comes ``from_parent``, which
    is trusted and may send any list that fits in a frame. Decoded Python objects can
    still be larger than their wire form (an empty map is one byte on the wire and ~64
    bytes as a dict), so choose ``max_message`` with that amplification in mind.

    Work is linear in the frame, too: a dict is built with one hash per key, and CPython
    hashes tuples, ints and floats without a secret, so a sender can make them collide
    and the build quadratic. From any stream but the parent's, array keys are refused
    and int/float keys are budgeted per frame (``_limits.MAX_PREDICTABLE_KEY_COST``).

    Fds travel with the first chunk of the frame that references them; the sender
    attaches them to its first ``sendmsg``, and the kernel delivers them with the
    bytes of that first chunk. So fds fed with bytes [a, b) belong to the one frame
    that starts within [a, b), which must reference all of them, in order.

    While a frame's trailing bytes are due, :attr:`trailing_target` is the buffer they
    go to; a reader may receive into it directly and report with
    :meth:`trailing_received`, which is how a payload avoids every user-space copy.
    """

    def __init__(
        self,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        name: str = "peer",
        from_parent: bool = False,
    ) -> None:
        if max_message < 64:
            raise ValueError("max_message must be at least 64 bytes")
        self.max_message = max_message
        self.name = name
        # PeerRefs only make sense from the parent: a PeerRef takes a channel slot.
        self._from_parent = from_parent
        # What the frame being parsed has announced so far, checked as the parser goes:
        # worst-case dict work on keys with predictable hashes, trailing bytes, fd refs.
        self._key_cost = 0
        self._announced_trailing = 0
        self._fd_refs = 0
        limits = {
            "raw": False,
            "use_list": True,
            "strict_map_key": False,
            "object_pairs_hook": self._checked_map,
            # A timestamp ext (-1) bypasses ext_hook; as a float it is just a number.
            "timestamp": 1,
            "max_str_len": max_message,
            "max_bin_len": max_message,
            **_container_limits(max_message, from_parent),
            "max_ext_len": MAX_EXT_LEN,
        }
        self._unpacker = msgpack.Unpacker(
            ext_hook=self._decode_ext, max_buffer_size=max_message + _FEED_SLICE, **limits
        )
        # unpackb bounds every length by the input's own size, so only the hooks remain.
        self._alone_options = {
            "strict_map_key": False,
            "object_pairs_hook": self._checked_map,
            "ext_hook": _hand_to_the_stream,
            "timestamp": 1,
        }
        self._ready: deque[Message] = deque()
        self._fed = 0  # stream offset after the last byte fed
        self._unpacker_fed = 0  # of which the unpacker saw this many
        self._bypassed = 0  # and this many went straight into trailing bytes
        self._frame_start = 0  # stream offset where the frame being decoded starts
        self._batches: deque[FdBatch] = deque()
        self._frame_batch: FdBatch | None = None
        self._frame_fds: list[Fd] = []
        # Trailing bytes of the frame being decoded: each new bytes object with the
        # writable view of its contents, which keeps the object alive.
        self._trailers: list[tuple[bytes, memoryview]] = []
        self._trailing_total = 0
        self._trailer_index = 0
        self._held: Message | None = None  # a decoded message waiting for its trailers
        #: The unfilled rest of the trailing bytes now due, or None between frames.
        self.trailing_target: memoryview | None = None
        self._broken: str | None = None
        self._extensions = False  # the frame being parsed holds an _Ext to act on

    # ------------------------------------------------------------- public API

    def feed(self, data: bytes | bytearray | memoryview, fds: Sequence[int] = ()) -> None:
        """Add bytes (and the fds received with them); complete frames become ready.

        The decoder takes ownership of ``fds`` (closing them on error).
        """
        size = len(data)
        self._take_fds(size, fds)
        if self.trailing_target is None:
            if (
                size <= _ALONE_MAX
                and self.between_frames
                and not self._batches
                and size <= self.max_message
                and self._decode_alone(data)
            ):
                return
            if size <= _HEAD_SLICE:
                self._feed_slice(data)
                return
        view = memoryview(data).cast("B")
        offset, step = 0, _HEAD_SLICE
        while offset < size:
            target = self.trailing_target
            if target is not None:
                taken = min(len(target), size - offset)
                target[:taken] = view[offset : offset + taken]
                self._bypass_into_trailing(taken)
                offset += taken
            else:
                self._feed_slice(view[offset : offset + step])
                offset += step
                step = _FEED_SLICE

    def trailing_received(self, size: int, fds: Sequence[int] = ()) -> None:
        """``size`` bytes were written into :attr:`trailing_target` by the caller."""
        self._take_fds(size, fds)  # refused: fds never travel inside trailing bytes
        target = self.trailing_target
        if target is None or not 0 < size <= len(target):
            raise self._fail("trailing bytes received while none were due")
        self._bypass_into_trailing(size)

    @property
    def between_frames(self) -> bool:
        """No part of a frame is buffered: the next byte starts a new one."""
        return self._fed == self._frame_start

    @property
    def has_ready(self) -> bool:
        """A complete message is waiting: :meth:`next_message` would return it."""
        return bool(self._ready)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        return self._ready.popleft() if self._ready else None

    def __iter__(self) -> Iterator[Message]:
        while self._ready:
            yield self._ready.popleft()

    def close(self) -> None:
        """Close fds not yet claimed by a frame and drop undelivered messages."""
        self._ready.clear()
        self._drop_trailers()
        while self._batches:
            batch = self._batches.popleft()
            close_all(batch.fds[batch.claimed :])
        for fd in self._frame_fds:
            fd.close()
        self._frame_fds.clear()
        if self._broken is None:
            self._broken = f"decoder for `{self.name}` is closed"

    # ---------------------------------------------------------------- internals

    def _fail(self, what: str) -> ProtocolError:
        """Break the decoder for good; the returned error is for the caller to raise."""
        message = f"`{self.name}` sent a malformed frame: {what}"
        self.close()
        self._broken = message
        return ProtocolError(message)

    def _take_fds(self, size: int, fds: Sequence[int]) -> None:
        """Refuse everything once broken; otherwise account for fds that came with bytes."""
        if self._broken is not None:
            close_all(fds)
            raise ProtocolError(self._broken)
        if fds:
            self._accept_fds(size, fds)

    def _bypass_into_trailing(self, size: int) -> None:
        """``size`` stream bytes went straight into the trailing bytes now due."""
        self._fed += size
        self._bypassed += size
        self._advance_trailing(size)


    def _feed_slice(self, data: bytes | bytearray | memoryview) -> None:
        unpacker = self._unpacker
        try:
            unpacker.feed(data)
        except Exception as exc:  # BufferFull cannot happen while frames stay in bounds
            raise self._fail(f"buffer overflow ({exc})") from None
        self._fed += len(data)
        self._unpacker_fed += len(data)
        if _REPARSES:
            self._new_frame_budgets()  # the partial frame is charged again as it is re-parsed
        try:
            for obj in unpacker:
                if self._extensions:
                    self._extensions = False
                    if type(obj) is list:
                        self._act_on_extensions(obj)
                message = self._as_message(obj)
                if self._trailers:
                    self._await_trailers(message)
                else:
                    self._deliver(message)
        except ProtocolError:
            raise
        except Exception as exc:
            raise self._fail(describe_unpack_error(exc)) from None
        if self._fed - self._frame_start > self.max_message:
            raise self._fail(f"frame exceeds max_message ({self.max_message} bytes)")

    def _as_message(self, obj: Any) -> Message:
        """Inline checks for well-formed messages; _reject explains the rest."""
        self._new_frame_budgets()  # the frame is decoded: the next one has its own
        if type(obj) is list and len(obj) == 4:
            kind, msgid, third, fourth = obj
            if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
                self._reject(obj)
            if kind == REQUEST and type(kind) is int:
                if (
                    type(third) is not str
                    or not 0 < len(third) <= MAX_METHOD_LENGTH
                    or type(fourth) is not list
                ):
                    self._reject(obj)
                message: Message = _tuple_new(Request, (msgid, third, fourth))
                return message
            if kind == RESPONSE and type(kind) is int:
                if third is not None and type(third) is not dict:
                    self._reject(obj)
                message = _tuple_new(Response, (msgid, third, fourth))
                return message
        elif type(obj) is list and len(obj) == 3:
            kind, method, params = obj
            if (
                kind == NOTIFICATION
                and type(kind) is int
                and type(method) is str
                and 0 < len(method) <= MAX_METHOD_LENGTH
                and type(params) is list
            ):
                message = _tuple_new(Notification, (method, params))
                return message
        self._reject(obj)

    def _new_frame_budgets(self) -> None:
        self._key_cost = self._announced_trailing = self._fd_refs = 0

    def _decode_alone(self, data: bytes | bytearray | memoryview) -> bool:
        """The common case, cheaply: ``data`` is exactly one whole frame without fds or
        extensions. False (nothing consumed) when it is anything else."""
        self._new_frame_budgets()
        try:
            obj = msgpack.unpackb(data, **self._alone_options)
        except ProtocolError:
            raise
        except Exception:  # extra or missing bytes, an extension: the stream decides
            self._new_frame_budgets()  # the stream decodes these maps again
            return False
        message = self._as_message(obj)
        size = len(data)
        self._fed += size
        self._bypassed += size
        self._frame_start = self._fed
        self._ready.append(message)
        return True

    def _deliver(self, message: Message) -> None:
        end = self._unpacker.tell() + self._bypassed
        if end - self._frame_start > self.max_message:
            raise self._fail(f"frame exceeds max_message ({self.max_message} bytes)")
        if self._frame_batch is not None or self._batches:
            self._finish_frame(end)
        self._frame_fds = []  # the message owns them now
        self._ready.append(message)
        self._frame_start = end

    def _await_trailers(self, message: Message) -> None:
        """Hold ``message`` until its trailing bytes are in; take those already buffered."""
        self._held = message
        self._trailer_index = 0
        self.trailing_target = self._trailers[0][1]
        buffered = self._unpacker_fed - self._unpacker.tell()
        while buffered and self.trailing_target is not None:
            taken = min(buffered, len(self.trailing_target))
            self.trailing_target[:taken] = self._unpacker.read_bytes(taken)
            buffered -= taken
            self._advance_trailing(taken)

    def _advance_trailing(self, size: int) -> None:
        target = self.trailing_target
        assert target is not None
        if size < len(target):
            self.trailing_target = target[size:]
            return
        self._trailer_index += 1
        if self._trailer_index < len(self._trailers):
            self.trailing_target = self._trailers[self._trailer_index][1]
            return
        message = self._held
        assert message is not None
        self._drop_trailers()
        self._deliver(message)

    def _drop_trailers(self) -> None:
        self._trailers = []
        self._trailing_total = 0
        self._held = None
        self.trailing_target = None


    def _reject(self, obj: object) -> NoReturn:
        """Raise the ProtocolError that says what is wrong with a message."""
        raise self._fail(why_not_a_message(obj))














def _container_limits(max_message: int, trusted: bool) -> dict[str, int]:
    """msgpack preallocates what a container header announces (8 bytes an item).

    From a peer that may be hostile, bound that by the frame's own size; from the
    trusted parent, allow every list or map that fits in a frame (an item is at least
    one byte), so nothing the parent can encode within ``max_message`` is refused.
    """
    if trusted:
        return {"max_array_len": max_message, "max_map_len": max_message // 2}
    return {"max_array_len": max_message // 8, "max_map_len": max_message // 16}


class _NotAlone(Exception):
    """An extension makes a frame depend on the stream (fds, trailing bytes)."""


def _hand_to_the_stream(code: int, payload: bytes) -> NoReturn:
    raise _NotAlone








