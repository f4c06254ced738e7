"""``make profile``: where the time of the targets we miss goes, measured not guessed.

Three ladders, each rung adding one layer to the one before, in the same run:

- a no-op call, from a bare msgpack client on a real sealed compartment's channel up to
  the full proxy, with the parent's own CPU time (``time.thread_time``: its Python plus
  its syscalls) apart from the rest (the child and the context switches), and a cProfile;
- 1 MiB one way, from a raw socket into a reused buffer up to a full call;
- 64 MiB one way, each direction, against a raw socket into a new ``bytes``, and inline
  msgpack against trailing bytes;
- 64 KiB echoed, against a raw echo into a new ``bytes``, with each side's CPU;
- calls in flight (64 Futures, and 1,000 gathered awaits) with the parent on one core and
  the child on the other: each side's CPU per call (``/proc/*/schedstat``, every thread)
  against the wall time per call, so the side whose CPU fills the wall is the bound.

The no-op ladder is also the breakdown of the parent's per-call cost: each rung's parent
CPU minus the one before is what that layer costs (``Proxy.__getattr__`` is measured
alone, as it makes no round trip).
"""

from __future__ import annotations

import asyncio
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

from compartments import control
from compartments._wire import _frames, _largebytes
from compartments._wire._channel import Channel, socketpair

from . import baselines, targets
from .__main__ import ONE_CORE, per_op, pin, pin_split

Step = Callable[[], object]


def _interleaved(
    steps: dict[str, tuple[Step, int]], rounds: int, calls: int
) -> dict[str, tuple[float, float, float]]:
    """Each step's (parent CPU, peer CPU, wall) per call in µs: medians over rounds that
    run every step in turn, so a burst of the VM's other work hits all of them alike.
    A step is a callable and the pid of the process that answers it (0: none)."""
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    peer: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, pid) in steps.items():
            started_peer = _run_ns(pid) if pid else 0
            started_cpu, started = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                step()
            cpu[name].append((time.thread_time() - started_cpu) / calls * 1e6)
            wall[name].append((time.perf_counter() - started) / calls * 1e6)
            peer[name].append((_run_ns(pid) - started_peer) / calls / 1e3 if pid else 0.0)
    return {
        name: (statistics.median(cpu[name]), statistics.median(peer[name]),
               statistics.median(wall[name]))
        for name in steps
    }  # fmt: skip


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
    service_supervised = service._supervised_instance()  # type: ignore[attr-defined]
    floor = baselines.MsgpackPeer()
    child, service_pid = targets.noop.pid or 0, control(service).pid or 0
    steps: dict[str, tuple[Step, int]] = {
        "raw socket ping-pong": (raw.round_trip, raw.pid),
        "multiprocessing.Pipe": (pipe.round_trip, pipe.pid),
        "msgpack-RPC floor, forked, unsealed": (floor.round_trip, floor.pid),
        "bare msgpack client, sealed child": (bare, child),
        "+ encoder, Channel, FrameDecoder": (wire, child),
        "+ Connection (routing), no timeout": (lambda: conn.call("__call__", [[], {}]), child),
        "+ a timeout (a poll per call)": (
            lambda: conn.call("__call__", [[], {}], timeout=60.0), child
        ),
        "+ Supervised.call": (lambda: supervised.call("__call__", (), {}, None), child),
        "+ the function proxy (noop())": (targets.noop, child),
        "class: Supervised.call": (
            lambda: service_supervised.call("ping", (), {}, None), service_pid
        ),
        "class: + Proxy.__getattr__ (ping())": (lambda: service.ping(), service_pid),
        "Proxy.__getattr__ alone, no call": (lambda: service.ping, 0),
    }
    pids = [child, pipe.pid, raw.pid, floor.pid, service_pid]
    pin(pids, ONE_CORE)
    try:
        figures = _interleaved(steps, rounds, calls)
        print("\nno-op round trip, one core (µs per call)")
        print(f"{'rung':38} {'parent CPU':>10} {'peer CPU':>8} {'wall':>7} {'rest':>7}")
        for name, (cpu, peer, wall) in figures.items():
            print(f"{name:38} {cpu:10.2f} {peer:8.2f} {wall:7.2f} {wall - cpu - peer:7.2f}")
        print("  peer CPU: the process answering (every thread of it, from schedstat);")
        print("  rest = wall - both: what neither ran, i.e. the switches between them")
        _print_profile(targets.noop, 20_000)
    finally:
        pin(pids, None)
        pipe.close()
        raw.close()
        floor.close()
        control(service).close()
        sock.close()


