"""Compartments for the tests of a parent that forks (a prefork server, say)."""

from __future__ import annotations

import os

from compartments import compartment
from compartments.rulesets import SystemIO


@compartment(rules=[SystemIO.nothing()])
def whose_pid() -> int:
    return os.getpid()


@compartment(rules=[SystemIO.nothing()])
def denied_open() -> None:
    open("/etc/hostname").close()
