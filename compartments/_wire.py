"""msgpack-RPC frames between compartments, safe to decode from a hostile peer.

Only msgpack-native values cross (None, bool, int, float, str, bytes, list/tuple,
dict) plus three extensions that reference file descriptors travelling in the same
frame via SCM_RIGHTS: :class:`Fd` (ext 1), :class:`PeerRef` (ext 2) and a large
payload's memfd (ext 3, see ``_largebytes``). No pickle: a compromised compartment can
send bytes, never code. ``Fd``/``PeerRef`` live in ``_fd`` and error payloads in
``_remote_errors``; both are re-exported here.

Encoding is on the hot path of every call, so it tries the cheapest thing first
(a reused per-thread ``Packer``) and only does extra work when that fails: frames
with fds take a second pass that collects them, and unencodable arguments take a
walk that names the culprit.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import msgpack

from . import _largebytes
from ._fd import MAX_NAME_LENGTH, Fd, PeerRef
from ._remote_errors import RemoteTraceback, a_type, decode_error, encode_error
from .errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_FDS_PER_FRAME",
    "MAX_METHOD_LENGTH",
    "MAX_MSGID",
    "Fd",
    "FrameDecoder",
    "Message",
    "Notification",
    "PeerRef",
    "RemoteTraceback",
    "Request",
    "Response",
    "decode_error",
    "encode_error",
    "encode_notification",
    "encode_request",
    "encode_response",
]

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_MSGID = 2**32 - 1
MAX_METHOD_LENGTH = 256
DEFAULT_MAX_MESSAGE = 64 * 2**20
# Kernel limit is SCM_MAX_FD (253); a frame never needs more than a handful.
MAX_FDS_PER_FRAME = 64
# Fds received ahead of the frame that claims them; more than this is an attack.
MAX_PENDING_FDS = 64
# The traceback text shipped with an error; keeps one error from filling a frame.

EXT_FD = 1
EXT_PEER = 2
EXT_MEMFD = 3
_MEMFD = struct.Struct("!IQ")  # fd index, byte count
_FD_INDEX = struct.Struct("!I")
# Feeding in slices keeps the unpacker buffer at max_message + one slice.
_FEED_SLICE = 2**20
_MAX_EXT_LEN = _FD_INDEX.size + 4 * MAX_NAME_LENGTH

NATIVE_TYPES_HINT = (
    "msgpack-native types only: None, bool, int, float, str, bytes, list, tuple, dict, Fd"
)


class Request(NamedTuple):
    msgid: int
    method: str
    params: list[Any]


class Response(NamedTuple):
    msgid: int
    error: dict[Any, Any] | None
    result: Any


class Notification(NamedTuple):
    method: str
    params: list[Any]


Message = Request | Response | Notification


# --------------------------------------------------------------------- encoding


class _CarriesFds(Exception):
    """Raised by the fast-path hook so the frame is re-encoded collecting fds."""


def _fast_default(obj: object) -> object:
    if isinstance(obj, (Fd, PeerRef, _largebytes.LargeBytes)):
        raise _CarriesFds
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


_packers = threading.local()


def _thread_packer() -> Any:
    """A Packer per thread: half the cost of ``msgpack.packb``, which builds one per call."""
    packer = _packers.packer = msgpack.Packer(
        use_bin_type=True, default=_fast_default, datetime=False
    )
    return packer


def _pack_collecting_fds(obj: object) -> tuple[bytes, list[int]]:
    fds: list[int] = []

    def default(value: object) -> object:
        if isinstance(value, Fd):
            fds.append(value.fileno())
            return msgpack.ExtType(EXT_FD, _FD_INDEX.pack(len(fds) - 1))
        if isinstance(value, PeerRef):
            fds.append(value.fd.fileno())
            payload = _FD_INDEX.pack(len(fds) - 1) + value.name.encode("utf-8")
            return msgpack.ExtType(EXT_PEER, payload)
        if isinstance(value, _largebytes.LargeBytes):
            fds.append(value.fd)
            return msgpack.ExtType(EXT_MEMFD, _MEMFD.pack(len(fds) - 1, value.size))
        raise TypeError(f"can not serialize {type(value).__name__!r} object")

    data: bytes = msgpack.packb(obj, use_bin_type=True, default=default, datetime=False)
    if len(fds) > MAX_FDS_PER_FRAME:
        raise ValueError(
            f"a frame can carry at most {MAX_FDS_PER_FRAME} Fd/PeerRef values, got {len(fds)}"
        )
    return data, fds


# The three encoders repeat their fast path inline: a shared helper taking a closure
# for the error wording costs more than the packing itself.


def encode_request(
    msgid: int, method: str, params: Sequence[Any], *, names: Sequence[str] | None = None
) -> tuple[bytes, list[int]]:
    """``[0, msgid, method, params]`` as bytes, plus the fds to send alongside.

    ``names`` (the parameter names, aligned with ``params``) are used only to word
    the ``TypeError``/``OverflowError`` raised for an argument that cannot cross.
    """
    if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
        _bad_msgid(msgid)
    if type(method) is not str or not 0 < len(method) <= MAX_METHOD_LENGTH:
        _bad_method(method)
    frame = [REQUEST, msgid, method, params]
    return _encode_frame(frame, _explain_arguments, method, params, names)


def encode_response(
    msgid: int, error: Mapping[str, Any] | None, result: Any, *, method: str = ""
) -> tuple[bytes, list[int]]:
    """``[1, msgid, error, result]``; ``method`` only words the error for a bad result."""
    if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
        _bad_msgid(msgid)
    return _encode_frame([RESPONSE, msgid, error, result], _explain_result, result, method)


def encode_notification(
    method: str, params: Sequence[Any], *, names: Sequence[str] | None = None
) -> tuple[bytes, list[int]]:
    """``[2, method, params]``: a call that expects no reply."""
    if type(method) is not str or not 0 < len(method) <= MAX_METHOD_LENGTH:
        _bad_method(method)
    return _encode_frame([NOTIFICATION, method, params], _explain_arguments, method, params, names)


def _encode_frame(
    frame: list[Any], explain: Callable[..., Exception | None], *context: Any
) -> tuple[bytes, list[int]]:
    """The thread's packer on the fast path; fds collected, or the culprit named, after.

    ``explain(*context)`` runs only on failure, so the hot path allocates no closure.
    """
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _thread_packer()
    try:
        return packer.pack(frame), []
    except _CarriesFds:
        pass
    except (TypeError, ValueError, OverflowError) as exc:
        _raise_unencodable(exc, explain(*context))
    try:
        return _pack_collecting_fds(frame)
    except (TypeError, ValueError, OverflowError) as exc:
        _raise_unencodable(exc, explain(*context))


def _explain_result(result: object, method: str) -> Exception | None:
    return _explain_value(result, _result_label(method), "result")


def _bad_msgid(msgid: object) -> NoReturn:
    raise ValueError(f"msgid must be an int in 0..{MAX_MSGID}, got {msgid!r}")


def _bad_method(method: object) -> NoReturn:
    raise ValueError(f"method must be a str of 1..{MAX_METHOD_LENGTH} chars, got {method!r}")


# ------------------------------------------------- naming an unencodable value

_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
_BIN_MAX = 2**32 - 1
# msgpack's Packer refuses deeper nesting than this.
_MAX_NESTING = 511


class _Unencodable(Exception):
    def __init__(self, path: str, problem: str, overflow: bool = False) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem
        self.overflow = overflow


def _raise_unencodable(original: Exception, explained: Exception | None) -> NoReturn:
    if explained is None:  # the walk found nothing: keep msgpack's own words
        explained = TypeError(f"value cannot cross a compartment boundary: {original}")
    raise explained from None


def _explain_arguments(
    method: str, params: Sequence[Any], names: Sequence[str] | None
) -> Exception | None:
    for position, value in enumerate(params):
        name = names[position] if names is not None and position < len(names) else None
        where = f"argument `{name}` (position {position})" if name else f"argument {position}"
        root = name or f"args[{position}]"
        explained = _explain_value(value, f"{where} of call `{method}`", root)
        if explained is not None:
            return explained
    return None


def _result_label(method: str) -> str:
    return f"result of call `{method}`" if method else "result"


def _explain_value(value: object, label: str, root: str) -> Exception | None:
    """A TypeError/OverflowError saying why ``value`` cannot be encoded, or None."""
    try:
        _find_unencodable(value, root, 0)
    except _Unencodable as found:
        at = "is" if found.path == root else f"holds, at `{found.path}`,"
        text = (
            f"{label} {at} {found.problem}, which cannot cross a compartment boundary; "
            f"{NATIVE_TYPES_HINT}"
        )
        return OverflowError(text) if found.overflow else TypeError(text)
    return None


def _find_unencodable(value: object, path: str, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise _Unencodable(path, f"nested deeper than {_MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, float, Fd, PeerRef)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _UINT_MAX:
            raise _Unencodable(path, "an int outside the 64-bit range", overflow=True)
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Unencodable(path, "a str that is not valid UTF-8 (lone surrogate)") from None
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > _BIN_MAX:
            raise _Unencodable(path, "a bytes object larger than 4 GiB")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _find_unencodable(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            key_path = f"{path}[{key!r}]" if isinstance(key, (str, int, bytes)) else path
            if not (key is None or isinstance(key, (bool, int, float, str, bytes, tuple))):
                raise _Unencodable(path, f"a dict key of type {type(key).__name__}")
            _find_unencodable(key, key_path, depth + 1)
            _find_unencodable(item, key_path, depth + 1)
        return
    raise _Unencodable(path, a_type(value))


# --------------------------------------------------------------------- decoding

_KEY_TYPES = frozenset({str, bytes, int, bool, float, type(None)})
_tuple_new = tuple.__new__


class _FdBatch:
    """Fds that arrived with the bytes at stream offsets [start, end)."""

    __slots__ = ("claimed", "end", "fds", "start")

    def __init__(self, start: int, end: int, fds: list[int]) -> None:
        self.start = start
        self.end = end
        self.fds = fds
        self.claimed = 0


class FrameDecoder:
    """Turns a byte stream (plus received fds) into validated messages.

    Every malformed, oversized or out-of-protocol input raises
    :class:`~compartments.errors.ProtocolError`; after that the decoder stays broken
    (the stream has lost sync) and the caller should close the channel.

    Memory is bounded: a frame may not exceed ``max_message`` bytes on the wire, and
    a container header may announce at most ``max_message // 8`` entries (msgpack
    preallocates them). Decoded Python objects can still be larger than their wire
    form (an empty map is one byte on the wire and ~64 bytes as a dict), so choose
    ``max_message`` with that amplification in mind.

    Fds travel with the first chunk of the frame that references them; the sender
    attaches them to its first ``sendmsg``, and the kernel delivers them with the
    bytes of that first chunk. So fds fed with bytes [a, b) belong to the one frame
    that starts within [a, b), which must reference all of them, in order.
    """

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE, name: str = "peer") -> None:
        if max_message < 64:
            raise ValueError("max_message must be at least 64 bytes")
        self.max_message = max_message
        self.name = name
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=False,
            object_pairs_hook=self._checked_map,
            ext_hook=self._decode_ext,
            # A timestamp ext (-1) bypasses ext_hook; as a float it is just a number.
            timestamp=1,
            max_buffer_size=max_message + _FEED_SLICE,
            max_str_len=max_message,
            max_bin_len=max_message,
            max_array_len=max_message // 8,
            max_map_len=max_message // 16,
            max_ext_len=_MAX_EXT_LEN,
        )
        self._ready: deque[Message] = deque()
        self._fed = 0  # stream offset after the last byte fed
        self._frame_start = 0  # stream offset where the frame being decoded starts
        self._batches: deque[_FdBatch] = deque()
        self._frame_batch: _FdBatch | None = None
        self._frame_fds: list[Fd] = []
        self._broken: str | None = None

    # ------------------------------------------------------------- public API

    def feed(self, data: bytes | bytearray | memoryview, fds: Sequence[int] = ()) -> None:
        """Add bytes (and the fds received with them); complete frames become ready.

        The decoder takes ownership of ``fds`` (closing them on error).
        """
        if self._broken is not None:
            _close_all(fds)
            raise ProtocolError(self._broken)
        size = len(data)
        if fds:
            self._accept_fds(size, fds)
        if size <= _FEED_SLICE:
            self._feed_slice(data)
        else:
            view = memoryview(data)
            for offset in range(0, size, _FEED_SLICE):
                self._feed_slice(view[offset : offset + _FEED_SLICE])

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        return self._ready.popleft() if self._ready else None

    def __iter__(self) -> Iterator[Message]:
        while self._ready:
            yield self._ready.popleft()

    @property
    def pending_fds(self) -> int:
        return sum(len(batch.fds) - batch.claimed for batch in self._batches)

    def close(self) -> None:
        """Close fds not yet claimed by a frame and drop undelivered messages."""
        self._ready.clear()
        while self._batches:
            batch = self._batches.popleft()
            _close_all(batch.fds[batch.claimed :])
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

    def _accept_fds(self, size: int, fds: Sequence[int]) -> None:
        incoming = list(fds)
        if size == 0:
            _close_all(incoming)
            raise self._fail("fds arrived without any bytes")
        if self.pending_fds + len(incoming) > MAX_PENDING_FDS:
            _close_all(incoming)
            raise self._fail(f"more than {MAX_PENDING_FDS} fds pending without a frame")
        self._batches.append(_FdBatch(self._fed, self._fed + size, incoming))

    def _feed_slice(self, data: bytes | bytearray | memoryview) -> None:
        unpacker = self._unpacker
        try:
            unpacker.feed(data)
        except Exception as exc:  # BufferFull cannot happen while frames stay in bounds
            raise self._fail(f"buffer overflow ({exc})") from None
        self._fed += len(data)
        ready = self._ready
        try:
            for obj in unpacker:
                # Inline checks for well-formed messages; _reject explains the rest.
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
                    elif kind == RESPONSE and type(kind) is int:
                        if third is not None and type(third) is not dict:
                            self._reject(obj)
                        message = _tuple_new(Response, (msgid, third, fourth))
                    else:
                        self._reject(obj)
                elif type(obj) is list and len(obj) == 3:
                    kind, method, params = obj
                    if (
                        kind != NOTIFICATION
                        or type(kind) is not int
                        or type(method) is not str
                        or not 0 < len(method) <= MAX_METHOD_LENGTH
                        or type(params) is not list
                    ):
                        self._reject(obj)
                    message = _tuple_new(Notification, (method, params))
                else:
                    self._reject(obj)
                end = unpacker.tell()
                if end - self._frame_start > self.max_message:
                    raise self._fail(f"frame exceeds max_message ({self.max_message} bytes)")
                if self._frame_batch is not None or self._batches:
                    self._finish_frame(end)
                self._frame_fds = []  # the message owns them now
                ready.append(message)
                self._frame_start = end
        except ProtocolError:
            raise
        except Exception as exc:
            raise self._fail(_describe_unpack_error(exc)) from None
        if self._fed - self._frame_start > self.max_message:
            raise self._fail(f"frame exceeds max_message ({self.max_message} bytes)")

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

    def _reject(self, obj: object) -> NoReturn:
        """Raise the ProtocolError that says what is wrong with a message."""
        if type(obj) is not list or not obj:
            raise self._fail(f"expected a non-empty array, got {a_type(obj)}")
        kind = obj[0]
        if type(kind) is not int or kind not in (REQUEST, RESPONSE, NOTIFICATION):
            raise self._fail(f"unknown message type {_short(kind)}")
        expected = 3 if kind == NOTIFICATION else 4
        if len(obj) != expected:
            raise self._fail(f"message of type {kind} has {len(obj)} fields, not {expected}")
        if kind == NOTIFICATION:
            self._check_method(obj[1])
            self._check_params(obj[2])
        else:
            self._check_msgid(obj[1])
        if kind == REQUEST:
            self._check_method(obj[2])
            self._check_params(obj[3])
        if kind == RESPONSE:
            raise self._fail(f"response error is {a_type(obj[2])}, not a map or nil")
        raise self._fail("message rejected")  # unreachable unless the checks disagree

    def _check_msgid(self, msgid: object) -> None:
        if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
            raise self._fail(f"msgid must be an int in 0..{MAX_MSGID}, got {_short(msgid)}")

    def _check_method(self, method: object) -> None:
        if type(method) is not str or not 0 < len(method) <= MAX_METHOD_LENGTH:
            raise self._fail(
                f"method must be a str of 1..{MAX_METHOD_LENGTH} chars, got {_short(method)}"
            )

    def _check_params(self, params: object) -> None:
        if type(params) is not list:
            raise self._fail(f"params must be an array, got {a_type(params)}")

    def _checked_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        for key, _ in pairs:
            if type(key) not in _KEY_TYPES:
                raise self._fail(f"map key of type {type(key).__name__} is not allowed")
        return dict(pairs)

    def _decode_ext(self, code: int, payload: bytes) -> object:
        if code == EXT_FD:
            if len(payload) != _FD_INDEX.size:
                raise self._fail(f"Fd extension of {len(payload)} bytes")
            return self._claim_fd(_FD_INDEX.unpack(payload)[0])
        if code == EXT_PEER:
            if len(payload) <= _FD_INDEX.size:
                raise self._fail("PeerRef extension without a name")
            try:
                name = payload[_FD_INDEX.size :].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail("PeerRef name is not valid UTF-8") from None
            if len(name) > MAX_NAME_LENGTH:
                raise self._fail(f"PeerRef name longer than {MAX_NAME_LENGTH} chars")
            fd = self._claim_fd(_FD_INDEX.unpack_from(payload)[0])
            return PeerRef(fd, name)
        if code == EXT_MEMFD:
            return self._large_bytes(payload)
        raise self._fail(f"unknown extension type {code}")

    def _large_bytes(self, payload: bytes) -> bytes:
        if len(payload) != _MEMFD.size:
            raise self._fail(f"memfd extension of {len(payload)} bytes")
        index, size = _MEMFD.unpack(payload)
        if size > self.max_message:
            raise self._fail(f"memfd payload of {size} bytes exceeds max_message")
        with self._claim_fd(index) as fd:
            try:
                data = _largebytes.reader(fd.fileno(), size)
            except OSError as exc:
                raise self._fail(f"unreadable memfd payload: {exc}") from None
        if len(data) != size:
            raise self._fail(f"memfd held {len(data)} bytes, {size} were announced")
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


def _describe_unpack_error(exc: Exception) -> str:
    if isinstance(exc, msgpack.StackError):
        return "nesting too deep"
    if isinstance(exc, UnicodeDecodeError):
        return "str is not valid UTF-8"
    if isinstance(exc, TypeError):
        return f"unusable map key ({exc})"
    return str(exc) or type(exc).__name__


def _short(value: object) -> str:
    text = repr(value) if isinstance(value, (int, float, bool, type(None))) else a_type(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
