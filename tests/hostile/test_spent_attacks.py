"""A compartment that has served all it will serve (a fresh=True call, a Pool worker at
its max_tasks_per_child) cannot hold the caller's result past a short grace by ignoring
the EOF that ends it: it is killed after SPENT_GRACE, not GRACE_PERIOD."""

from __future__ import annotations

import time

import pytest
from spent_attacks import answer_then_stay, fresh_answer_then_stay

from compartments import Pool
from compartments.rulesets import SystemIO

QUICKLY = 1.5  # GRACE_PERIOD (2 s) before; SPENT_GRACE (0.1 s) now


@pytest.mark.timeout(30)
def test_a_fresh_compartment_that_ignores_eof_does_not_hold_its_result() -> None:
    started = time.monotonic()
    assert fresh_answer_then_stay() == "done"
    assert time.monotonic() - started < QUICKLY


@pytest.mark.timeout(30)
def test_a_spent_pool_worker_that_ignores_eof_does_not_hold_its_result() -> None:
    with Pool(rules=[SystemIO.nothing()], workers=1, max_tasks_per_child=1) as pool:
        pool.submit(answer_then_stay).result()  # the worker is up; measure the next one
        started = time.monotonic()
        assert pool.submit(answer_then_stay).result() == "done"
        assert time.monotonic() - started < QUICKLY
