"""Resolve a callable ``rules=`` where it is evaluated: in a compartment, after setup.

A compartment whose ``rules=`` is a callable computes its policy in its own child once
setup has run (for a class, from the instance: the fds its ``__init__`` opened). So
``python -m compartments inspect`` cannot compute it in its own process; it starts a
throwaway :class:`RulesOf` compartment instead. That child runs the target's setup as
the target's own child would, evaluates the callable, is sealed by the very policy it
computed (so a policy that cannot be applied fails here too), and answers with that
policy as data. The target's setup never runs in the CLI's process.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._policy._rules import ruleset_to_data
from ._decorator import compartment

__all__ = ["RulesOf"]


def _sealed_by_target_rules(resolver: RulesOf) -> list[Any]:
    return resolver.rulesets


@compartment(rules=_sealed_by_target_rules, name="inspect")
class RulesOf:
    """The policy a compartment computes after its setup (its callable ``rules=``)."""

    def __init__(self, module: str, qualname: str, args: list[Any]) -> None:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        definition = target._definition
        if definition.is_class:
            instance = definition.target(*args)
            self.rulesets = list(definition.rules(instance))
        else:
            if definition.setup is not None:
                definition.setup()
            self.rulesets = list(definition.rules())
        self._data = [ruleset_to_data(ruleset) for ruleset in self.rulesets]

    def policy(self) -> list[dict[str, object]]:
        return self._data
