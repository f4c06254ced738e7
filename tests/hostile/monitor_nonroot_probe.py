"""Run by an unprivileged user with the system Python: does a denied open show its path?

Prints one JSON line: the uid, the violation's path, the decoded call, and the
compartment's RLIMIT_CORE.
"""

from __future__ import annotations

import json
import os
import resource

from compartments import compartment
from compartments.errors import PolicyViolation
from compartments.rulesets import SystemIO


@compartment(rules=[SystemIO.nothing()])
def open_denied(path: str) -> None:
    with open(path, "rb"):
        pass


@compartment(rules=[SystemIO.nothing()])
class CoreLimit:
    """Reads its RLIMIT_CORE in setup (getrlimit is denied once sealed)."""

    def __init__(self) -> None:
        self.limit = list(resource.getrlimit(resource.RLIMIT_CORE))

    def get(self) -> list[int]:
        return self.limit


def main() -> None:
    result: dict[str, object] = {"uid": os.getuid()}
    try:
        open_denied("/etc/hostname")
    except PolicyViolation as exc:
        result.update(path=open_denied.violations[-1].path, decoded=exc.decoded)
    with CoreLimit() as limits:
        result["core"] = limits.get()
    open_denied.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
