"""What a Python user has today, measured the same way: raw sockets, multiprocessing."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import socket
import struct
import time
from collections.abc import Callable

import msgpack

from compartments._wire._largebytes import unfilled_bytes

from .targets import burn

PING = b"x" * 16


_HEADER = struct.Struct("!I")


def _receive_exactly(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def _destination(size: int, fresh: bool, reused: memoryview) -> memoryview:
    """Where a message of ``size`` bytes is received: a new ``bytes`` (what a call must
    return) or a buffer reused across messages (the floor no call can reach)."""
    return unfilled_bytes(size)[1] if fresh and size >= 2 else reused[:size]


def _echo_forever(sock: socket.socket, fresh: bool) -> None:
    """Receive a whole length-prefixed message, then send it back, like an RPC does."""
    buffer = memoryview(bytearray(1 << 21))
    header = bytearray(_HEADER.size)
    while _receive_exactly(sock, memoryview(header)):
        (size,) = _HEADER.unpack(header)
        body = _destination(size, fresh, buffer)
        if not _receive_exactly(sock, body):
            break
        sock.sendall(body)
    os._exit(0)


class RawSocketPeer:
    """A forked child echoing on a socketpair: the floor for any RPC over one.

    ``fresh``: both ends receive into a new ``bytes`` per message, as a call must (the
    fair baseline for payloads); otherwise into buffers reused across messages.
    """

    def __init__(self, fresh: bool = False) -> None:
        self.fresh = fresh
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _echo_forever(child, fresh)
        child.close()
        self._buffer = memoryview(bytearray(1 << 21))

    def round_trip(self, payload: bytes = PING) -> None:
        self.sock.sendall(_HEADER.pack(len(payload)) + payload if len(payload) < 4096 else
                          _HEADER.pack(len(payload)))  # fmt: skip
        if len(payload) >= 4096:
            self.sock.sendall(payload)
        _receive_exactly(self.sock, _destination(len(payload), self.fresh, self._buffer))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # later forks hold copies: close alone is no EOF
        self.sock.close()
        os.waitpid(self.pid, 0)


class _Forked:
    """A forked child on one end of a socketpair, closed by shutting the pair down."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            try:
                serve(child)
            finally:
                os._exit(0)
        child.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # later forks hold copies: close alone is no EOF
        self.sock.close()
        os.waitpid(self.pid, 0)


def _answer_msgpack_rpc(sock: socket.socket) -> None:
    unpacker, packer = msgpack.Unpacker(), msgpack.Packer()
    buffer = bytearray(1 << 16)
    while n := sock.recv_into(buffer):
        unpacker.feed(memoryview(buffer)[:n])
        for request in unpacker:
            sock.sendall(packer.pack([1, request[1], None, None]))


class MsgpackPeer(_Forked):
    """The floor of msgpack-RPC in Python: Packer and Unpacker on both ends, msgid
    matching, no validation, no bounds, no deadline."""

    def __init__(self) -> None:
        super().__init__(_answer_msgpack_rpc)
        self._packer, self._unpacker = msgpack.Packer(), msgpack.Unpacker()
        self._buffer = bytearray(1 << 16)
        self._msgid = 0

    def round_trip(self) -> None:
        self._msgid = msgid = (self._msgid + 1) & 0xFFFFFFFF
        self.sock.sendall(self._packer.pack([0, msgid, "__call__", [[], {}]]))
        while True:
            for reply in self._unpacker:
                if reply[1] == msgid:
                    return
            self._unpacker.feed(memoryview(self._buffer)[: self.sock.recv_into(self._buffer)])


def _sink_forever(sock: socket.socket) -> None:
    header, reused = bytearray(_HEADER.size), memoryview(bytearray(1 << 21))
    while _receive_exactly(sock, memoryview(header)):
        (size,) = _HEADER.unpack(header)
        if not _receive_exactly(sock, _destination(size, True, reused)):
            break
        sock.send(b"k")


class RawSink(_Forked):
    """One way, parent to child: the child receives each message into a new ``bytes``
    and acknowledges it with one byte."""

    def __init__(self) -> None:
        super().__init__(_sink_forever)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(_HEADER.pack(len(payload)))
        self.sock.sendall(payload)
        self.sock.recv(1)


def _source_forever(sock: socket.socket) -> None:
    cached: dict[int, bytes] = {}
    header = bytearray(_HEADER.size)
    while _receive_exactly(sock, memoryview(header)):
        (size,) = _HEADER.unpack(header)
        sock.sendall(cached.setdefault(size, bytes(size)))


class RawSource(_Forked):
    """One way, child to parent: the child sends bytes it already holds, the parent
    receives them into a new ``bytes``."""

    def __init__(self) -> None:
        super().__init__(_source_forever)

    def receive(self, size: int) -> bytes:
        self.sock.sendall(_HEADER.pack(size))
        data, view = unfilled_bytes(size)
        _receive_exactly(self.sock, view)
        return data


_STOP = "stop"


def _pipe_echo(conn: multiprocessing.connection.Connection) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message == _STOP:  # later forks hold copies of our end: EOF may never come
            return
        conn.send(message)


class PipePeer:
    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_pipe_echo, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.pid = self.process.pid

    def round_trip(self) -> None:
        self.conn.send(None)
        self.conn.recv()

    def close(self) -> None:
        self.conn.send(_STOP)
        self.conn.close()
        self.process.join()


def _nothing() -> None:
    return None


class ProcessPoolPeer:
    def __init__(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork")
        )
        self.pool.submit(_nothing).result()
        self.pid = next(iter(self.pool._processes))

    def round_trip(self) -> None:
        self.pool.submit(_nothing).result()

    def close(self) -> None:
        self.pool.shutdown()


def _answer(conn: multiprocessing.connection.Connection) -> None:
    conn.send(1)


def mp_spawn_first_answer() -> float:
    """Start to first answered call with multiprocessing's spawn start method."""
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    parent, child = context.Pipe()
    process = context.Process(target=_answer, args=(child,))
    process.start()
    parent.recv()
    elapsed = time.perf_counter() - started
    process.join()
    return elapsed


def process_pool_map(workers: int, jobs: list[int]) -> Callable[[], None]:
    def run() -> None:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(burn, jobs))

    return run
