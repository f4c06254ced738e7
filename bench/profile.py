"""``make profile``: where the time of the targets we miss goes, measured not guessed.

Three ladders, each rung adding one layer to the one before, in the same run:

- a no-op call, from a bare msgpack client on a real sealed compartment's channel up to
  the full proxy, with the parent's own CPU time (``time.thread_time``: its Python plus
  its syscalls) apart from the rest (the child and the context switches), and a cProfile;
- 1 MiB one way, from a raw socket into a reused buffer up to a full call;
- 64 MiB one way, each direction, against a raw socket into a new ``bytes``, and inline
  msgpack against trailing bytes.

The no-op ladder is also the breakdown of the parent's per-call cost: each rung's parent
CPU minus the one before is what that layer costs (``Proxy.__getattr__`` is measured
alone, as it makes no round trip).
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

from compartments._wire import _frames, _largebytes
from compartments._wire._channel import Channel, socketpair

from . import baselines, targets
from .__main__ import ONE_CORE, per_op, pin

Step = Callable[[], object]


def _interleaved(steps: dict[str, Step], rounds: int, calls: int) -> dict[str, tuple[float, float]]:
    """Each step's (parent CPU, wall) per call in µs: medians over rounds that run every
    step in turn, so a burst of the VM's other work hits all of them alike."""
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started_cpu, started = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                step()
            cpu[name].append((time.thread_time() - started_cpu) / calls * 1e6)
            wall[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in steps}


def noop_ladder(rounds: int = 9, calls: int = 1000) -> None:
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
        data, fds = _frames.encode_request(next(ids), "__call__", [[], {}])
        channel.send(data, fds)
        channel.receive_into(decoder)
        return decoder.next_message()

    service = targets.Service()
    service.ping()
    service_supervised = service._supervised
    floor = baselines.MsgpackPeer()
    steps: dict[str, Step] = {
        "raw socket ping-pong": raw.round_trip,
        "multiprocessing.Pipe": pipe.round_trip,
        "msgpack-RPC floor, forked, unsealed": floor.round_trip,
        "bare msgpack client, sealed child": bare,
        "+ encoder, Channel, FrameDecoder": wire,
        "+ Connection (routing), no timeout": lambda: conn.call("__call__", [[], {}]),
        "+ a timeout (a poll per call)": lambda: conn.call("__call__", [[], {}], timeout=60.0),
        "+ Supervised.call": lambda: supervised.call("__call__", (), {}, None),
        "+ the function proxy (noop())": targets.noop,
        "class: Supervised.call": lambda: service_supervised.call("ping", (), {}, None),
        "class: + Proxy.__getattr__ (ping())": lambda: service.ping(),
        "Proxy.__getattr__ alone, no call": lambda: service.ping,
    }
    pids = [targets.noop.pid, pipe.pid, raw.pid, floor.pid, service.pid]
    pin(pids, ONE_CORE)
    try:
        figures = _interleaved(steps, rounds, calls)
        print("\nno-op round trip, one core (µs per call)")
        print(f"{'rung':38} {'parent CPU':>10} {'wall':>7} {'rest':>7}")
        for name, (cpu, wall) in figures.items():
            print(f"{name:38} {cpu:10.2f} {wall:7.2f} {wall - cpu:7.2f}")
        print("  rest = wall - parent CPU: the other process and the context switches")
        _print_profile(targets.noop, 20_000)
    finally:
        pin(pids, None)
        pipe.close()
        raw.close()
        floor.close()
        service.close()
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
        data, fds = _frames.encode_request(1, "m", [_largebytes.TrailingBytes(payload)])
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
    """64 MiB one way, each direction, and inline msgpack against trailing bytes."""
    size = 64 << 20
    payload = os.urandom(size)
    sink, source = baselines.RawSink(), baselines.RawSource()
    targets.consume(b"")
    targets.produce_held(size)
    default = _largebytes.TRAILING_MIN

    def inline() -> object:
        _largebytes.TRAILING_MIN = 1 << 62
        try:
            return targets.consume(payload)
        finally:
            _largebytes.TRAILING_MIN = default

    pieces: dict[str, Step] = {
        "raw, parent to child, into new bytes": lambda: sink.send(payload),
        "call, parent to child (trailing bytes)": lambda: targets.consume(payload),
        "call, parent to child, inline msgpack": inline,
        "raw, child to parent, into new bytes": lambda: source.receive(size),
        "call, child to parent (trailing bytes)": lambda: targets.produce_held(size),
    }
    pids = [sink.pid, source.pid, targets.consume.pid, targets.produce_held.pid]
    pin(pids, ONE_CORE)  # type: ignore[arg-type]
    try:
        times: dict[str, list[float]] = {name: [] for name in pieces}
        for _ in range(rounds):
            for name, piece in pieces.items():
                times[name].append(per_op(piece, 1) * 1e3)
        print("\n64 MiB one way, one core (ms, median of interleaved rounds)")
        for name, values in times.items():
            print(f"{name:40} {statistics.median(values):7.1f}")
    finally:
        pin(pids, None)  # type: ignore[arg-type]
        sink.close()
        source.close()


def main() -> int:
    noop_ladder()
    payload_ladder()
    large_components()
    return 0


if __name__ == "__main__":
    sys.exit(main())
