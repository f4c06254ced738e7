"""Large payloads arrive intact; memfd payloads (a retired extension) are refused."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from compartments import compartment
from compartments._wire import _decoder, _frames, _largebytes
from compartments.errors import ProtocolError
from compartments.rulesets import SystemIO

EIGHT_MIB = 8 << 20


@compartment(rules=[SystemIO.nothing()], max_message=32 << 20)
def digest(payload: bytes, tail: int = 4) -> list[Any]:
    return [len(payload), payload[:tail], payload[-tail:]]


@compartment(rules=[SystemIO.nothing()], max_message=1 << 20)
def small_limit(payload: bytes) -> int:
    return len(payload)


def test_large_bytes_arrive_intact_in_a_sealed_compartment() -> None:
    payload = os.urandom(EIGHT_MIB)
    assert digest(payload) == [EIGHT_MIB, payload[:4], payload[-4:]]
    assert digest.violations == []


def test_large_keyword_bytes_arrive_intact() -> None:
    payload = os.urandom(EIGHT_MIB)
    assert digest(payload=payload, tail=2) == [EIGHT_MIB, payload[:2], payload[-2:]]


def test_large_bytes_travel_as_trailing_bytes_not_a_memfd() -> None:
    args, _, made = _largebytes.offload([os.urandom(EIGHT_MIB)], {})
    assert made == [] and isinstance(args[0], _largebytes.TrailingBytes)


def test_large_calls_leave_no_fd_open_in_the_parent() -> None:
    digest(b"warm")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        digest(os.urandom(EIGHT_MIB))
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_call_over_max_message_is_a_value_error_at_the_call_site() -> None:
    with pytest.raises(ValueError, match="over the compartment's max_message"):
        small_limit(b"x" * (2 << 20))
    assert small_limit(b"still works") == 11


def test_any_list_that_fits_in_max_message_reaches_the_compartment() -> None:
    many = [None] * 1_000_000  # 1 MB of msgpack, just under small_limit's 1 MiB
    assert small_limit(many) == 1_000_000  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="over the compartment's max_message"):
        small_limit([None] * (1 << 20))  # type: ignore[arg-type]


def _memfd_frame(content: bytes, announced: int) -> tuple[bytes, int]:
    fd = os.memfd_create("hostile")
    os.write(fd, content)
    frame = msgpack.packb(
        [1, 7, None, msgpack.ExtType(_frames.EXT_MEMFD, _frames._MEMFD.pack(0, announced))],
        use_bin_type=True,
    )
    return frame, fd


def test_a_memfd_payload_even_from_the_parent_is_a_protocol_error() -> None:
    frame, fd = _memfd_frame(b"ten bytes!", announced=10)
    decoder = _decoder.FrameDecoder(name="hostile", from_parent=True)
    with pytest.raises(ProtocolError, match="memfd"):
        decoder.feed(frame, [fd])
        decoder.next_message()


def test_the_fd_of_a_refused_memfd_payload_is_closed() -> None:
    frame, fd = _memfd_frame(b"ten bytes!", announced=10)
    decoder = _decoder.FrameDecoder(name="hostile", from_parent=True)
    with pytest.raises(ProtocolError):
        decoder.feed(frame, [fd])
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_a_pipe_posing_as_a_memfd_is_a_protocol_error() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    frame = msgpack.packb(
        [1, 7, None, msgpack.ExtType(_frames.EXT_MEMFD, _frames._MEMFD.pack(0, 5))],
        use_bin_type=True,
    )
    decoder = _decoder.FrameDecoder(name="hostile", from_parent=True)
    with pytest.raises(ProtocolError, match="memfd"):
        decoder.feed(frame, [read_end])
        decoder.next_message()
