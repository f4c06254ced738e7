"""Wire format: round trips, argument errors named at the call site, hostile input."""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import itertools
import linecache
import os
import struct
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compartments._wire._decoder import FrameDecoder
from compartments._wire._frames import (
    MAX_MSGID,
    Fd,
    Message,
    Notification,
    PeerRef,
    RemoteTraceback,
    Request,
    Response,
    decode_error,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
)
from compartments._wire._traceback import format_exception, warm_linecache
from compartments.errors import ProtocolError, RemoteError

settings.register_profile(
    "wire", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Structured examples cost ~4 ms each to generate; fewer keep the suite fast.
settings.register_profile(
    "wire-structured", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

NATIVE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "",
    "héllo ☃",
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    {},
    {"a": 1, 2: "b", b"c": [None]},
]


def decode_one(data: bytes, fds: list[int] | None = None, *, from_parent: bool = False) -> Any:
    decoder = FrameDecoder(from_parent=from_parent)
    decoder.feed(data, fds or [])
    message = decoder.next_message()
    assert message is not None
    assert decoder.next_message() is None
    return message


def frame(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ round trips


def test_request_round_trips() -> None:
    data, fds = encode_request(7, "parse", [1, "x"])
    assert fds == []
    assert decode_one(data) == Request(7, "parse", [1, "x"])


def test_response_round_trips() -> None:
    data, _ = encode_response(MAX_MSGID, None, {"ok": [1, 2]})
    assert decode_one(data) == Response(MAX_MSGID, None, {"ok": [1, 2]})


def test_error_response_round_trips() -> None:
    data, _ = encode_response(3, {"type": "ValueError"}, None)
    assert decode_one(data) == Response(3, {"type": "ValueError"}, None)


def test_notification_round_trips() -> None:
    data, _ = encode_notification("log", ["line"])
    assert decode_one(data) == Notification("log", ["line"])


@pytest.mark.parametrize("value", NATIVE_VALUES, ids=repr)
def test_every_native_type_round_trips(value: Any) -> None:
    data, _ = encode_request(1, "m", [value])
    assert decode_one(data).params == [value]


def test_tuples_arrive_as_lists() -> None:
    data, _ = encode_request(1, "m", ((1, (2, 3)),))
    assert decode_one(data).params == [[1, [2, 3]]]


def test_fd_round_trips_and_is_owned_by_the_receiver() -> None:
    read_end, write_end = os.pipe()
    try:
        data, fds = encode_request(1, "m", [{"file": Fd(read_end)}])
        assert fds == [read_end]
        message = decode_one(data, [os.dup(read_end)])
        received = message.params[0]["file"]
        assert isinstance(received, Fd) and received.owned
        os.write(write_end, b"hi")
        with received.open("rb", buffering=0) as stream:
            assert stream.read(2) == b"hi"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_peer_ref_round_trips_with_its_name() -> None:
    read_end, write_end = os.pipe()
    try:
        data, fds = encode_request(1, "m", [PeerRef(write_end, "db")])
        assert fds == [write_end]
        with decode_one(data, [os.dup(write_end)], from_parent=True).params[0].fd as received:
            assert isinstance(received, Fd)
        assert decode_one(data, [os.dup(write_end)], from_parent=True).params[0].name == "db"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fds_arriving_with_two_frames_go_to_the_frame_that_references_them() -> None:
    plain, _ = encode_request(1, "m", [])
    carrying, _ = encode_request(2, "m", [Fd(0)])
    decoder = FrameDecoder()
    decoder.feed(plain + carrying, [os.dup(0)])
    first, second = list(decoder)
    assert first == Request(1, "m", [])
    assert isinstance(second, Request)
    with second.params[0] as received:
        assert received.owned


def test_fd_rejects_a_negative_descriptor_by_value() -> None:
    with pytest.raises(ValueError, match="-3"):
        Fd(-3)


def test_dropping_a_received_fd_closes_it() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    before = open_fd_count()
    data, _ = encode_request(1, "m", [Fd(read_end)])
    message = decode_one(data, [os.dup(read_end)])
    assert open_fd_count() == before + 1
    del message
    assert open_fd_count() == before
    os.close(read_end)


# ------------------------------------------------- errors named at the call site


def test_a_set_argument_is_named() -> None:
    with pytest.raises(TypeError, match=r"argument `data` \(position 0\) of call `parse` is a set"):
        encode_request(1, "parse", [{1, 2}], names=["data"])


def test_an_object_nested_in_a_dict_and_list_is_named_by_path() -> None:
    with pytest.raises(TypeError, match=r"at `data\['key'\]\[3\]`, an object"):
        encode_request(1, "parse", [{"key": [0, 0, 0, object()]}], names=["data"])


def test_a_too_large_int_is_named() -> None:
    with pytest.raises(OverflowError, match=r"argument `n` \(position 1\).*64-bit"):
        encode_request(1, "f", [0, 2**64], names=["x", "n"])


def test_an_unnamed_argument_is_named_by_position() -> None:
    with pytest.raises(TypeError, match=r"argument 1 of call `f` holds, at `args\[1\]\[0\]`"):
        encode_request(1, "f", [0, [{1}]])


def test_the_error_lists_the_types_that_can_cross() -> None:
    with pytest.raises(TypeError, match="msgpack-native types only: None, bool, int"):
        encode_notification("f", [object()])


def test_an_unencodable_result_is_named() -> None:
    with pytest.raises(TypeError, match=r"result of call `get` holds, at `result\[0\]`, a set"):
        encode_response(1, None, [set()], method="get")


# ------------------------------------------------------------ hostile decoding


def test_an_incomplete_frame_is_not_an_error() -> None:
    data, _ = encode_request(1, "m", ["x" * 100])
    decoder = FrameDecoder()
    decoder.feed(data[:-1])
    assert decoder.next_message() is None
    decoder.feed(data[-1:])
    assert decoder.next_message() == Request(1, "m", ["x" * 100])


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", b"\x01", b"\xa3abc", frame([]), frame([9, 1, "m", []]), frame({"a": 1})],
    ids=["reserved-byte", "bare-int", "bare-str", "empty-array", "unknown-kind", "map"],
)
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(garbage)


@pytest.mark.parametrize(
    "message",
    [
        [0, -1, "m", []],
        [0, MAX_MSGID + 1, "m", []],
        [0, 2**64 - 1, "m", []],
        [0, "1", "m", []],
        [0, 1.0, "m", []],
        [0, 1, b"m", []],
        [0, 1, "", []],
        [0, 1, "m" * 257, []],
        [0, 1, "m", {}],
        [0, 1, "m"],
        [1, 1, "error", None],
        [1, 1, None],
        [2, "m", "params"],
        [2, 7, []],
        [True, 1, "m", []],
    ],
    ids=repr,
)
def test_a_wrong_type_in_any_field_is_a_protocol_error(message: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(message))


@pytest.mark.parametrize(
    "message",
    [[0, -1, "m", []], [0, 1, "", []], [1, 1, "error", None], [2, 7, []], [0, 1, "m", "params"]],
    ids=repr,
)
def test_a_whole_frame_is_refused_in_the_same_words_as_a_streamed_one(message: list[Any]) -> None:
    data = frame(message)
    with pytest.raises(ProtocolError) as whole:
        FrameDecoder().feed(data)  # one receive holding exactly one frame: the short path
    streamed = FrameDecoder()
    with pytest.raises(ProtocolError) as split:
        for index in range(len(data)):
            streamed.feed(data[index : index + 1])
    assert str(whole.value) == str(split.value)


def test_a_whole_frame_over_max_message_is_refused() -> None:
    data, _ = encode_request(1, "m", ["x" * 2000])
    with pytest.raises(ProtocolError, match="exceeds max_"):
        FrameDecoder(max_message=1000).feed(data)


def test_two_whole_frames_in_one_receive_both_arrive() -> None:
    first, _ = encode_request(1, "m", [1])
    second, _ = encode_request(2, "m", [2])
    decoder = FrameDecoder()
    decoder.feed(first + second)
    assert list(decoder) == [Request(1, "m", [1]), Request(2, "m", [2])]


def test_a_4_gib_length_header_fails_without_allocating() -> None:
    """msgpack's C build waits for the body (allocating nothing) and fails at
    max_message; its pure-Python build refuses the header at once."""
    decoder = FrameDecoder(max_message=4096)
    header = frame([0, 1, "m", []])[:-1] + b"\x91\xc6" + struct.pack("!I", 2**32 - 1)
    with pytest.raises(ProtocolError, match=r"max_message|max_bin_len"):
        decoder.feed(header)  # nothing allocated for the claimed length yet
        decoder.feed(b"\x00" * 4096)


def test_an_array_header_claiming_billions_of_items_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="max_array_len"):
        FrameDecoder().feed(b"\xdd\xff\xff\xff\xff")


