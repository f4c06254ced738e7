"""A whole program with a compartment, for ``learn -m cli_program`` (tests/cli/test_cli.py)."""

from __future__ import annotations

import sys

from compartments import compartment
from compartments.rulesets import SystemIO


@compartment(rules=[SystemIO.nothing()])
def first_line(path: str) -> str:
    with open(path) as f:
        return f.readline().strip()


if __name__ == "__main__":
    print("first line:", first_line(sys.argv[1]))
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
