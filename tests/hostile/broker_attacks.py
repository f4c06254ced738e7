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
        """From now on ``$attach`` requests are read and dropped, never answered."""
        server = _server_on_stack()
        decoder = server._decoders[server.primary]
        original = decoder.next_message

        def next_message() -> Any:
            message = original()
            while message is not None and getattr(message, "method", None) == "$attach":
                message = original()
            return message

        decoder.next_message = next_message


@compartment(rules=[SystemIO.nothing()])
class Caller:
    def use(self, peer: Any) -> str:
        return "got a line"
