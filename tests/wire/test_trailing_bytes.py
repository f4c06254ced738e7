"""Mid-sized bytes travel after their frame's msgpack head, copied by no one in between."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compartments import compartment
from compartments._wire import _frames, _largebytes
from compartments._wire._channel import HEAD_RECEIVE_SIZE, Channel, socketpair
from compartments._wire._decoder import FrameDecoder
from compartments._wire._frames import Fd, Request, Response, encode_request, encode_response
from compartments.errors import ProtocolError
from compartments.rulesets import SystemIO

ONE_MIB = 1 << 20
BIG = _largebytes.TRAILING_MIN


@compartment(rules=[SystemIO.nothing()])
def echo(payload: bytes) -> bytes:
    return payload


@compartment(rules=[SystemIO.nothing()], max_message=32 << 20)
def make(size: int, fill: int) -> bytes:
    return bytes([fill]) * size


def _trailing_frame(*payloads: bytes, msgid: int = 1) -> bytes:
    """A request whose params are trailing-bytes extensions, as one byte string."""
    ext = _frames.EXT_TRAILING
    params = [msgpack.ExtType(ext, _frames._TRAILING.pack(len(p))) for p in payloads]
    head: bytes = msgpack.packb([0, msgid, "m", params], use_bin_type=True)
    return head + b"".join(payloads)


def _hostile_head(ext_payload: bytes) -> bytes:
    ext = msgpack.ExtType(_frames.EXT_TRAILING, ext_payload)
    data: bytes = msgpack.packb([0, 1, "m", [ext]], use_bin_type=True)
    return data


# ------------------------------------------------------------------- encoding


def test_bytes_at_the_threshold_are_sent_as_a_part_of_their_own() -> None:
    payload = os.urandom(BIG)
    data, fds = encode_response(1, None, payload)
    assert isinstance(data, list) and fds == []
    assert data[1] is payload  # the sender's own object: not copied


def test_bytes_below_the_threshold_stay_inside_the_frame() -> None:
    data, _ = encode_response(1, None, os.urandom(BIG - 1))
    assert isinstance(data, bytes)


def test_frame_size_counts_trailing_bytes() -> None:
    data, _ = encode_response(1, None, bytes(BIG))
    assert _frames.frame_size(data) == sum(len(part) for part in data) > BIG


# ------------------------------------------------------------------- decoding


def test_a_frame_with_trailing_bytes_decodes_whole() -> None:
    first, second = os.urandom(BIG), os.urandom(3 * BIG)
    decoder = FrameDecoder()
    decoder.feed(_trailing_frame(first, second))
    assert list(decoder) == [Request(1, "m", [first, second])]


def test_received_trailing_bytes_are_ordinary_hashable_bytes() -> None:
    payload = os.urandom(BIG)
    decoder = FrameDecoder()
    decoder.feed(_trailing_frame(payload))
    message = decoder.next_message()
    assert isinstance(message, Request)
    received = message.params[0]
    assert type(received) is bytes
    assert hash(received) == hash(bytes(bytearray(payload)))


def test_a_message_is_held_back_until_its_trailing_bytes_are_complete() -> None:
    payload = os.urandom(BIG)
    stream = _trailing_frame(payload)
    decoder = FrameDecoder()
    decoder.feed(stream[:-1])
    assert decoder.next_message() is None
    assert decoder.trailing_target is not None and len(decoder.trailing_target) == 1
    decoder.feed(stream[-1:])
    assert decoder.next_message() == Request(1, "m", [payload])
    assert decoder.trailing_target is None


def test_the_frame_after_trailing_bytes_in_the_same_chunk_is_decoded() -> None:
    payload = os.urandom(BIG)
    after, _ = encode_request(2, "next", [1])
    assert isinstance(after, bytes)
    decoder = FrameDecoder()
    decoder.feed(_trailing_frame(payload) + after)
    assert list(decoder) == [Request(1, "m", [payload]), Request(2, "next", [1])]


def test_trailing_bytes_received_directly_into_the_target_complete_the_frame() -> None:
    payload = os.urandom(BIG)
    stream = _trailing_frame(payload)
    head = len(stream) - BIG
    decoder = FrameDecoder()
    decoder.feed(stream[: head + 10])
    target = decoder.trailing_target
    assert target is not None
    target[: len(target)] = payload[10:]
    decoder.trailing_received(len(target))
    assert decoder.next_message() == Request(1, "m", [payload])


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(BIG, 3 * BIG), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 10 * BIG), max_size=8),
)
def test_frames_with_trailing_bytes_split_anywhere_decode_identically(
    sizes: list[int], cuts: list[int]
) -> None:
    payloads = [bytes([i]) * size for i, size in enumerate(sizes)]
    stream = _trailing_frame(*payloads) + _trailing_frame(payloads[0], msgid=2)
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    decoder = FrameDecoder()
    received = []
    for start, end in itertools.pairwise(bounds):
        decoder.feed(stream[start:end])
        received.extend(decoder)
    assert received == [Request(1, "m", payloads), Request(2, "m", [payloads[0]])]


# ------------------------------------------------------------- hostile frames


def test_trailing_bytes_announced_past_max_message_are_refused() -> None:
    with pytest.raises(ProtocolError, match="trailing bytes exceed max_message"):
        FrameDecoder(max_message=1 << 20).feed(_hostile_head(_frames._TRAILING.pack(2 << 20)))


def test_trailing_bytes_adding_up_past_max_message_are_refused() -> None:
    half = _frames._TRAILING.pack(600 << 10)
    ext = msgpack.ExtType(_frames.EXT_TRAILING, half)
    head = msgpack.packb([0, 1, "m", [ext, ext]], use_bin_type=True)
    with pytest.raises(ProtocolError, match="trailing bytes exceed max_message"):
        FrameDecoder(max_message=1 << 20).feed(head)


@pytest.mark.parametrize("size", [0, 1])
def test_tiny_trailing_bytes_are_refused(size: int) -> None:
    with pytest.raises(ProtocolError, match=f"trailing bytes of {size} bytes"):
        FrameDecoder().feed(_hostile_head(_frames._TRAILING.pack(size)))


def test_a_malformed_trailing_extension_is_refused() -> None:
    with pytest.raises(ProtocolError, match="trailing-bytes extension of 3 bytes"):
        FrameDecoder().feed(_hostile_head(b"abc"))


@pytest.mark.parametrize("nested", [False, True], ids=["key", "inside a tuple key"])
def test_trailing_bytes_as_a_map_key_are_refused(nested: bool) -> None:
    ext = msgpack.ExtType(_frames.EXT_TRAILING, _frames._TRAILING.pack(BIG))
    key = (1, (ext,)) if nested else ext
    head = msgpack.packb([0, 1, "m", [{key: 1}]], use_bin_type=True)
    refused = r"trailing bytes, an Fd or a PeerRef\) used as a map key"
    with pytest.raises(ProtocolError, match=refused):
        FrameDecoder(from_parent=nested).feed(head)  # only the parent may send tuple keys


def test_fds_arriving_inside_trailing_bytes_are_closed_and_refused() -> None:
    stream = _trailing_frame(os.urandom(BIG))
    decoder = FrameDecoder()
    decoder.feed(stream[:-100])
    fd = os.dup(0)
    with pytest.raises(ProtocolError, match="fds arrived inside a frame's trailing bytes"):
        decoder.feed(stream[-100:], [fd])
    with pytest.raises(OSError):
        os.fstat(fd)


def test_trailing_bytes_reported_when_none_are_due_are_refused() -> None:
    with pytest.raises(ProtocolError, match="none were due"):
        FrameDecoder().trailing_received(10)


def test_closing_mid_frame_drops_the_half_filled_bytes() -> None:
    decoder = FrameDecoder()
    decoder.feed(_trailing_frame(os.urandom(BIG))[:-1])
    decoder.close()
    assert decoder.trailing_target is None
    with pytest.raises(ProtocolError):
        decoder.feed(b"x")


# ------------------------------------------------------------------- channel


def _receive_one(channel: Channel) -> Any:
    decoder = channel.new_decoder()
    while (message := decoder.next_message()) is None:
        assert channel.receive_into(decoder)
    return message


def test_a_channel_carries_trailing_bytes_and_fds_in_one_frame() -> None:
    left, right = socketpair()
    payload = os.urandom(4 * ONE_MIB)
    read_end, write_end = os.pipe()
    try:
        data, fds = encode_request(1, "m", [_largebytes.TrailingBytes(payload), Fd(read_end)])
        sender = threading.Thread(target=left.send, args=(data, fds))
        sender.start()
        message = _receive_one(right)
        sender.join()
        received, fd = message.params
        assert received == payload
        os.write(write_end, b"!")
        with fd:
            assert os.read(fd.fileno(), 1) == b"!"
    finally:
        for fd_number in (read_end, write_end):
            os.close(fd_number)
        left.close()
        right.close()


def test_a_channel_receives_trailing_bytes_straight_into_their_destination() -> None:
    left, right = socketpair()
    payload = os.urandom(4 * ONE_MIB)
    data, fds = encode_response(9, None, payload)
    sender = threading.Thread(target=left.send, args=(data, fds))
    sender.start()
    decoder = right.new_decoder()
    direct = 0
    while (message := decoder.next_message()) is None:
        direct += decoder.trailing_target is not None
        assert right.receive_into(decoder)
    sender.join()
    assert message == Response(9, None, payload)
    assert direct > 1  # most of 4 MiB bypassed the channel's own buffer
    left.close()
    right.close()


def test_a_channel_reads_only_a_frame_head_sized_chunk_at_a_frame_boundary() -> None:
    left, right = socketpair()
    payload = os.urandom(ONE_MIB)
    data, fds = encode_response(3, None, payload)
    sender = threading.Thread(target=left.send, args=(data, fds))
    sender.start()
    decoder = right.new_decoder()
    assert right.receive_into(decoder)
    target = decoder.trailing_target
    assert target is not None and len(target) >= ONE_MIB - HEAD_RECEIVE_SIZE
    while decoder.next_message() is None:
        assert right.receive_into(decoder)
    sender.join()
    left.close()
    right.close()


# ------------------------------------------------------------- compartments


@pytest.fixture
def received_unfilled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the bytes the parent's decoder filled in place, as trailing bytes."""
    sizes: list[int] = []
    original = _largebytes.unfilled_bytes

    def spy(size: int) -> tuple[bytes, memoryview]:
        sizes.append(size)
        return original(size)

    monkeypatch.setattr(_largebytes, "unfilled_bytes", spy)
    return sizes


