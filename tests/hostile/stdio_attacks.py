"""Compartments that forge ``$out`` notifications: the parent's stdout and stderr relay
is what they hit. Each frame is built inside the child and written raw on fd 64."""

from __future__ import annotations

from typing import Any

import msgpack
from wire_attacks import _send_raw as send_raw

from compartments import compartment
from compartments.rulesets import SystemIO

MiB = 2**20


def out_frame(params: list[Any]) -> bytes:
    return msgpack.packb([2, "$out", params], use_bin_type=True)


MALFORMED = {
    "fd_3": out_frame([3, b"x\n", 0]),
    "fd_bool": out_frame([True, b"x\n", 0]),
    "text_str": out_frame([1, "x\n", 0]),
    "dropped_negative": out_frame([1, b"x\n", -1]),
    "dropped_float": out_frame([1, b"x\n", 1.0]),
    "two_fields": out_frame([1, b"x\n"]),
}


@compartment(rules=[SystemIO.nothing()])
class OutForger:
    def ping(self) -> int:
        return 1

    def huge(self, size: int) -> None:
        send_raw(out_frame([1, b"A" * size + b"\n", 0]))

    def forged_drops(self, count: int) -> None:
        send_raw(b"".join(out_frame([2, b"", 2**63 - 1]) for _ in range(count)))

    def fake_prefix(self) -> None:
        send_raw(out_frame([1, b"mine\n[someone else] fake line\n\r[x] carriage\n", 0]))

    def malformed(self, kind: str) -> None:
        send_raw(MALFORMED[kind])
