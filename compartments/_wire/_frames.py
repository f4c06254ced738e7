"""msgpack-RPC frames between compartments, safe to decode from a hostile peer.

Only msgpack-native values cross (None, bool, int, float, str, bytes, list/tuple,
dict) plus three extensions. Two reference file descriptors travelling in the same
frame via SCM_RIGHTS: :class:`Fd` (ext 1) and :class:`PeerRef` (ext 2). The third
(ext 4) stands for a large bytes value that follows the frame's msgpack head raw, so
nobody copies it in user space (see ``_largebytes``). Ext 3 was a large payload's
memfd; it is retired, and refused from everyone. No pickle: a compromised compartment
can send bytes, never code.
``Fd``/``PeerRef`` live in ``_fd`` and error payloads in ``_remote_errors``; both are
re-exported here.

Encoding is on the hot path of every call, so it tries the cheapest thing first
(a reused per-thread ``Packer``) and only does extra work when that fails: frames
with fds or trailing bytes take a second pass that collects them, and unencodable
arguments take a walk that names the culprit. An encoded frame is its bytes, or, when
it has trailing bytes, the list of parts to write in order.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import msgpack

from . import _largebytes
from ._fd import Fd, PeerRef
from ._limits import MAX_NESTING
from ._remote_errors import RemoteTraceback, a_type, decode_error, encode_error
from ._sent_keys import LEAVES, check_keys_from_compartment

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_FDS_PER_FRAME",
    "MAX_METHOD_LENGTH",
    "MAX_MSGID",
    "Fd",
    "FrameBytes",
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
    "frame_size",
]

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_MSGID = 2**32 - 1
MAX_METHOD_LENGTH = 256
DEFAULT_MAX_MESSAGE = 64 * 2**20
# Kernel limit is SCM_MAX_FD (253); a frame never needs more than a handful.
MAX_FDS_PER_FRAME = 64

EXT_FD = 1
EXT_PEER = 2
EXT_MEMFD = 3
EXT_TRAILING = 4
_MEMFD = struct.Struct("!IQ")  # fd index, byte count
_TRAILING = struct.Struct("!Q")  # byte count
_FD_INDEX = struct.Struct("!I")

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
#: An encoded frame: one buffer, or its parts (msgpack head, then trailing bytes).
FrameBytes = bytes | list[bytes]


# --------------------------------------------------------------------- encoding


_OUT_OF_BAND = (Fd, PeerRef, _largebytes.TrailingBytes)


class _NeedsSecondPass(Exception):
    """Raised by the fast-path hook so the frame is re-encoded collecting fds and trailers."""


def _fast_default(obj: object) -> object:
    if isinstance(obj, _OUT_OF_BAND):
        raise _NeedsSecondPass
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


_packers = threading.local()


def _thread_packer() -> Any:
    """A Packer per thread: half the cost of ``msgpack.packb``, which builds one (and
    its 1 MiB buffer) per call."""
    packer = _packers.packer = msgpack.Packer(
        use_bin_type=True, default=_fast_default, datetime=False
    )
    return packer


class _Collector:
    """The second pass: a thread's Packer whose hook moves fds and trailing bytes out."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.trailers: list[bytes] = []
        self.packer = msgpack.Packer(use_bin_type=True, default=self.default, datetime=False)

    def default(self, value: object) -> object:
        fds = self.fds
        if isinstance(value, Fd):
            fds.append(value.fileno())
            return msgpack.ExtType(EXT_FD, _FD_INDEX.pack(len(fds) - 1))
        if isinstance(value, PeerRef):
            fds.append(value.fd.fileno())
            payload = _FD_INDEX.pack(len(fds) - 1) + value.name.encode("utf-8")
            return msgpack.ExtType(EXT_PEER, payload)
        if isinstance(value, _largebytes.TrailingBytes):
            self.trailers.append(value.data)
            return msgpack.ExtType(EXT_TRAILING, _TRAILING.pack(len(value.data)))
        raise TypeError(f"can not serialize {type(value).__name__!r} object")

    def pack(self, obj: object) -> tuple[FrameBytes, list[int]]:
        fds: list[int] = []
        trailers: list[bytes] = []
        self.fds, self.trailers = fds, trailers
        try:
            data: bytes = self.packer.pack(obj)
        finally:  # the caller's fds and bytes are not kept alive here
            self.fds, self.trailers = [], []
        if len(fds) > MAX_FDS_PER_FRAME:
            raise ValueError(
                f"a frame can carry at most {MAX_FDS_PER_FRAME} Fd/PeerRef values, got {len(fds)}"
            )
        return ([data, *trailers] if trailers else data), fds


def _pack_collecting(obj: object) -> tuple[FrameBytes, list[int]]:
    try:
        collector: _Collector = _packers.collector
    except AttributeError:
        collector = _packers.collector = _Collector()
    return collector.pack(obj)


# The three encoders repeat their fast path inline: a shared helper taking a closure
# for the error wording costs more than the packing itself.


def encode_request(
    msgid: int, method: str, params: Sequence[Any], *, names: Sequence[str] | None = None
) -> tuple[FrameBytes, list[int]]:
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
) -> tuple[FrameBytes, list[int]]:
    """``[1, msgid, error, result]``; ``method`` only words the error for a bad result.

    A large bytes result travels as trailing bytes. Only compartments answer, so a
    result with map keys the parent refuses (tuples, too many ints) raises here.
    """
    if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
        _bad_msgid(msgid)
    if type(result) is bytes and len(result) >= _largebytes.TRAILING_MIN:
        result = _largebytes.TrailingBytes(result)
    elif type(result) not in LEAVES:
        check_keys_from_compartment(result, _result_label(method), "result")
    return _encode_frame([RESPONSE, msgid, error, result], _explain_result, result, method)


def encode_notification(
    method: str, params: Sequence[Any], *, names: Sequence[str] | None = None
) -> tuple[FrameBytes, list[int]]:
    """``[2, method, params]``: a call that expects no reply."""
    if type(method) is not str or not 0 < len(method) <= MAX_METHOD_LENGTH:
        _bad_method(method)
    check_keys_from_compartment(list(params), f"notification `{method}`", "params")
    return _encode_frame([NOTIFICATION, method, params], _explain_arguments, method, params, names)


def frame_size(data: FrameBytes) -> int:
    """Bytes on the wire, trailing bytes included."""
    return len(data) if isinstance(data, bytes) else sum(len(part) for part in data)


def _encode_frame(
    frame: list[Any], explain: Callable[..., Exception | None], *context: Any
) -> tuple[FrameBytes, list[int]]:
    """The thread's packer on the fast path; fds collected, or the culprit named, after.

    ``explain(*context)`` runs only on failure, so the hot path allocates no closure.
    """
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _thread_packer()
    try:
        return packer.pack(frame), []
    except _NeedsSecondPass:
        pass
    except (TypeError, ValueError, OverflowError) as exc:
        _raise_unencodable(exc, explain(*context))
    try:
        return _pack_collecting(frame)
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
    if depth > MAX_NESTING:
        raise _Unencodable(path, f"nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, float, *_OUT_OF_BAND)):
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