def test_mid_sized_bytes_cross_both_ways_intact_and_as_bytes(received_unfilled: list[int]) -> None:
    payload = os.urandom(ONE_MIB)
    result = echo(payload)
    assert type(result) is bytes and result == payload
    assert received_unfilled == [ONE_MIB]  # the result came back as trailing bytes
    assert echo.violations == []


def test_a_result_of_megabytes_returns_as_trailing_bytes(
    received_unfilled: list[int],
) -> None:
    size = 8 << 20
    assert make(size, 7) == bytes([7]) * size
    assert received_unfilled == [size]
    assert make.violations == []


def test_pipelined_calls_with_mixed_sizes_each_get_their_own_reply() -> None:
    payloads = [os.urandom(size) for size in (10, BIG, 3 * BIG, 5, ONE_MIB, BIG + 1) * 8]
    futures = [echo.submit(payload) for payload in payloads]
    assert [future.result(timeout=30) for future in futures] == payloads


def test_a_sealed_caller_sends_even_huge_bytes_as_trailing_bytes_not_memfds() -> None:
    huge = bytes(8 << 20)
    args, _, made = _largebytes.offload([huge], {}, memfds=False)
    assert made == [] and isinstance(args[0], _largebytes.TrailingBytes)
    assert args[0].data is huge
