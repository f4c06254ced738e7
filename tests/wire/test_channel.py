"""Channel: frames and fds across a real fork, EOF, no fd leaks, exact syscalls."""

from __future__ import annotations

import array
import ctypes
import hashlib
import itertools
import os
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from compartments._wire._channel import CHANNEL_SYSCALLS, Channel, socketpair
from compartments._wire._decoder import FrameDecoder
from compartments._wire._frames import (
    Fd,
    Request,
    Response,
    encode_request,
    encode_response,
)
from compartments.errors import ProtocolError

SIXTEEN_MIB = 16 * 2**20
PR_SET_NO_NEW_PRIVS = 38
# Syscalls a socket transport could plausibly use instead of the ones it promises.
NON_CHANNEL_SOCKET_SYSCALLS = [
    "read",
    "write",
    "readv",
    "writev",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "recvmmsg",
    "sendmmsg",
    "fcntl",
    "ioctl",
]


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------ child harness


def handle(message: Request) -> Any:
    """What the forked peer does with each request."""
    if message.method == "echo":
        return message.params[0]
    if message.method == "digest":
        return [len(message.params[0]), hashlib.sha256(message.params[0]).hexdigest()]
    if message.method == "big":
        return b"y" * message.params[0]
    if message.method == "read_fd":
        with message.params[0].open("rb") as stream:
            return stream.read()
    if message.method == "open_pipe":
        read_end, write_end = os.pipe()
        os.write(write_end, message.params[0])
        os.close(write_end)
        return Fd._adopt(read_end)  # closed once sent and dropped
    if message.method == "pread_fd":  # no read(2): the sealed test denies it
        with message.params[0] as fd:
            return os.pread(fd.fileno(), 100, 0)
    if message.method == "open_socket":  # no pipe write(2) either
        mine, theirs = socket.socketpair()
        mine.send(message.params[0])
        mine.close()
        return Fd._adopt(theirs.detach())
    if message.method == "exit":
        raise SystemExit
    raise ValueError(message.method)


def serve(channel: Channel) -> None:
    decoder = channel.new_decoder()
    while channel.receive_into(decoder):
        for message in decoder:
            assert isinstance(message, Request)
            try:
                result = handle(message)
            except SystemExit:
                return
            channel.send(*encode_response(message.msgid, None, result))


def seal_channel_only() -> None:
    """Deny, by killing, every socket-ish syscall outside CHANNEL_SYSCALLS (plus close)."""
    import pyseccomp

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    seccomp_filter = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in NON_CHANNEL_SOCKET_SYSCALLS:
        assert name not in CHANNEL_SYSCALLS
        try:
            seccomp_filter.add_rule(pyseccomp.KILL_PROCESS, name)
        except Exception:  # not on this architecture
            continue
    seccomp_filter.load()


class Peer:
    """A forked child serving requests on the other end of a channel."""

    def __init__(self, sealed: bool = False) -> None:
        self.channel, child = socketpair(names=("parent", "child"))
        self.pid = os.fork()
        if self.pid == 0:  # child: never return into pytest
            status = 1
            try:
                self.channel.close()
                if sealed:
                    seal_channel_only()
                serve(child)
                status = 0
            finally:
                os._exit(status)
        child.close()
        self.decoder = self.channel.new_decoder()
        self._ids = itertools.count()

    def call(self, method: str, *params: Any) -> Any:
        self.channel.send(*encode_request(next(self._ids), method, list(params)))
        while (message := self.decoder.next_message()) is None:
            assert self.channel.receive_into(self.decoder), "peer hung up"
        assert isinstance(message, Response) and message.error is None
        return message.result

    def finish(self) -> int:
        """Close our end and return the child's wait status."""
        self.decoder.close()
        self.channel.close()
        _, status = os.waitpid(self.pid, 0)
        return status


@pytest.fixture
def peer() -> Iterator[Peer]:
    child = Peer()
    yield child
    assert child.finish() == 0


# ------------------------------------------------------------------- tests


