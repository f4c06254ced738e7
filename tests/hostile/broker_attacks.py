"""A compartment that, once compromised, never answers the parent's request to take a
direct line (``$attach``) while it answers everything else."""

from __future__ import annotations

import sys
from typing import Any

from compartments import compartment
from compartments.rulesets import SystemIO


def _server_on_stack() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if type(candidate).__name__ == "Server":
            return candidate
        frame = frame.f_back
    raise RuntimeError("no Server on the stack")


@compartment(rules=[SystemIO.nothing()])
class SilentPeer:
    def ping(self) -> int:
        return 1

    def turn_evil(self) -> None:
        server = _server_on_stack()
        original = server._answer

        def answer(channel: Any, request: Any) -> None:
            if request.method != "$attach":
                original(channel, request)

        server._answer = answer


@compartment(rules=[SystemIO.nothing()])
class Caller:
    def use(self, peer: Any) -> str:
        return "got a line"