def test_a_single_value_larger_than_max_message_is_rejected() -> None:
    data, _ = encode_request(1, "m", [b"x" * 10_000])
    with pytest.raises(ProtocolError, match="exceeds max_"):
        FrameDecoder(max_message=1000).feed(data)


def test_a_frame_of_small_values_adding_up_past_max_message_is_rejected() -> None:
    data, _ = encode_request(1, "m", [b"x" * 100] * 30)
    with pytest.raises(ProtocolError, match="exceeds max_"):
        FrameDecoder(max_message=1000).feed(data)


def test_deep_nesting_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="nesting"):
        FrameDecoder().feed(b"\x94\x00\x01\xa1m" + b"\x91" * 5000 + b"\xc0")


def test_an_unknown_ext_code_is_a_protocol_error() -> None:
    data = frame([0, 1, "m", [msgpack.ExtType(42, b"x")]])
    with pytest.raises(ProtocolError, match="unknown extension type 42"):
        FrameDecoder().feed(data)


def test_an_fd_ext_without_a_received_fd_is_a_protocol_error() -> None:
    data, _ = encode_request(1, "m", [Fd(0)])
    with pytest.raises(ProtocolError, match="none was received"):
        FrameDecoder().feed(data)


def test_more_fds_than_referenced_is_a_protocol_error_and_closes_them() -> None:
    before = open_fd_count()
    data, _ = encode_request(1, "m", [])
    with pytest.raises(ProtocolError, match="does not reference"):
        FrameDecoder().feed(data, [os.dup(0), os.dup(0)])
    assert open_fd_count() == before


