"""Sealed compartments that the serve tests serve to other processes (``compartments.serve``)."""

from __future__ import annotations

import os
import time

from compartments import Fd, compartment
from compartments.rulesets import SystemIO


@compartment(rules=[SystemIO.nothing()])
class Calc:
    """A sealed calculator: what a served client may call."""

    def add(self, a: int, b: int = 0) -> int:
        return a + b

    def parse_int(self, text: str) -> int:
        return int(text)

    def echo(self, value: object) -> object:
        return value

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def own_pid(self) -> int:
        return os.getpid()

    def spin(self, milliseconds: float) -> None:
        """Keep the compartment busy (the clock is read through the vDSO: no syscall)."""
        end = time.monotonic() + milliseconds / 1000
        while time.monotonic() < end:
            pass

    def stdin(self) -> Fd:
        """An fd: the parent's line may carry it, a served client's never."""
        return Fd(0)

    def big(self, size: int) -> bytes:
        return b"x" * size


@compartment(rules=[SystemIO.nothing()])
def parse(text: str) -> list[str]:
    """A sealed function compartment."""
    return text.split(",")


@compartment(rules=[SystemIO.nothing()], workers=2)
def split_in_workers(text: str) -> list[str]:
    """Runs in several children: serve() refuses it."""
    return text.split(",")


@compartment(rules=[SystemIO.nothing()], restart="on-crash")
class Phoenix:
    """Restarted after a crash: a served socket goes on with the new child."""

    def add(self, a: int, b: int) -> int:
        return a + b
