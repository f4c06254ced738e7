"""Compartments that forge trailing-bytes frames the parent (or a sibling) decodes: many
tiny trailing values, each announced by a 10-byte extension, beside many maps."""

from __future__ import annotations

import contextlib
import struct
import threading
from typing import Any

import msgpack
from wire_attacks import _msgid_being_served as msgid_being_served
from wire_attacks import _send_raw as send_raw

from compartments import compartment
from compartments.rulesets import SystemIO


def _body(trailers: int, maps: int, size: int) -> tuple[bytes, bytes]:
    ext = b"\xd7\x04" + struct.pack("!Q", size)  # fixext 8: the trailing-bytes extension
    items = b"\xdd" + struct.pack("!I", trailers + maps) + ext * trailers + b"\x80" * maps
    return items, b"x" * (size * trailers)


def reply_frame(msgid: int, trailers: int, maps: int, size: int = 2) -> bytes:
    """``[1, msgid, nil, [trailing(size) * trailers, {} * maps]]`` and its trailing bytes."""
    items, trailing = _body(trailers, maps, size)
    return b"\x94\x01" + msgpack.packb(msgid) + b"\xc0" + items + trailing


def request_frame(trailers: int, maps: int, size: int = 2) -> bytes:
    items, trailing = _body(trailers, maps, size)
    return b"\x94\x00\x01\xa4ping" + items + trailing


@compartment(rules=[SystemIO.nothing()])
class TrailerForger:
    def ping(self) -> int:
        return 1

    def reply(self, trailers: int, maps: int, size: int = 2) -> None:
        send_raw(reply_frame(msgid_being_served(), trailers, maps, size))
        threading.Event().wait()


@compartment(rules=[SystemIO.nothing()])
class Victim:
    def ping(self) -> int:
        return 1


@compartment(rules=[SystemIO.nothing()])
class PeerTrailerForger:
    def __init__(self, victim: Any) -> None:
        self.victim = victim  # a PeerProxy: a direct line to the victim

    def send(self, trailers: int, maps: int) -> None:
        """As much of the frame as the sibling reads before it hangs up on us."""
        with contextlib.suppress(OSError):
            send_raw(request_frame(trailers, maps), self.victim._connection.channel.fileno())
