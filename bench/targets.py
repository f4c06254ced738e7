"""Compartments the benchmarks call; module-level so the zygote can find them."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time

from compartments import compartment
from compartments.rulesets import SystemIO


@compartment(rules=[SystemIO.nothing()])
def noop() -> None:
    return None


@compartment(rules=[SystemIO.nothing()])
def idle() -> None:
    """Called once, then measured: ``noop`` has just served bursts of 1,000 concurrent
    awaits, which grow its heap (about 1.2 MiB) and say nothing of an idle compartment."""
    return None


@compartment(rules=[SystemIO.nothing()], report_violations=False)
def noop_without_listener() -> None:
    return None


@compartment(rules=[SystemIO.nothing()])
def echo(payload: bytes) -> bytes:
    return payload


@compartment(rules=[SystemIO.nothing()], fresh=True)
def first_answer() -> int:
    return 1


@compartment(rules=[SystemIO.nothing()])
class Service:
    """A class compartment: its calls go through the generated proxy methods."""

    def ping(self) -> None:
        return None


@compartment(rules=[SystemIO.nothing()])
def getpid_loop(count: int) -> float:
    """Nanoseconds per ``getpid`` (a cheap allowed syscall) in a tight loop, in here."""
    getpid = os.getpid
    started = time.perf_counter_ns()
    for _ in range(count):
        getpid()
    return (time.perf_counter_ns() - started) / count


def burn(n: int) -> int:
    """CPU-bound work for the Pool."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def unsealed(function: object) -> object:
    """The same compartment without its filter: only for measuring the filter's cost."""
    definition = dataclasses.replace(
        function._definition, unsealed_for_benchmarks=True  # type: ignore[attr-defined]
    )
    return type(function)(definition)


noop_unsealed = unsealed(noop)
getpid_loop_unsealed = unsealed(getpid_loop)


@compartment(rules=[SystemIO.nothing()], max_message=128 << 20)
def consume(payload: bytes) -> int:
    return len(payload)


@compartment(rules=[SystemIO.nothing()])
def produce(size: int) -> bytes:
    return bytes(size)


_held: dict[int, bytes] = {}


@compartment(rules=[SystemIO.nothing()], max_message=128 << 20)
def produce_held(size: int) -> bytes:
    """``size`` bytes the child already holds: one way, child to parent, nothing built."""
    return _held.setdefault(size, bytes(size))


#: A stdlib package of a few modules that nothing in a compartment of this module imports.
LAZY_MODULE = "xml.dom.minidom"


@compartment(rules=[SystemIO.nothing()], fresh=True)
def first_import(name: str) -> float | None:
    """Seconds the first import of ``name`` takes in a fresh child; None if it was loaded."""
    if name in sys.modules:
        return None
    started = time.perf_counter()
    importlib.import_module(name)
    return time.perf_counter() - started


first_import_unsealed = unsealed(first_import)
