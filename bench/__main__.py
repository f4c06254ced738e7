"""``make bench``: every figure next to its baseline, measured in the same run.

Absolute times on a shared 2-core VM are noise; ratios between interleaved rounds are
not. Latency is measured with every process pinned to one core (so cross-core wake-ups
do not hide software overhead) and again unpinned; throughput is unpinned, since it
exists to use both cores. Writes bench/results.json with the raw figures and ``ratios``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compartments import Pool, _largebytes
from compartments._supervised import Supervised
from compartments._text import printable

from . import baselines, targets

RESULTS = Path(__file__).with_name("results.json")
ONE_CORE = {0}

TARGETS = {
    "noop_vs_raw_socket": ("<=", 1.25),
    "noop_vs_mp_pipe": ("<=", 1.0),
    "noop_vs_process_pool": ("<=", 0.2),
    "pipelined_speedup": (">=", 4.0),
    "payload_1mib_vs_raw": ("<=", 1.2),
    "payload_64mib_fd_speedup": (">=", 2.0),
    "spawn_vs_mp_spawn": ("<=", 0.15),
    "filter_overhead": ("<=", 1.05),
    "listener_overhead": ("<=", 1.05),
    "pool_speedup_2_workers": (">=", 1.7),
    "idle_uss_mib": ("<=", 8.0),
}


def per_op(operation: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        operation()
    return (time.perf_counter() - started) / count


def pin(pids: list[int | None], cpus: set[int] | None) -> None:
    allowed = cpus or set(range(os.cpu_count() or 1))
    for pid in [0, *pids]:
        if pid is not None:
            os.sched_setaffinity(pid, allowed)


class Figures:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.units: dict[str, str] = {}

    def add(self, name: str, value: float, unit: str) -> None:
        self.samples.setdefault(name, []).append(value)
        self.units[name] = unit

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def table(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "unit": self.units[name],
                "samples": values,
            }
            for name, values in self.samples.items()
        }


def latency_rounds(figures: Figures, rounds: int, calls: int, pinned: bool) -> None:
    """Round trips of a no-op against every baseline, interleaved round by round."""
    suffix = "" if pinned else "_unpinned"
    peers: dict[str, Any] = {
        "raw_socket": baselines.RawSocketPeer(),
        "mp_pipe": baselines.PipePeer(),
        "process_pool": baselines.ProcessPoolPeer(),
    }
    ours = {
        "noop": targets.noop,
        "noop_no_listener": targets.noop_without_listener,
        "noop_unsealed": targets.noop_unsealed,
    }
    for function in ours.values():
        function()  # type: ignore[operator]
    pids = [p.pid for p in peers.values()] + [f.pid for f in ours.values()]  # type: ignore[attr-defined]
    pin(pids, ONE_CORE if pinned else None)
    try:
        for _ in range(rounds):
            for name, peer in peers.items():
                count = calls // 4 if name == "process_pool" else calls
                figures.add(f"{name}_rtt{suffix}", per_op(peer.round_trip, count) * 1e6, "us")
            for name, function in ours.items():
                figures.add(f"{name}_rtt{suffix}", per_op(function, calls) * 1e6, "us")  # type: ignore[arg-type]
    finally:
        pin(pids, None)
        for peer in peers.values():
            peer.close()


def payload_rounds(figures: Figures, rounds: int) -> None:
    one_mib = os.urandom(1 << 20)
    raw = baselines.RawSocketPeer()
    targets.echo(b"")
    pids = [raw.pid, targets.echo.pid]
    pin(pids, ONE_CORE)
    try:
        for _ in range(rounds):
            raw_ms = per_op(lambda: raw.round_trip(one_mib), 30) * 1e3
            figures.add("raw_socket_1mib_rtt", raw_ms, "ms")
            figures.add("echo_1mib_rtt", per_op(lambda: targets.echo(one_mib), 30) * 1e3, "ms")
    finally:
        pin(pids, None)
        raw.close()


def large_payload_rounds(figures: Figures, rounds: int) -> None:
    """64 MiB one way: inline msgpack, as trailing bytes, and as a memfd (automatic)."""
    payload = os.urandom(64 << 20)
    defaults = _largebytes.THRESHOLD, _largebytes.TRAILING_MIN
    never = 1 << 62
    modes = {"inline": (never, never), "trailing": (never, defaults[1]), "fd": defaults}
    targets.consume(b"")
    try:
        for _ in range(rounds):
            for mode, (threshold, trailing_min) in modes.items():
                _largebytes.THRESHOLD, _largebytes.TRAILING_MIN = threshold, trailing_min
                started = time.perf_counter()
                assert targets.consume(payload) == len(payload)
                elapsed = (time.perf_counter() - started) * 1e3
                figures.add(f"payload_64mib_{mode}", elapsed, "ms")
    finally:
        _largebytes.THRESHOLD, _largebytes.TRAILING_MIN = defaults


def throughput_rounds(figures: Figures, rounds: int, calls: int) -> None:
    targets.noop()
    for _ in range(rounds):
        sequential = per_op(targets.noop, calls)
        started = time.perf_counter()
        for _ in range(calls // 64):
            futures = [targets.noop.submit() for _ in range(64)]
            for future in futures:
                future.result()
        pipelined = (time.perf_counter() - started) / (calls // 64 * 64)
        figures.add("sequential_calls_per_s", 1 / sequential, "1/s")
        figures.add("pipelined_64_calls_per_s", 1 / pipelined, "1/s")


def spawn_rounds(figures: Figures, rounds: int) -> None:
    targets.first_answer()  # the zygote is warm, as it is after the first compartment
    for _ in range(rounds):
        started = time.perf_counter()
        supervised = Supervised(targets.first_answer._definition, (), {})
        supervised.call("__call__", (), {}, None)
        figures.add("spawn_first_answer", (time.perf_counter() - started) * 1e3, "ms")
        supervised.close()
        figures.add("mp_spawn_first_answer", baselines.mp_spawn_first_answer() * 1e3, "ms")


def pool_rounds(figures: Figures, rounds: int) -> None:
    jobs = [200_000] * 16
    with Pool(workers=1) as one, Pool(workers=2) as two:
        one.submit(targets.burn, 1).result()
        two.submit(targets.burn, 1).result()
        for _ in range(rounds):
            for name, pool in (("pool_1_worker", one), ("pool_2_workers", two)):
                started = time.perf_counter()
                list(pool.map(targets.burn, jobs))
                figures.add(name, (time.perf_counter() - started) * 1e3, "ms")


def lazy_import_rounds(figures: Figures, rounds: int) -> str | None:
    """A first lazy import after the seal, against the same fresh fork unsealed.

    Not a target yet. Returns why the figure is unavailable, or None: where sealed
    compartments cannot import after the seal, the import fails, and the bench goes on.
    """
    module = targets.LAZY_MODULE
    for _ in range(rounds):
        try:
            sealed = targets.first_import(module)
        except Exception as exc:  # a ModuleNotFoundError or a PolicyViolation, typically
            return f"{type(exc).__name__}: {printable(str(exc))[:200]}"
        unsealed = targets.first_import_unsealed(module)  # type: ignore[operator]
        if sealed is None or unsealed is None:
            return f"{module} is imported before the seal: nothing to measure"
        figures.add("first_import_sealed", sealed * 1e6, "us")
        figures.add("first_import_unsealed", unsealed * 1e6, "us")
    return None


def unscored(figures: Figures, unavailable: str | None) -> dict[str, Any]:
    """Figures reported without a target: a ratio, or why it could not be measured."""
    if unavailable is not None:
        return {"first_import_vs_unsealed": {"unavailable": unavailable}}
    m = figures.median
    return {"first_import_vs_unsealed": {
        "module": targets.LAZY_MODULE,
        "ratio": m("first_import_sealed") / m("first_import_unsealed"),
        "sealed_us": m("first_import_sealed"),
        "unsealed_us": m("first_import_unsealed"),
    }}  # fmt: skip


def idle_uss_mib(pid: int) -> float:
    private = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:")):
            private += int(line.split()[1])
    return private / 1024


def ratios(figures: Figures, uss: float) -> dict[str, float]:
    m = figures.median
    return {
        "noop_vs_raw_socket": m("noop_rtt") / m("raw_socket_rtt"),
        "noop_vs_mp_pipe": m("noop_rtt") / m("mp_pipe_rtt"),
        "noop_vs_process_pool": m("noop_rtt") / m("process_pool_rtt"),
        "pipelined_speedup": m("pipelined_64_calls_per_s") / m("sequential_calls_per_s"),
        "payload_1mib_vs_raw": m("echo_1mib_rtt") / m("raw_socket_1mib_rtt"),
        "payload_64mib_fd_speedup": m("payload_64mib_inline") / m("payload_64mib_fd"),
        "spawn_vs_mp_spawn": m("spawn_first_answer") / m("mp_spawn_first_answer"),
        "filter_overhead": m("noop_rtt") / m("noop_unsealed_rtt"),
        "listener_overhead": m("noop_rtt") / m("noop_no_listener_rtt"),
        "pool_speedup_2_workers": m("pool_1_worker") / m("pool_2_workers"),
        "idle_uss_mib": uss,
    }


def met(name: str, value: float) -> bool:
    op, target = TARGETS[name]
    return value <= target if op == "<=" else value >= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args(argv)
    rounds, calls = (3, 500) if args.quick else (args.rounds, args.calls)
    figures = Figures()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("latency, pinned to one core", lambda: latency_rounds(figures, rounds, calls, True)),
        ("latency, unpinned", lambda: latency_rounds(figures, rounds, calls, False)),
        ("1 MiB payloads", lambda: payload_rounds(figures, rounds)),
        ("64 MiB payloads", lambda: large_payload_rounds(figures, rounds)),
        ("pipelining", lambda: throughput_rounds(figures, rounds, calls)),
        ("spawn", lambda: spawn_rounds(figures, rounds)),
        ("Pool", lambda: pool_rounds(figures, max(3, rounds // 2))),
    ]
    for title, step in steps:
        print(f"measuring {title} ...", file=sys.stderr, flush=True)
        step()
    print("measuring a first lazy import (no target yet) ...", file=sys.stderr, flush=True)
    extra = unscored(figures, lazy_import_rounds(figures, rounds))
    targets.noop()
    uss = idle_uss_mib(targets.noop.pid)  # type: ignore[arg-type]
    computed = ratios(figures, uss)
    report(figures, computed, extra)
    RESULTS.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "kernel": platform.release(),
                    "cpus": os.cpu_count()},
        "rounds": rounds, "calls_per_round": calls,
        "figures": figures.table(),
        "ratios": computed,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "met": {k: met(k, v) for k, v in computed.items()},
        "unscored": extra,
    }, indent=2))  # fmt: skip
    print(f"\nwrote {RESULTS}")
    return 0


def report(figures: Figures, computed: dict[str, float], extra: dict[str, Any]) -> None:
    print(f"\n{'figure':34} {'median':>11} {'min':>11} {'max':>11}")
    for name, row in figures.table().items():
        low, high = row["min"], row["max"]
        print(f"{name:34} {row['median']:11.2f} {low:11.2f} {high:11.2f} {row['unit']}")
    print(f"\n{'ratio':28} {'value':>8}  target  met")
    for name, value in computed.items():
        op, target = TARGETS[name]
        print(f"{name:28} {value:8.3f}  {op} {target:<4} {'yes' if met(name, value) else 'NO'}")
    print(f"\n{'without a target yet':28} {'value':>8}")
    for name, row in extra.items():
        if "unavailable" in row:
            print(f"{name:28} unavailable: {row['unavailable']}")
        else:
            print(f"{name:28} {row['ratio']:8.3f}  ({row['module']}: "
                  f"{row['sealed_us']:.0f} us sealed, {row['unsealed_us']:.0f} us unsealed)")


if __name__ == "__main__":
    sys.exit(main())
