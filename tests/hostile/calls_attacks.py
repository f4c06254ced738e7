"""Compartments that attack the calling side: Futures that settle themselves, and awaits
that an event loop reads for (issue 14).

Each is sealed with ``SystemIO.nothing()`` (plus sleeping) and writes on its channel (the
socket at fd 64) what a compromised compartment would: replies for msgids the parent gave
up on or never sent, half a frame, an urgent byte, or the end of the stream while it
stays alive.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import msgpack
from wire_attacks import _msgid_being_served, _send_raw

from compartments import RestartPolicy, compartment
from compartments._wire._frames import _TRAILING, EXT_TRAILING
from compartments.rulesets import SystemIO, Threads

CHANNEL_FD = 64  # the parent's channel, first in the compartment's fd block
SLEEP = Threads.nothing().allow_sleep().yes_really()


def hang() -> None:
    threading.Event().wait()


def response(msgid: int, result: Any) -> bytes:
    return bytes(msgpack.packb([1, msgid, None, result], use_bin_type=True))


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Hangup:
    """Ends the stream to the parent, or part of a frame, and stays alive."""

    def ping(self) -> int:
        return 1

    def close_channel_and_live(self) -> None:
        os.close(CHANNEL_FD)
        hang()

    def hang(self) -> None:
        hang()

    def half_a_frame_then_close_and_live(self) -> None:
        _send_raw(response(_msgid_being_served(), "x" * 100)[:20])
        os.close(CHANNEL_FD)
        hang()


@compartment(rules=[SystemIO.nothing(), SLEEP])
def never_answers(value: int) -> int:
    """Takes every call and answers none."""
    hang()
    return value


@compartment(rules=[SystemIO.nothing(), SLEEP])
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _notification(method: str, params: list[Any]) -> bytes:
    return bytes(msgpack.packb([2, method, params], use_bin_type=True))


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Flooder:
    """Buries its reply under what the parent must read first."""

    def ping(self) -> int:
        return 1

    def log_flood(self, megabytes: int) -> int:
        record = _notification("$log", [40, "flood", "x" * 200, None, None, 0])
        chunk = record * (2**20 // len(record))
        for _ in range(megabytes):
            _send_raw(chunk)
        return megabytes

    def huge_trailing_header_then_silence(self) -> None:
        size = 60 * 2**20
        ext = msgpack.ExtType(EXT_TRAILING, _TRAILING.pack(size))
        _send_raw(bytes(msgpack.packb([1, _msgid_being_served(), None, ext], use_bin_type=True)))
        _send_raw(b"y" * 1000)
        hang()


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Hog:
    """Dies slowly: a big address space takes the kernel a while to tear down."""

    def ping(self) -> int:
        return 1

    def fill_then_hang(self, megabytes: int) -> None:
        self.ballast = [b"x" * 2**20 for _ in range(megabytes)]
        hang()

    def fill_then_answer_a_msgid_never_sent(self, megabytes: int) -> None:
        self.ballast = [b"x" * 2**20 for _ in range(megabytes)]
        _send_raw(response(2**32 - 1, "forged"))
        hang()

    def fill_then_send_an_urgent_byte(self, megabytes: int) -> None:
        self.ballast = [b"x" * 2**20 for _ in range(megabytes)]
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=CHANNEL_FD)
        try:
            raw.send(b"!", socket.MSG_OOB)
        finally:
            raw.detach()
        hang()


@compartment(
    rules=[SystemIO.nothing(), SLEEP],
    restart=RestartPolicy(max_restarts=10_000, backoff=0.0),
    timeout=10.0,
)
def crashes_on_multiples_of_seven(value: int) -> int:
    """Answers its argument, except that it dies on every multiple of seven."""
    if value % 7 == 0:
        os._exit(9)
    time.sleep(0.001)
    return value


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Busy:
    """A peer that takes a call and never finishes it: it answers nothing after."""

    def ping(self) -> int:
        return 1

    def hang(self) -> None:
        hang()


@compartment(rules=[SystemIO.nothing(), SLEEP])
def takes_a_peer(peer: Any) -> int:
    """Receives a direct line to another compartment (and leaves it unused)."""
    return 1


@compartment(rules=[SystemIO.nothing(), SLEEP], timeout=30.0)
def nap_then_measure(seconds: float, payload: Any) -> int:
    """Reads nothing for ``seconds``, then answers how big its argument was."""
    time.sleep(seconds)
    return len(payload)
