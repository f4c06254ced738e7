"""``make profile``: where the time of the targets we miss goes, measured not guessed.

Three ladders, each rung adding one layer to the one before, in the same run:

- a no-op call, from a bare msgpack client on a real sealed compartment's channel up to
  the full proxy, with the parent's own CPU time (``time.thread_time``: its Python plus
  its syscalls) apart from the rest (the child and the context switches), and a cProfile;
- 1 MiB one way, from a raw socket into a reused buffer up to a full call;
- 64 MiB, the memfd path's pieces against inline msgpack and trailing bytes.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import os
import pstats
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

import msgpack

from compartments import _largebytes, _wire
from compartments._channel import Channel, socketpair

from . import baselines, targets
from .__main__ import ONE_CORE, per_op, pin

Step = Callable[[], object]


def _median_of(step: Step, rounds: int, calls: int) -> tuple[float, float]:
    """(parent CPU, wall) per call in µs, medians over interleaved rounds."""
    cpu, wall = [], []
    for _ in range(rounds):
        started_cpu, started = time.thread_time(), time.perf_counter()
        for _ in range(calls):
            step()
        cpu.append((time.thread_time() - started_cpu) / calls * 1e6)
        wall.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def noop_ladder(rounds: int = 5, calls: int = 3000) -> None:
    targets.noop()
    supervised = targets.noop._supervised  # type: ignore[attr-defined]
    conn = supervised.connection()
    channel: Channel = conn.channel
    sock = socket.socket(fileno=os.dup(channel.fileno()))
    decoder = conn._decoder
    packer = msgpack.Packer()
    buffer = bytearray(1 << 16)
    ids = itertools.count(1 << 30)
    pipe, raw = baselines.PipePeer(), baselines.RawSocketPeer()

    def bare() -> object:  # what any msgpack-RPC client must do, and nothing else
        sock.send(packer.pack([0, next(ids), "__call__", [[], {}]]))
        return msgpack.unpackb(memoryview(buffer)[: sock.recv_into(buffer)])

    def wire() -> object:  # + our encoder, Channel and the validating FrameDecoder
        data, fds = _wire.encode_request(next(ids), "__call__", [[], {}])
        channel.send(data, fds)
        channel.receive_into(decoder)
        return decoder.next_message()

    steps: dict[str, Step] = {
        "raw socket ping-pong": raw.round_trip,
        "multiprocessing.Pipe": pipe.round_trip,
        "bare msgpack client, sealed child": bare,
        "+ encoder, Channel, FrameDecoder": wire,
        "+ Connection (routing, timeouts)": lambda: conn.call("__call__", [[], {}]),
        "+ proxy and supervision (noop())": targets.noop,
    }
    pin([targets.noop.pid, pipe.pid, raw.pid], ONE_CORE)
    try:
        figures = {name: _median_of(step, rounds, calls) for name, step in steps.items()}
        print("\nno-op round trip, one core (µs per call)")
        print(f"{'rung':38} {'parent CPU':>10} {'wall':>7} {'rest':>7}")
        for name, (cpu, wall) in figures.items():
            print(f"{name:38} {cpu:10.2f} {wall:7.2f} {wall - cpu:7.2f}")
        print("  rest = wall - parent CPU: the other process and the context switches")
        _print_profile(targets.noop, 20_000)
    finally:
        pin([targets.noop.pid], None)
        pipe.close()
        raw.close()
        sock.close()


def _print_profile(step: Step, calls: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(f"\ncProfile of {calls} pinned no-op calls (top 12 by own time):")
    print("\n".join(out.getvalue().splitlines()[4:]))


_HEADER = struct.Struct("!I")


class _Sink:
    """A forked child that receives length-prefixed messages and answers one byte."""

    def __init__(self, fresh: bool) -> None:
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            self._serve(child, fresh)
        child.close()

    @staticmethod
    def _serve(sock: socket.socket, fresh: bool) -> None:
        reused = memoryview(bytearray(1 << 21))
        header = bytearray(_HEADER.size)
        while baselines._receive_exactly(sock, memoryview(header)):
            (size,) = _HEADER.unpack(header)
            target = _largebytes.unfilled_bytes(size)[1] if fresh else reused[:size]
            if not baselines._receive_exactly(sock, target):
                break
            sock.send(b"k")
        os._exit(0)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(_HEADER.pack(len(payload)))
        self.sock.sendall(payload)
        self.sock.recv(1)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        os.waitpid(self.pid, 0)


class _ChannelSink:
    """Our encoder, Channel and FrameDecoder between two processes, nothing else."""

    def __init__(self) -> None:
        self.channel, child = socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.channel.close()
            decoder = child.new_decoder()
            while child.receive_into(decoder):
                while decoder.next_message() is not None:
                    child.send(b"k")
            os._exit(0)
        child.close()
        self.ack = socket.socket(fileno=os.dup(self.channel.fileno()))

    def send(self, payload: bytes) -> None:
        data, fds = _wire.encode_request(1, "m", [_largebytes.TrailingBytes(payload)])
        self.channel.send(data, fds)
        self.ack.recv(1)

    def close(self) -> None:
        self.channel.shutdown()
        self.channel.close()
        self.ack.close()
        os.waitpid(self.pid, 0)


def payload_ladder(rounds: int = 5) -> None:
    one_mib = os.urandom(1 << 20)
    reused, fresh, raw = _Sink(fresh=False), _Sink(fresh=True), baselines.RawSocketPeer()
    wire = _ChannelSink()
    targets.echo(b"")
    targets.consume(b"")
    targets.produce(0)
    steps: dict[str, Step] = {
        "raw one way, into a reused buffer": lambda: reused.send(one_mib),
        "raw one way, into a new bytes": lambda: fresh.send(one_mib),
        "encoder, Channel, decoder, one way": lambda: wire.send(one_mib),
        "call one way, parent to child": lambda: targets.consume(one_mib),
        "call one way, child to parent": lambda: targets.produce(1 << 20),
        "raw echo (the bench's baseline)": lambda: raw.round_trip(one_mib),
        "call echo": lambda: targets.echo(one_mib),
    }
    pids = [reused.pid, fresh.pid, raw.pid, wire.pid, targets.echo.pid, targets.consume.pid,
            targets.produce.pid]  # fmt: skip
    pin(pids, ONE_CORE)  # type: ignore[arg-type]
    try:
        print("\n1 MiB of bytes, one core (ms)")
        for name, step in steps.items():
            times = [per_op(step, 30) * 1e3 for _ in range(rounds)]
            print(f"{name:38} {statistics.median(times):7.3f}")
    finally:
        pin(pids, None)  # type: ignore[arg-type]
        for peer in (reused, fresh, raw, wire):
            peer.close()


def large_components(rounds: int = 3) -> None:
    payload = os.urandom(64 << 20)
    size = len(payload)
    held = _largebytes._to_memfd(payload)
    pieces: dict[str, Step] = {
        "parent: fill and seal a new memfd": lambda: os.close(_largebytes._to_memfd(payload).fd),
        "child: mmap it, copy into new bytes": lambda: _largebytes.read_by_mmap(held.fd, size),
        "copy 64 MiB into a new bytes": lambda: _largebytes.unfilled_bytes(size)[1].__setitem__(
            slice(None), payload
        ),
    }
    print("\n64 MiB (ms)")
    for name, piece in pieces.items():
        print(f"{name:38} {statistics.median(per_op(piece, 1) * 1e3 for _ in range(5)):7.1f}")
    os.close(held.fd)
    defaults = _largebytes.THRESHOLD, _largebytes.TRAILING_MIN
    never = 1 << 62
    modes = {"inline msgpack": (never, never), "trailing bytes": (never, defaults[1]),
             "memfd (automatic)": defaults}  # fmt: skip
    targets.consume(b"")
    try:
        for name, (threshold, trailing_min) in modes.items():
            _largebytes.THRESHOLD, _largebytes.TRAILING_MIN = threshold, trailing_min
            times = [per_op(lambda: targets.consume(payload), 1) * 1e3 for _ in range(rounds)]
            print(f"{'call, ' + name:38} {statistics.median(times):7.1f}")
    finally:
        _largebytes.THRESHOLD, _largebytes.TRAILING_MIN = defaults


def main() -> int:
    noop_ladder()
    payload_ladder()
    large_components()
    return 0


if __name__ == "__main__":
    sys.exit(main())
