"""Compartments that forge ``$log`` notifications: the parent's ``logging`` is what they hit.

Each writes hand-made frames straight onto its channel (fd 64), past the framework's
handler and its budget, as a compromised compartment would. Every record is built
inside the child, so the parent's request stays small.
"""

from __future__ import annotations

import array
import socket
from typing import Any

import msgpack
from wire_attacks import CHANNEL_FD
from wire_attacks import _send_raw as send_raw

from compartments import compartment
from compartments._wire import _frames
from compartments.rulesets import SystemIO

MiB = 2**20
_TERMINAL = "\x1b]0;owned\x07\x1b[2J\n[CRITICAL] forged record\u202e"


def log_frame(params: list[Any]) -> bytes:
    return msgpack.packb([2, "$log", params], use_bin_type=True)


def record(level: Any = 30, name: Any = "x", message: Any = "m", exc: Any = None,
           stack: Any = None, dropped: Any = 0) -> bytes:  # fmt: skip
    return log_frame([level, name, message, exc, stack, dropped])


_MALFORMED = {
    "level_str": record(level="30"),
    "level_bool": record(level=True),
    "level_float": record(level=30.0),
    "name_int": record(name=5),
    "name_bytes": record(name=b"x"),
    "message_bytes": record(message=b"m"),
    "message_list": record(message=["m"]),
    "exc_int": record(exc=1),
    "stack_map": record(stack={"a": 1}),
    "dropped_str": record(dropped="1"),
    "five_fields": log_frame([30, "x", "m", None, None]),
    "no_fields": log_frame([]),
    "drop_report_str": log_frame(["1"]),
}


@compartment(rules=[SystemIO.nothing()])
class LogForger:
    def huge(self, size: int) -> None:
        text = _TERMINAL + "A" * size
        send_raw(record(message=text, exc="Traceback\n" + text, stack="Stack\n" + text))

    def levels(self, levels: list[int]) -> None:
        send_raw(b"".join(record(level=level, message=str(level)) for level in levels))

    def names(self, names: list[str]) -> None:
        send_raw(b"".join(record(name=name, message=f"from {name!r}") for name in names))

    def distinct_names(self, count: int, parts: int) -> None:
        send_raw(b"".join(
            record(name=".".join(f"p{index}x{part}" for part in range(parts)))
            for index in range(count)
        ))  # fmt: skip

    def flood(self, count: int) -> None:
        send_raw(record(message="flood") * count)

    def malformed(self, kind: str) -> None:
        send_raw(_MALFORMED[kind])

    def with_an_fd(self, count: int) -> None:
        """``count`` records whose message is an Fd: our stdin, riding along each."""
        fd_ref = msgpack.ExtType(_frames.EXT_FD, _frames._FD_INDEX.pack(0))
        frame = log_frame([30, "x", fd_ref, None, None, 0])
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]))]
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=CHANNEL_FD)
        try:
            for _ in range(count):
                raw.sendmsg([frame], rights)
        finally:
            raw.detach()

    def ping(self) -> int:
        return 1


MALFORMED_KINDS = sorted(_MALFORMED)