def test_a_request_round_trips_through_a_forked_child(peer: Peer) -> None:
    assert peer.call("echo", {"a": [1, 2.5, b"x", None]}) == {"a": [1, 2.5, b"x", None]}


def test_many_calls_in_a_row_stay_in_sync(peer: Peer) -> None:
    assert [peer.call("echo", i) for i in range(200)] == list(range(200))


def test_a_16_mib_frame_arrives_whole(peer: Peer) -> None:
    payload = os.urandom(SIXTEEN_MIB)
    assert peer.call("digest", payload) == [SIXTEEN_MIB, hashlib.sha256(payload).hexdigest()]


def test_a_16_mib_reply_arrives_whole(peer: Peer) -> None:
    assert peer.call("big", SIXTEEN_MIB) == b"y" * SIXTEEN_MIB


def test_a_file_opened_by_the_parent_is_read_by_the_child(peer: Peer, tmp_path: Any) -> None:
    path = tmp_path / "secret.txt"
    path.write_bytes(b"only the parent could open this")
    with path.open("rb") as stream:
        assert peer.call("read_fd", Fd(stream)) == b"only the parent could open this"


def test_an_fd_opened_by_the_child_is_read_by_the_parent(peer: Peer) -> None:
    with peer.call("open_pipe", b"from the child") as received:
        assert isinstance(received, Fd)
        assert os.read(received.fileno(), 100) == b"from the child"


def test_fd_passing_leaks_no_fds(peer: Peer, tmp_path: Any) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x")
    peer.call("echo", 0)  # warm up lazily created state
    before = open_fd_count()
    for _ in range(20):
        with path.open("rb") as stream:
            peer.call("read_fd", Fd(stream))
        peer.call("open_pipe", b"y")  # the received Fd is dropped unclosed
    assert open_fd_count() == before


def test_the_peer_hanging_up_is_end_of_stream() -> None:
    child = Peer()
    child.channel.send(*encode_request(1, "exit", []))
    assert child.channel.receive_into(child.decoder) is False
    assert child.finish() == 0


