"""Pipes: creating them."""

from __future__ import annotations

from ._builder import BuilderRuleSet

__all__ = ["Pipes"]


class Pipes(BuilderRuleSet):
    name = "Pipes"

    def allow_pipe(self) -> Pipes:
        return self._with(simple=("pipe", "pipe2"))
