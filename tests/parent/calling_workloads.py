"""Compartments the calling-side tests (Futures, asyncio) share."""

from __future__ import annotations

import os
import time

from compartments import compartment
from compartments.rulesets import SystemIO


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@compartment(rules=[SystemIO.nothing()])
def echo(value: int) -> int:
    return value


@compartment(rules=[SystemIO.nothing()])
def spin(seconds: float) -> float:
    _spin(seconds)
    return seconds


@compartment(rules=[SystemIO.nothing()], timeout=0.5, restart="on-crash")
def spin_with_timeout(seconds: float) -> int:
    _spin(seconds)
    return os.getpid()