def test_the_channel_uses_only_its_declared_syscalls(tmp_path: Any) -> None:
    child = Peer(sealed=True)
    payload = os.urandom(SIXTEEN_MIB // 4)
    assert child.call("digest", payload)[1] == hashlib.sha256(payload).hexdigest()
    with open(tmp_path / "file", "w+b") as stream:
        stream.write(b"through the seal")
        stream.flush()
        assert child.call("pread_fd", Fd(stream)) == b"through the seal"
    with child.call("open_socket", b"back out").socket() as received:
        assert received.recv(100) == b"back out"
    status = child.finish()
    assert os.WIFEXITED(status), f"sealed child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0


def test_too_many_fds_in_one_message_are_closed_and_rejected() -> None:
    left, right = socketpair()
    before = open_fd_count()
    raw = socket.socket(fileno=os.dup(left.fileno()))
    fds = array.array("i", [0] * 100)
    raw.sendmsg([b"\x90"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    raw.close()
    with pytest.raises(ProtocolError, match="fds"):
        right.receive_into(right.new_decoder())
    assert open_fd_count() == before
    left.close()
    right.close()


def test_concurrent_senders_never_interleave_frames() -> None:
    left, right = socketpair()
    payloads = [bytes([n]) * 300_000 for n in range(8)]

    def send_all(payload: bytes) -> None:
        for msgid in range(5):
            left.send(*encode_request(msgid, "m", [payload]))

    received: list[bytes] = []

    def receive() -> None:
        decoder = right.new_decoder()
        while len(received) < 40 and right.receive_into(decoder):
            received.extend(
                message.params[0] for message in decoder if isinstance(message, Request)
            )

    reader = threading.Thread(target=receive)
    reader.start()
    senders = [threading.Thread(target=send_all, args=(p,)) for p in payloads]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    reader.join(timeout=30)
    assert sorted(received) == sorted(payloads * 5)
    left.close()
    right.close()


def test_close_is_idempotent() -> None:
    left, right = socketpair()
    left.close()
    left.close()
    assert left.closed
    assert right.receive_into(right.new_decoder()) is False
    right.close()


def test_shutdown_wakes_a_blocked_reader() -> None:
    left, right = socketpair()
    result: list[bool] = []
    reader = threading.Thread(target=lambda: result.append(right.receive_into(FrameDecoder())))
    reader.start()
    right.shutdown()
    reader.join(timeout=5)
    assert result == [False]
    left.close()
    right.close()


def test_socketpair_ends_are_not_inherited_across_exec() -> None:
    left, right = socketpair()
    assert not os.get_inheritable(left.fileno())
    assert not os.get_inheritable(right.fileno())
    left.close()
    right.close()


def test_a_channel_rejects_a_datagram_socket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="SOCK_STREAM"):
        Channel(left)
    left.close()
    right.close()


def test_urgent_data_arrives_inline_on_both_ends() -> None:
    left, right = socketpair()
    with left, right:
        for sender, receiver in ((left, right), (right, left)):
            sock = socket.socket(fileno=os.dup(sender.fileno()))
            with sock:
                sock.send(b"!", socket.MSG_OOB)
            decoder = receiver.new_decoder()
            with pytest.raises(ProtocolError):
                receiver.receive_into(decoder, nonblocking=True)


def test_a_nonblocking_receive_with_nothing_there_feeds_nothing() -> None:
    left, right = socketpair()
    with left, right:
        decoder = right.new_decoder()
        assert right.receive_into(decoder, nonblocking=True) is True
        assert decoder.next_message() is None and decoder.between_frames


def test_send_nowait_keeps_what_does_not_fit_and_the_fds_that_did_not_go() -> None:
    left, right = socketpair()
    with left, right:
        big = memoryview(bytes(8 << 20))
        rest, fds = left.send_nowait([big], [0])
        assert 0 < sum(len(part) for part in rest) < len(big) and list(fds) == []
        rest, fds = left.send_nowait(rest, [0])  # the buffer is full: nothing goes
        assert sum(len(part) for part in rest) < len(big) and list(fds) == [0]


def _drain(channel: Channel, into: list[bytes], size: int) -> threading.Thread:
    """A reader taking ``size`` bytes off ``channel``'s socket, in a thread."""

    def read() -> None:
        got = 0
        while got < size:
            chunk = channel._sock.recv(1 << 20)
            if not chunk:
                return
            into.append(chunk)
            got += len(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    return reader


def test_send_or_defer_sends_a_frame_that_fits_at_once() -> None:
    left, right = socketpair()
    with left, right:
        data, _ = encode_request(7, "m", [b"x" * 100])
        assert left.send_or_defer(data) is None
        decoder = right.new_decoder()
        right.receive_into(decoder)
        message = decoder.next_message()
        assert isinstance(message, Request) and message.params == [b"x" * 100]


def test_send_or_defer_hands_on_the_rest_of_a_frame_that_does_not_fit() -> None:
    left, right = socketpair()
    with left, right:
        frame = os.urandom(8 << 20)
        finish = left.send_or_defer(frame)
        assert finish is not None  # the peer's buffer took only part of it
        received: list[bytes] = []
        reader = _drain(right, received, len(frame))
        finish(lambda deadline: _until_writable(left), None)
        reader.join(10)
        assert b"".join(received) == frame


def test_no_other_frame_starts_inside_a_deferred_one() -> None:
    left, right = socketpair()
    with left, right:
        frame = os.urandom(8 << 20)
        finish = left.send_or_defer(frame)
        assert finish is not None
        later = left.send_or_defer(b"after")  # the lock is held: handed on whole
        assert later is not None
        received: list[bytes] = []
        reader = _drain(right, received, len(frame) + 5)
        finish(lambda deadline: _until_writable(left), None)
        later(lambda deadline: _until_writable(left), None)
        reader.join(10)
        assert b"".join(received) == frame + b"after"


def _until_writable(channel: Channel) -> None:
    select.select([], [channel.fileno()], [], 5)
