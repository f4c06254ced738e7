"""Compartments for the CLI tests (tests/cli/test_cli.py) to inspect and learn."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping, Sequence

from compartments import Arg, SeccompRule, compartment
from compartments.rulesets import Networking, SystemIO


class Locking:
    """A RuleSet of one conditional rule: fcntl(fd, F_SETLK)."""

    name = "Locking"

    def simple_rules(self) -> Sequence[str]:
        return ()

    def conditional_rules(self) -> Mapping[str, Sequence[SeccompRule]]:
        return {"fcntl": [SeccompRule("fcntl").and_condition(Arg(1, bits=32) == fcntl.F_SETLK)]}


@compartment(rules=[SystemIO.nothing().allow_read_path("/etc/hostname")])
def reads_hostname() -> str:
    with open("/etc/hostname") as f:
        return f.read()


@compartment(rules=[Networking.nothing().allow_tcp_connect_port(8080)])
def connects() -> None:
    pass


@compartment(rules=[Locking()])
def locks() -> None:
    pass


def _rules_of(keeper: KeepsFile) -> list[object]:
    return [SystemIO.nothing().allow_file_read(keeper.fd)]


@compartment(rules=_rules_of)
class KeepsFile:
    """Opens a file in setup; its rules name that fd."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        with open(path + ".setup-pid", "w") as marker:
            marker.write(str(os.getpid()))

    def size(self) -> int:
        return os.fstat(self.fd).st_size


def computes(x: int) -> int:
    """Needs nothing beyond the base set."""
    return x * 2


def opens_then_fails(path: str) -> None:
    """Reads a file, then raises: learn must still print what it did."""
    with open(path) as f:
        f.read()
    raise ValueError("failed after reading")


class Escaping(Locking):
    """A RuleSet whose name would retitle the terminal if printed raw."""

    name = "Evil\x1b]0;pwned\x07"


@compartment(rules=[Escaping()])
def escapes() -> None:
    pass
