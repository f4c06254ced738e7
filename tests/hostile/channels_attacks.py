"""Compartments that attack the channels: the parent's line, and direct lines to siblings.

Every attack runs inside a sealed child (``SystemIO.nothing()``) with the syscalls the
runtime allows on its channel block (sendto, sendmsg, recvmsg, poll, close): it writes
raw frames, urgent bytes and fds on a line instead of speaking the protocol. What an
attack needs beyond the seal (a memfd, a lingering TCP socket, a device) it opens in its
constructor, which runs before the seal, as a compromised dependency's setup could.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack

from compartments import Fd, compartment
from compartments._wire._frames import _FD_INDEX, _MEMFD, EXT_MEMFD, EXT_PEER, encode_request
from compartments.rulesets import SystemIO, Threads

SLEEP = Threads.nothing().allow_sleep().yes_really()
PARENT_LINE = 64  # the first slot of the channel block
BLOCK = range(65, 128)  # where direct lines live
#: A sibling's default timeout: its peer calls, and how long a peer may leave its
#: answers unread.
SIBLING_TIMEOUT = 2.0


@contextmanager
def raw_line(fd: int) -> Iterator[socket.socket]:
    """A socket object on a channel fd we do not own: detached again afterwards."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


def open_lines() -> list[int]:
    """The direct lines this compartment holds (fds in the block past the parent's)."""
    lines = []
    for fd in BLOCK:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLNVAL for _, events in poller.poll(0)):
            lines.append(fd)
    return lines


def send_with_fds(fd: int, frame: bytes, fds: list[int]) -> None:
    rights = struct.pack(f"{len(fds)}i", *fds)
    with raw_line(fd) as line:
        line.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


def memfd_frame(announced: int, as_request: bool) -> bytes:
    """A frame carrying one memfd payload that claims ``announced`` bytes."""
    ext = msgpack.ExtType(EXT_MEMFD, _MEMFD.pack(0, announced))
    message: list[Any] = [0, 1, "echo", [[ext], {}]] if as_request else [2, "note", [ext]]
    return bytes(msgpack.packb(message, use_bin_type=True))


def peer_refs_frame(count: int) -> bytes:
    refs = [msgpack.ExtType(EXT_PEER, _FD_INDEX.pack(i) + b"forged") for i in range(count)]
    return bytes(msgpack.packb([0, 1, "take_many", [refs, {}]], use_bin_type=True))


def hang() -> None:
    threading.Event().wait()


def five_byte_memfd() -> int:
    fd = os.memfd_create("five-bytes")
    os.write(fd, b"five!")
    return fd


def lingering_socket() -> tuple[socket.socket, socket.socket]:
    """A TCP socket whose peer never reads, its buffers full and SO_LINGER at 60 s:
    whoever closes the last reference to it waits a minute."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    client.setblocking(False)
    try:
        while True:
            client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    client.setblocking(True)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 60))
    return listener, client


# -- attacks on the parent's line ---------------------------------------------------------


@compartment(rules=[SystemIO.nothing(), SLEEP], timeout=3.0)
def urgent_byte_then_hang() -> None:
    """One MSG_OOB byte to the parent: poll says readable, a plain recvmsg blocks."""
    with raw_line(PARENT_LINE) as line:
        line.send(b"!", socket.MSG_OOB)
    hang()


@compartment(rules=[SystemIO.nothing(), SLEEP])
class Lingerer:
    """Hands the parent sockets that linger for a minute when it closes them."""

    def __init__(self) -> None:
        self.listener, self.client = lingering_socket()

    def give(self) -> Fd:
        return Fd._adopt(self.client.detach())  # our copy is closed once sent

    def sync(self) -> None:
        """Answered only once the last answer's result, and so our copy, is gone."""

    def smuggle(self) -> None:
        """The socket rides with a frame that does not reference it: a ProtocolError,
        and the decoder closes what it was sent. Our copy is closed before the frame is
        complete, so the parent's is the last."""
        frame = bytes(msgpack.packb([2, "note", []], use_bin_type=True))
        send_with_fds(PARENT_LINE, frame[:1], [self.client.fileno()])
        self.client.close()
        with raw_line(PARENT_LINE) as line:
            line.send(frame[1:])
        hang()