def _print_profile(step: Step, calls: int, what: str = "pinned no-op calls") -> None:
    """The parent's cProfile (this thread only: a settler thread's work is not in it)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(f"\ncProfile of {calls} {what} (top 12 by own time):")
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


def _run_ns(pid: int | str) -> int:
    """CPU time a process has run, every thread of it, in ns (the scheduler's own count)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except OSError:  # the thread exited since the listing: it counts no more
            continue
    return total


def _cpu_split(run: Step, calls: int, child: int) -> tuple[float, float, float]:
    """(wall, parent CPU, child CPU) per call in µs, for ``run`` making ``calls`` calls."""
    parent_before, child_before = _run_ns("self"), _run_ns(child)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    parent, child_ns = _run_ns("self") - parent_before, _run_ns(child) - child_before
    return wall / calls * 1e6, parent / calls / 1e3, child_ns / calls / 1e3


def _print_split(title: str, figures: dict[str, list[tuple[float, float, float]]]) -> None:
    """Medians of (wall, parent CPU, peer CPU) per call, one line per step."""
    print(f"\n{title} (µs per call, medians)")
    print(f"{'':40} {'wall':>7} {'parent CPU':>10} {'peer CPU':>9}")
    for name, rounds in figures.items():
        wall, parent, peer = (statistics.median(column) for column in zip(*rounds, strict=True))
        print(f"{name:40} {wall:7.2f} {parent:10.2f} {peer:9.2f}")
    print("  a side whose CPU per call is about the wall per call is what bounds it")


def in_flight(rounds: int = 5, calls: int = 6400) -> None:
    """64 Futures in flight, and 1,000 gathered awaits, against one call at a time."""
    targets.noop()
    child = targets.noop.pid
    assert child is not None

    def sequential() -> None:
        for _ in range(calls):
            targets.noop()

    def pipelined() -> None:
        for _ in range(calls // 64):
            for future in [targets.noop.submit() for _ in range(64)]:
                future.result()

    async def one_by_one() -> None:
        for _ in range(1000):
            await targets.noop.aio()

    async def gathered() -> None:
        await asyncio.gather(*(targets.noop.aio() for _ in range(1000)))

    loop = asyncio.new_event_loop()
    pin_split([], [child])
    try:
        loop.run_until_complete(gathered())  # the loop's helper threads start pinned
        figures: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for name, run, count in (
                ("sequential noop()", sequential, calls),
                ("64 in flight (submit, result)", pipelined, calls),
                ("1,000 awaited one by one", lambda: loop.run_until_complete(one_by_one()), 1000),
                ("1,000 gathered awaits", lambda: loop.run_until_complete(gathered()), 1000),
            ):
                figures.setdefault(name, []).append(_cpu_split(run, count, child))
        _print_split("calls in flight, parent on CPU 0 and child on CPU 1", figures)
        _print_profile(lambda: [f.result() for f in [targets.noop.submit() for _ in range(64)]],
                       200, "rounds of 64 Futures in flight, split")  # fmt: skip
        _print_profile(lambda: loop.run_until_complete(gathered()), 20,
                       "rounds of 1,000 gathered awaits, split")  # fmt: skip
    finally:
        pin([child], None)
        loop.close()


def echo_64kib(rounds: int = 7, calls: int = 300) -> None:
    """A 64 KiB echo against a raw echo into a new ``bytes``, on one core."""
    payload = os.urandom(64 << 10)
    raw = baselines.RawSocketPeer(fresh=True)
    targets.echo(payload)
    child = targets.echo.pid
    assert child is not None
    pin([child, raw.pid], ONE_CORE)
    try:
        figures: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for name, step, pid in (
                ("raw echo into a new bytes", lambda: raw.round_trip(payload), raw.pid),
                ("call echo", lambda: targets.echo(payload), child),
            ):
                def run(step: Step = step) -> None:
                    for _ in range(calls):
                        step()

                figures.setdefault(name, []).append(_cpu_split(run, calls, pid))
        _print_split("64 KiB echo, one core", figures)
        _print_profile(lambda: targets.echo(payload), 3000, "64 KiB echoes, one core")
    finally:
        pin([child, raw.pid], None)
        raw.close()


#: name: (full run, smoke run); ``--quick`` takes the second, to check they all still run.
SECTIONS: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
    "noop": (lambda: noop_ladder(), lambda: noop_ladder(rounds=1, calls=50)),
    "payload": (lambda: payload_ladder(), lambda: payload_ladder(rounds=1)),
    "large": (lambda: large_components(), lambda: large_components(rounds=1)),
    "echo64k": (lambda: echo_64kib(), lambda: echo_64kib(rounds=1, calls=20)),
    "inflight": (lambda: in_flight(), lambda: in_flight(rounds=1, calls=128)),
}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.profile [--quick] [SECTION ...]``: every section, or those named."""
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    names = [arg for arg in args if arg != "--quick"] or list(SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        return 2
    for name in names:
        SECTIONS[name][quick]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
