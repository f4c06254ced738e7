"""What a Python user has today, measured the same way: raw sockets, multiprocessing."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import socket
import struct
import time
from collections.abc import Callable

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


def _echo_forever(sock: socket.socket) -> None:
    """Receive a whole length-prefixed message, then send it back, like an RPC does."""
    buffer = bytearray(1 << 21)
    header = bytearray(_HEADER.size)
    while _receive_exactly(sock, memoryview(header)):
        (size,) = _HEADER.unpack(header)
        body = memoryview(buffer)[:size]
        if not _receive_exactly(sock, body):
            break
        sock.sendall(body)
    os._exit(0)


class RawSocketPeer:
    """A forked child echoing on a socketpair: the floor for any RPC over one."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _echo_forever(child)
        child.close()
        self._buffer = bytearray(1 << 21)

    def round_trip(self, payload: bytes = PING) -> None:
        self.sock.sendall(_HEADER.pack(len(payload)) + payload if len(payload) < 4096 else
                          _HEADER.pack(len(payload)))  # fmt: skip
        if len(payload) >= 4096:
            self.sock.sendall(payload)
        _receive_exactly(self.sock, memoryview(self._buffer)[: len(payload)])

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # later forks hold copies: close alone is no EOF
        self.sock.close()
        os.waitpid(self.pid, 0)


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