@compartment(rules=[SystemIO.nothing(), SLEEP], timeout=3.0)
class PayloadForger:
    """Sends the parent an fd it claims is a large-payload memfd."""

    def __init__(self, path: str | None = None) -> None:
        self.fd = os.open(path, os.O_RDONLY) if path else five_byte_memfd()

    def forge(self, announced: int) -> None:
        send_with_fds(PARENT_LINE, memfd_frame(announced, as_request=False), [self.fd])
        hang()

    def forge_reply(self, msgid: int) -> None:
        """Answer this very call (the parent's msgid ``msgid``) with a genuine memfd."""
        ext = msgpack.ExtType(EXT_MEMFD, _MEMFD.pack(0, 5))
        frame = bytes(msgpack.packb([1, msgid, None, ext], use_bin_type=True))
        send_with_fds(PARENT_LINE, frame, [self.fd])
        hang()


# -- a sibling, honest, and the peers that attack it ---------------------------------------


@compartment(rules=[SystemIO.nothing(), SLEEP], timeout=SIBLING_TIMEOUT)
class Sibling:
    """An honest compartment others get direct lines to, and that calls its own peers."""

    def __init__(self) -> None:
        self.peer: Any = None

    def ping(self) -> int:
        return os.getpid()

    def echo(self, value: Any) -> Any:
        return value

    def blob(self, size: int) -> bytes:
        return b"v" * size

    def nap(self, seconds: float) -> None:
        time.sleep(seconds)

    def take(self, peer: Any) -> None:
        self.peer = peer

    def take_many(self, *peers: Any) -> int:
        return len(peers)

    def ask(self, method: str, *args: Any) -> str:
        """Call the peer; say how it went (a peer must not crash or freeze us)."""
        try:
            result = getattr(self.peer, method)(*args)
        except Exception as exc:
            return type(exc).__name__
        return "ok" if result is None else repr(result)[:40]


@compartment(rules=[SystemIO.nothing(), SLEEP])
class PeerAttacker:
    """Holds a direct line to a sibling and abuses it, or answers its calls badly."""

    def __init__(self) -> None:
        self.peer: Any = None
        self.memfd = five_byte_memfd()

    def take(self, peer: Any) -> None:
        self.peer = peer

    def _line(self) -> int:
        return int(self.peer._connection.channel.fileno())

    def flood_without_reading(self, reply_size: int) -> int:
        """Pipeline requests for ``reply_size``-byte answers until the line is full;
        never read one."""
        return self._flood("blob", reply_size)

    def flood_with_naps(self, seconds: float, count: int) -> bool:
        """Pipeline ``count`` slow requests in one write, so they arrive together."""
        frames = b"".join(
            bytes(encode_request(msgid, "nap", [[seconds], {}])[0]) for msgid in range(count)
        )
        with raw_line(self._line()) as line:
            return line.send(frames, socket.MSG_DONTWAIT) == len(frames)

    def _flood(self, method: str, argument: object) -> int:
        sent = 0
        with raw_line(self._line()) as line:
            for msgid in range(1, 10_000):
                data, _ = encode_request(msgid, method, [[argument], {}])
                try:
                    line.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                sent += 1
        return sent

    def line_closed_within(self, seconds: float) -> bool:
        """Has the sibling hung up on us (POLLHUP) within ``seconds``?"""
        poller = select.poll()
        poller.register(self._line(), select.POLLRDHUP | select.POLLHUP)
        return any(ev & select.POLLHUP for _, ev in poller.poll(seconds * 1000))

    def urgent_byte(self) -> None:
        with raw_line(self._line()) as line:
            line.send(b"!", socket.MSG_OOB)

    def memfd_request(self, announced: int) -> None:
        send_with_fds(self._line(), memfd_frame(announced, as_request=True), [self.memfd])

    def peer_refs(self, count: int) -> None:
        line = self._line()
        send_with_fds(line, peer_refs_frame(count), [line] * count)

    # answering a sibling that calls us

    def hang(self) -> None:
        hang()

    def echo(self, value: Any) -> Any:
        return value

    def half_answer(self) -> None:
        """Start an answer on every direct line, never finish it."""
        for fd in open_lines():
            with raw_line(fd) as line:
                line.send(b"\x94\x01", socket.MSG_DONTWAIT)
        hang()

    def poison(self) -> None:
        """Answer with a five-byte memfd that claims a MiB: whoever maps it, faults."""
        for fd in open_lines():
            send_with_fds(fd, memfd_frame(1 << 20, as_request=False), [self.memfd])
        hang()


# -- a call that never returns ------------------------------------------------------------


@compartment(rules=[SystemIO.nothing()])
def echo_size(data: bytes, reply_size: int = 0) -> Any:
    """Answers with ``reply_size`` bytes, or with the data itself."""
    return b"r" * reply_size if reply_size else data


@compartment(rules=[SystemIO.nothing()], timeout=10.0)
def echo_size_timed(data: bytes, reply_size: int = 0) -> Any:
    return b"r" * reply_size if reply_size else data