def test_too_many_pending_fds_are_closed_and_rejected() -> None:
    before = open_fd_count()
    with pytest.raises(ProtocolError, match="pending"):
        FrameDecoder().feed(b"\x94", [os.dup(0) for _ in range(65)])
    assert open_fd_count() == before


def test_fds_of_a_broken_frame_are_closed() -> None:
    before = open_fd_count()
    data = frame([0, 1, "m", [msgpack.ExtType(1, b"\0\0\0\0")], "extra field"])
    with pytest.raises(ProtocolError, match="5 fields"):
        FrameDecoder().feed(data, [os.dup(0)])
    assert open_fd_count() == before


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        FrameDecoder().feed(b"\x94\x00\x01\xa2\xff\xfe\x90")


def test_a_map_as_a_map_key_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="map key of type dict"):
        FrameDecoder().feed(b"\x94\x00\x01\xa1m\x91\x81\x80\x01")


def test_a_map_inside_an_array_key_from_the_parent_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="map key of type dict"):
        FrameDecoder(from_parent=True).feed(b"\x94\x00\x01\xa1m\x91\x81\x92\x01\x80\x01")


def test_tuple_keys_from_the_parent_arrive_as_tuples() -> None:
    value = {(1, "a", (2, b"x")): 5, (): 6, "plain": 7}
    data, _ = encode_request(1, "m", [value])
    decoder = FrameDecoder(from_parent=True)
    decoder.feed(data)
    assert decoder.next_message() == Request(1, "m", [value])


def test_tuple_keys_from_a_compartment_are_a_protocol_error() -> None:
    data, _ = encode_request(1, "m", [{(1, 2): 3}])
    with pytest.raises(ProtocolError, match="an array as a map key is not allowed"):
        FrameDecoder().feed(data)


def _int_keyed_reply(count: int) -> bytes:
    return msgpack.packb([1, 1, None, dict.fromkeys(range(count), 0)])


@pytest.mark.parametrize("chunk", [None, 100], ids=["whole", "streamed"])
def test_a_compartment_may_send_one_map_of_4096_int_keys_per_frame(chunk: int | None) -> None:
    decoder = FrameDecoder()
    frame = _int_keyed_reply(4096)
    for _ in range(2):  # the budget is per frame
        for start in range(0, len(frame), chunk or len(frame)):
            decoder.feed(frame[start : start + (chunk or len(frame))])
        message = decoder.next_message()
        assert message is not None and len(message.result) == 4096


def test_a_frame_over_the_int_key_budget_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="int/float map keys over the frame's budget"):
        FrameDecoder().feed(_int_keyed_reply(4097))


def test_the_int_key_budget_counts_every_map_of_the_frame() -> None:
    maps = [dict.fromkeys(range(2048), 0)] * 4  # 4 * 2048**2 is the budget exactly
    FrameDecoder().feed(msgpack.packb([1, 1, None, maps]))
    with pytest.raises(ProtocolError, match="budget"):
        FrameDecoder().feed(msgpack.packb([1, 1, None, [*maps, {0.5: 1}]]))


def test_the_parent_may_send_any_number_of_int_keys() -> None:
    decoder = FrameDecoder(from_parent=True)
    decoder.feed(msgpack.packb([0, 1, "m", [dict.fromkeys(range(100_000), 0)]]))
    assert decoder.next_message() is not None


