"""Compartments that attack the parent through what it decodes from them.

Each one is sealed with ``SystemIO.nothing()`` and does the hostile thing itself: it
writes a hand-made reply straight onto its channel (the socket at fd 64, bypassing the
framework's encoder, as a compromised compartment would), raises an exception built to
hurt whoever formats it, or hands the kernel a path meant for a terminal. Every input
is built inside the child, so the parent's request stays small.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

import msgpack

from compartments import compartment
from compartments.rulesets import SystemIO

MiB = 2**20
CHANNEL_FD = 64  # the parent's channel, first in the compartment's fd block

# CPython's tuple hash (xxHash's round, unkeyed): what a sender needs to make keys collide.
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_M64 = 2**64 - 1
_P2_INVERSE = pow(_P2, -1, 2**64)
_INT_HASH_MODULUS = 2**61 - 1


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M64
    acc = ((acc << 31) | (acc >> 33)) & _M64
    return (acc * _P1) & _M64


def _int_with_hash(target: int) -> int | None:
    """An int whose ``hash()`` is ``target`` (as an unsigned 64-bit lane), if one exists."""
    if target < _INT_HASH_MODULUS:
        return target
    negative = target - 2**64  # hash(-x) == -hash(x), for x < the modulus
    if -_INT_HASH_MODULUS < negative < -2:
        return negative
    return None


def colliding_pairs(count: int, nested: bool = False) -> list[tuple[Any, int]]:
    """``count`` distinct 2-tuples sharing one hash: ``(a, b)``, or ``((a,), b)``."""
    # After the first lane the state is acc1; the second lane must bring it to one value.
    wanted = _round(_P5, 0)
    found: list[tuple[Any, int]] = []
    a = 1
    while len(found) < count:
        first: Any = (a,) if nested else a
        acc1 = _round(_P5, hash(first) & _M64)
        b = _int_with_hash(((wanted - acc1) * _P2_INVERSE) & _M64)
        if b is not None:
            found.append((first, b))
        a += 1
    return found


def int_keys_sharing_probe_paths(count: int) -> list[int]:
    return [i << 17 for i in range(1, count + 1)]


def _send_raw(data: bytes, fd: int = CHANNEL_FD) -> None:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        raw.sendall(data)
    finally:
        raw.detach()


def _msgid_being_served() -> int:
    """The msgid of the request this method runs for, from the server's frame."""
    frame = sys._getframe(1)
    while frame is not None:
        for name in ("request", "message"):
            value = frame.f_locals.get(name)
            if type(value).__name__ == "Request":
                return int(value.msgid)
        frame = frame.f_back
    raise RuntimeError("no request on the stack")


def _reply_raw(error: Any, result: Any = None) -> None:
    """Answer the call being served with a hand-made frame, then never return."""
    _send_raw(msgpack.packb([1, _msgid_being_served(), error, result], use_bin_type=True))
    threading.Event().wait()


def packed_map(keys: list[Any]) -> bytes:
    """A msgpack map of ``keys`` (each to 1), packed without building the dict here:
    that would cost the sender the same quadratic time."""
    header = b"\xdf" + len(keys).to_bytes(4, "big")
    return header + b"".join(msgpack.packb(key) + b"\x01" for key in keys)


def _reply_raw_result(packed_result: bytes) -> None:
    head = b"\x94\x01" + msgpack.packb(_msgid_being_served()) + b"\xc0"
    _send_raw(head + packed_result)
    threading.Event().wait()


def _error(type_name: str, args: list[Any], message: str = "boom", **extra: Any) -> dict[str, Any]:
    return {"type": type_name, "message": message, "traceback": "", "builtin": True,
            "args": args, **extra}  # fmt: skip


@compartment(rules=[SystemIO.nothing()])
class ErrorForger:
    """Error replies that name a builtin type with values its C code does not check."""

    def unicode_decode_error_before_its_object(self) -> None:
        start = -(2**60)  # str() reads object[start]: gh-123378, a segfault
        _reply_raw(_error("UnicodeDecodeError", ["utf-8", b"\xff", start, start + 1, "bad"]))

    def unicode_encode_error_before_its_object(self) -> None:
        start = -(2**40)
        _reply_raw(_error("UnicodeEncodeError", ["utf-8", "\xe9", start, start + 1, "bad"]))

    def unicode_translate_error_past_its_object(self) -> None:
        _reply_raw(_error("UnicodeTranslateError", ["a", 2**40, 2**40 + 1, "bad"]))

    def oserror_with_garbage_errno_and_filename(self) -> None:
        name = "/" + "x" * MiB
        _reply_raw(_error("FileNotFoundError", [2**62, "gone"], errno=2**62, strerror="gone",
                          filename=name, filename2=None))  # fmt: skip

    def value_error_with_huge_args(self) -> None:
        raise ValueError(*["A" * MiB] * 8)


class Evil(Exception):
    pass


# The type name is text the parent shows: a class can be called anything.
Evil.__qualname__ = Evil.__name__ = "Evil\x1b[2J\x1b]0;owned\x07\nFAKE: log line"
_TERMINAL_TEXT = "fine\n[CRITICAL] forged record\x1b]0;owned\x07\x1b[31m"


@compartment(rules=[SystemIO.nothing()])
class TextForger:
    """Text built to forge a log record or drive the terminal of whoever prints it."""

    def open_path(self, path: str) -> None:
        with open(path):
            pass

    def raise_evil(self) -> None:
        raise Evil(_TERMINAL_TEXT)

    def raise_value_error(self, text: str, repeat: int = 1) -> None:
        raise ValueError(text * repeat)

    def raise_bidi_and_surrogate(self) -> None:
        # The bidi override makes a reader see "total: 1001000"; the surrogate cannot
        # be UTF-8, so whoever prints it raw gets UnicodeEncodeError instead.
        raise ValueError("total: 100\u202e0001 \udcff" + _TERMINAL_TEXT)


@compartment(rules=[SystemIO.nothing()], max_message=64 * MiB)
class KeyForger:
    """Replies whose maps cost the decoder far more than their size."""

    def colliding_tuple_keys(self, count: int, nested: bool = False) -> None:
        _reply_raw_result(packed_map(list(colliding_pairs(count, nested))))

    def colliding_tuple_keys_in_small_maps(self, maps: int, per_map: int) -> None:
        one = packed_map(list(colliding_pairs(per_map)))
        _reply_raw_result(b"\xdd" + maps.to_bytes(4, "big") + one * maps)

    def int_keys_sharing_probe_paths(self, count: int) -> None:
        # Distinct hashes, but their low bits agree: CPython's probing clusters them.
        _reply_raw_result(packed_map(int_keys_sharing_probe_paths(count)))

    def return_tuple_keys(self) -> dict[Any, int]:
        return {(1, 2): 3}

    def return_many_int_keys(self, count: int) -> dict[int, int]:
        return dict.fromkeys(range(count), 1)

    def ping(self) -> int:
        return 1
