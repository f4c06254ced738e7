"""Hostile clients of a served compartment (``compartments.serve``): real processes that
connect to its socket and misbehave with nothing but ``socket`` and ``msgpack``.

Run ``python serve_attacks.py MODE SOCKET SECONDS``; each mode runs until the time is up
(or the attack cannot go on), then exits 0. They are started as subprocesses, so they
compete with the parent only as other processes on the machine would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable

import msgpack

#: A request whose single argument is a bin32 announcing 1 GiB, without the bytes.
GIGABYTE_HEADER = bytes([0x94, 0x00, 0x01, 0xA4]) + b"echo" + bytes([0x91, 0xC6, 0x40, 0, 0, 0])


#: Requests a flooding client has in flight at once.
PIPELINED = 256


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def request(msgid: int, method: str = "add", params: list[object] | None = None) -> bytes:
    return msgpack.packb([0, msgid, method, [1, 2] if params is None else params])


def garbage(path: str, until: float) -> None:
    """Reconnect and send bytes that are not msgpack-RPC, over and over."""
    junk = os.urandom(4096)
    while time.monotonic() < until:
        with connect(path) as sock:
            try:
                sock.sendall(b"\xc1" + junk)
                sock.recv(1)
            except OSError:
                pass
        time.sleep(0.002)


def gigabyte(path: str, until: float) -> None:
    """Announce a gigabyte of bytes, then send them slowly."""
    while time.monotonic() < until:
        with connect(path) as sock:
            try:
                sock.sendall(GIGABYTE_HEADER)
                while time.monotonic() < until:
                    sock.sendall(b"\0" * 65536)
            except OSError:
                pass


def _pipeline(sock: socket.socket, batch: bytes, count: int, until: float) -> None:
    """Send ``batch`` (``count`` requests) and read all its answers, until the time is up."""
    unpacker = msgpack.Unpacker()
    while time.monotonic() < until:
        sock.sendall(batch)
        answered = 0
        while answered < count:
            data = sock.recv(65536)
            if not data:
                return
            unpacker.feed(data)
            answered += sum(1 for _ in unpacker)


def flood(path: str, until: float) -> None:
    """Pipelined requests as fast as the line takes them, reading every answer: the
    compartment is kept busy with this line's work."""
    with connect(path) as sock:
        batch = b"".join(request(i, "echo", ["x" * 512]) for i in range(PIPELINED))
        _pipeline(sock, batch, PIPELINED, until)


def spin(path: str, until: float) -> None:
    """Pipelined requests that each keep the compartment busy for 5 ms."""
    with connect(path) as sock:
        sock.settimeout(30)
        _pipeline(sock, b"".join(request(i, "spin", [5]) for i in range(100)), 100, until)


def unread(path: str, until: float) -> None:
    """Requests sent and answers never read."""
    with connect(path) as sock:
        sock.settimeout(max(0.1, until - time.monotonic()))
        batch = b"".join(request(i) for i in range(256))
        try:
            while time.monotonic() < until:
                sock.sendall(batch)
        except OSError:
            pass


def slow(path: str, until: float) -> None:
    """A request written one byte at a time."""
    frame = request(1, "echo", ["x" * 200])
    while time.monotonic() < until:
        with connect(path) as sock:
            try:
                for byte in frame:
                    sock.send(bytes([byte]))
                    time.sleep(0.001)
                    if time.monotonic() >= until:
                        return
                sock.recv(4096)
            except OSError:
                pass


def churn(path: str, until: float) -> None:
    """Connect and hang up at once, again and again."""
    while time.monotonic() < until:
        with contextlib.suppress(OSError):
            connect(path).close()
        time.sleep(0.001)


def oneshot(path: str, until: float) -> None:
    """A client that looks legitimate: connect, one call, its answer, hang up; again."""
    msgid = 0
    while time.monotonic() < until:
        with contextlib.suppress(OSError), connect(path) as sock:
            msgid += 1
            sock.sendall(request(msgid))
            sock.recv(64)


def burst(path: str, until: float) -> None:
    """Sixteen connections at once, all hung up together; again."""
    while time.monotonic() < until:
        held = []
        with contextlib.suppress(OSError):
            for _ in range(16):
                held.append(connect(path))
        for sock in held:
            sock.close()


def hoard(path: str, until: float) -> None:
    """Open as many connections as the fd limit allows and hold them."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = []
    failures = 0
    while len(held) < 2000 and failures < 1000:
        try:
            held.append(connect(path))
        except BlockingIOError:  # the listen queue is full for now (unix sockets: EAGAIN)
            failures += 1
            time.sleep(0.001)
        except OSError:
            break
    print(len(held), flush=True)
    while time.monotonic() < until:
        time.sleep(0.05)


MODES: dict[str, Callable[[str, float], None]] = {
    "garbage": garbage,
    "gigabyte": gigabyte,
    "flood": flood,
    "spin": spin,
    "unread": unread,
    "slow": slow,
    "churn": churn,
    "oneshot": oneshot,
    "burst": burst,
    "hoard": hoard,
}


if __name__ == "__main__":
    mode, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    MODES[mode](path, time.monotonic() + seconds)