def test_a_broken_decoder_stays_broken() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xc1")
    data, _ = encode_request(1, "m", [])
    with pytest.raises(ProtocolError):
        decoder.feed(data)


@settings(settings.get_profile("wire"))
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_message=1024)
    bounds = [0, *sorted(cuts), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            decoder.feed(data[start:end])
            list(decoder)
    except ProtocolError:
        pass


natives = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(settings.get_profile("wire-structured"))
@given(
    params=st.lists(st.lists(natives, max_size=3), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_valid_frames_split_anywhere_decode_identically(
    params: list[list[Any]], cuts: list[int]
) -> None:
    stream = b"".join(encode_request(i, "m", p)[0] for i, p in enumerate(params))
    decoder = FrameDecoder()
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    received: list[Message] = []
    for start, end in itertools.pairwise(bounds):
        decoder.feed(stream[start:end])
        received.extend(decoder)
    assert received == [Request(i, "m", p) for i, p in enumerate(params)]


# ---------------------------------------------------------------- error payloads


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_builtin_exception_comes_back_as_itself_with_the_remote_traceback() -> None:
    error = decode_error(encode_error(raised(ValueError("bad input"))), "parser")
    assert type(error) is ValueError and str(error) == "bad input"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "ValueError: bad input" in str(error.__cause__)
    assert "compartment `parser`" in str(error.__cause__)


def test_a_file_not_found_error_keeps_errno_and_filename() -> None:
    sent = FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/nope")
    error = decode_error(encode_error(sent), "fs")
    assert type(error) is FileNotFoundError
    assert (error.errno, error.filename) == (errno.ENOENT, "/etc/nope")


@pytest.mark.parametrize(
    "sent",
    [
        UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
        UnicodeEncodeError("ascii", "caf\xe9", 3, 4, "ordinal not in range(128)"),
        UnicodeTranslateError("abc", 0, 2, "no mapping"),
        PermissionError(errno.EPERM, "Operation not permitted", "/etc/shadow"),
        BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
        SyntaxError("invalid syntax", ("f.py", 1, 2, "x y", 1, 3)),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_checked_builtin_comes_back_as_itself(sent: BaseException) -> None:
    error = decode_error(encode_error(sent), "c")
    assert type(error) is type(sent)
    if not isinstance(sent, SyntaxError):  # rebuilt from its message, without location
        assert str(error) == str(sent) and error.args == sent.args


def test_a_unicode_error_with_a_range_outside_its_object_becomes_remote_error() -> None:
    args = ["utf-8", b"\xff", -(2**60), -(2**60) + 1, "bad"]
    payload = {"type": "UnicodeDecodeError", "message": "x", "traceback": "", "builtin": True,
               "args": args}  # fmt: skip
    error = decode_error(payload, "c")
    assert isinstance(error, RemoteError) and error.remote_type == "UnicodeDecodeError"


def test_a_key_error_keeps_its_key() -> None:
    error = decode_error(encode_error(KeyError("user")), "db")
    assert type(error) is KeyError and error.args == ("user",)


class CustomError(Exception):
    pass


def test_a_custom_exception_becomes_remote_error() -> None:
    error = decode_error(encode_error(raised(CustomError("boom"))), "db")
    assert isinstance(error, RemoteError)
    assert error.remote_type == f"{__name__}.CustomError"
    assert error.message == "boom"
    assert "CustomError: boom" in error.remote_traceback
    assert isinstance(error.__cause__, RemoteTraceback)


@pytest.mark.parametrize(
    "name",
    ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "len", "StopIteration", "ExceptionGroup",
     "BaseExceptionGroup", "StopAsyncIteration", "object", "type"],
)  # fmt: skip
def test_control_flow_and_non_exception_builtins_become_remote_error(name: str) -> None:
    payload = {"type": name, "message": "x", "traceback": "", "builtin": True}
    assert isinstance(decode_error(payload, "c"), RemoteError)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"type": "ValueError", "message": "x"},
        {"type": 1, "message": "x", "traceback": ""},
        {"type": "ValueError", "message": b"x", "traceback": ""},
        {"type": "OSError", "message": "x", "traceback": "", "errno": "2"},
        {"type": "ValueError", "message": "x", "traceback": "", "args": [[1]]},
        {"type": "", "message": "x", "traceback": ""},
    ],
    ids=repr,
)
def test_a_malformed_error_payload_is_a_protocol_error(payload: Any) -> None:
    with pytest.raises(ProtocolError, match="malformed error"):
        decode_error(payload, "c")


def test_an_error_payload_survives_the_wire() -> None:
    data, _ = encode_response(1, encode_error(raised(OSError(errno.EIO, "io"))), None)
    error = decode_error(decode_one(data).error, "c")
    assert type(error) is OSError and error.errno == errno.EIO


# ------------------------------------------------------------------- tracebacks


def test_traceback_text_includes_chained_exceptions() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as outer:
        text = format_exception(outer)
    assert text.index("KeyError: 'inner'") < text.index("direct cause") < text.index("outer")


def test_traceback_collapses_deep_recursion() -> None:
    def recurse(n: int) -> None:
        if n:
            recurse(n - 1)
        raise RuntimeError("bottom")

    text = format_exception(raised_by(lambda: recurse(50)))
    assert "[Previous line repeated 47 more times]" in text


def raised_by(action: Any) -> BaseException:
    try:
        action()
    except BaseException as caught:
        return caught
    raise AssertionError("expected an exception")


PR_SET_NO_NEW_PRIVS = 38
FILESYSTEM_SYSCALLS = ["open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx"]


def run_sealed(action: Any, deny_action: str) -> tuple[int, bytes]:
    """Run ``action`` in a forked child with filesystem syscalls denied; return its output."""
    import pyseccomp

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
            seccomp_filter = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
            deny = (
                pyseccomp.ERRNO(errno.EPERM) if deny_action == "eperm" else pyseccomp.KILL_PROCESS
            )
            for name in FILESYSTEM_SYSCALLS:
                try:
                    seccomp_filter.add_rule(deny, name)
                except Exception:  # not on this architecture
                    continue
            seccomp_filter.load()
            output = action()
            os.write(write_end, output.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks)


def import_from(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEALED_SOURCE = textwrap.dedent(
    """
    def fail():
        raise LookupError("sealed failure")  # marker: warmed source

    def call_other(other):
        return other()
    """
)
COLD_SOURCE = textwrap.dedent(
    """
    def fail_cold(inner):
        inner()  # marker: never cached
    """
)


def sealed_traceback(tmp_path: Path, deny_action: str) -> tuple[int, str]:
    warm = import_from(tmp_path / "warm_mod.py", "warm_mod")
    cold = import_from(tmp_path / "cold_mod.py", "cold_mod")
    linecache.cache.pop(cold.__file__, None)
    assert warm_linecache(warm) == 1

    def action() -> str:
        if deny_action == "eperm":  # prove the seal is on (under "kill" this would kill)
            try:
                os.open("/etc/hostname", os.O_RDONLY)
            except PermissionError:
                pass
            else:
                return "filesystem still reachable"
        error = raised_by(lambda: warm.call_other(lambda: cold.fail_cold(warm.fail)))
        return format_exception(error)

    status, output = run_sealed(action, deny_action)
    return status, output.decode()


@pytest.fixture
def sealed_modules(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "warm_mod.py").write_text(SEALED_SOURCE)
    (tmp_path / "cold_mod.py").write_text(COLD_SOURCE)
    yield tmp_path
    for name in ("warm_mod", "cold_mod"):
        sys.modules.pop(name, None)


def test_traceback_formats_in_a_sealed_child_with_warmed_sources(sealed_modules: Path) -> None:
    status, text = sealed_traceback(sealed_modules, "eperm")
    assert status == 0, text
    assert "marker: warmed source" in text
    assert "marker: never cached" not in text
    assert 'cold_mod.py", line 3, in fail_cold' in text
    assert text.endswith("LookupError: sealed failure\n")


def test_traceback_formatting_makes_no_filesystem_syscall(sealed_modules: Path) -> None:
    import pyseccomp

    if not hasattr(pyseccomp, "KILL_PROCESS"):
        pytest.skip("pyseccomp lacks KILL_PROCESS")
    status, text = sealed_traceback(sealed_modules, "kill")
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
    assert "LookupError: sealed failure" in text


def test_the_seal_used_above_kills_the_stdlib_formatter() -> None:
    """Control: proves the filter bites, so the passing test above means something."""
    import traceback

    def action() -> str:
        return "".join(traceback.format_exception(raised_by(lambda: 1 / 0)))

    status, _ = run_sealed(action, "kill")
    assert os.WIFSIGNALED(status)


def test_a_map_handed_over_as_a_generator_keeps_its_items() -> None:
    """msgpack's pure-Python build before 1.2.4 gives object_pairs_hook a generator."""
    for from_parent in (True, False):
        decoder = FrameDecoder(from_parent=from_parent)
        pairs = ((key, value) for key, value in [("a", 1), (2, "b")])
        assert decoder._checked_map(pairs) == {"a": 1, 2: "b"}  # type: ignore[arg-type]
