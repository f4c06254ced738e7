"""Attacks on the channels from sealed compartments (issue 12, classes 4, 7 and 11).

Class 4: nothing a compartment does to its line, or to an fd it sends, blocks the parent
or a sibling past a deadline. Class 7: a direct line between compartments keeps the
parent line's guarantees. Class 11: a caller whose own send is blocked keeps reading.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels_attacks import (
    SIBLING_TIMEOUT,
    Lingerer,
    PayloadForger,
    PeerAttacker,
    Sibling,
    echo_size,
    echo_size_timed,
    urgent_byte_then_hang,
)

from compartments import control
from compartments.errors import ProtocolError

#: Generous against a loaded 2-core machine, far below the attacks' minute of lingering.
PROMPTLY = 10.0


def patient(sibling: Any) -> Any:
    """The sibling, called with a timeout past its own line timeout."""
    return control(sibling).with_timeout(SIBLING_TIMEOUT + PROMPTLY)


def _elapsed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


# -- class 4: blocking past a deadline ----------------------------------------------------


@pytest.mark.timeout(30)
def test_an_urgent_byte_on_the_parent_line_is_a_protocol_error_not_a_hang() -> None:
    try:
        with pytest.raises(ProtocolError):
            urgent_byte_then_hang()
    finally:
        urgent_byte_then_hang.close()


@pytest.mark.timeout(30)
def test_an_urgent_byte_read_by_a_future_is_a_protocol_error() -> None:
    try:
        future = urgent_byte_then_hang.submit()
        with pytest.raises(ProtocolError):
            future.result()
    finally:
        urgent_byte_then_hang.close()


@pytest.mark.timeout(60)
def test_an_urgent_byte_on_a_direct_line_does_not_freeze_the_sibling() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        attacker.urgent_byte()
        time.sleep(0.2)  # the sibling sees it before the parent's next call
        assert control(sibling).with_timeout(PROMPTLY).ping() > 0


@pytest.mark.timeout(60)
def test_dropping_a_lingering_socket_from_a_compartment_does_not_block() -> None:
    with Lingerer() as lingerer:
        received = [lingerer.give()]
        lingerer.sync()  # the compartment's own copy is closed: ours is the last
        assert _elapsed(received.clear) < PROMPTLY


@pytest.mark.timeout(60)
def test_closing_a_lingering_socket_from_a_compartment_does_not_block() -> None:
    with Lingerer() as lingerer:
        received = lingerer.give()
        lingerer.sync()
        assert _elapsed(received.close) < PROMPTLY


@pytest.mark.timeout(60)
def test_a_lingering_socket_smuggled_with_a_bad_frame_is_closed_without_blocking() -> None:
    with Lingerer() as lingerer:

        def smuggle() -> None:
            with pytest.raises(ProtocolError):
                control(lingerer).with_timeout(PROMPTLY).smuggle()

        assert _elapsed(smuggle) < PROMPTLY


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.access("/dev/hwrng", os.R_OK), reason="needs a readable /dev/hwrng")
def test_a_device_posing_as_a_payload_memfd_is_refused_without_reading_it() -> None:
    with PayloadForger("/dev/hwrng") as forger:

        def forge() -> None:
            with pytest.raises(ProtocolError, match="memfd"):
                forger.forge(1 << 20)

        assert _elapsed(forge) < PROMPTLY


@pytest.mark.timeout(60)
def test_a_memfd_payload_from_a_compartment_is_refused() -> None:
    with PayloadForger() as forger, pytest.raises(ProtocolError, match="memfd"):
        forger.forge_reply(2)  # $start was msgid 1


# -- class 7: direct lines between compartments -------------------------------------------


@pytest.mark.timeout(60)
def test_a_peer_that_pipelines_and_never_reads_does_not_freeze_its_sibling() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        assert attacker.flood_without_reading(64 << 10) > 0
        time.sleep(0.2)
        assert control(sibling).with_timeout(PROMPTLY).ping() > 0
        assert control(sibling).with_timeout(PROMPTLY).echo("still serving") == "still serving"


@pytest.mark.timeout(60)
def test_a_peer_that_never_reads_one_huge_answer_does_not_freeze_its_sibling() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        assert attacker.flood_without_reading(16 << 20) > 0
        time.sleep(0.2)
        assert control(sibling).with_timeout(PROMPTLY).ping() > 0


@pytest.mark.timeout(60)
def test_a_peer_that_pipelines_slow_requests_does_not_starve_the_parent() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        assert attacker.flood_with_naps(0.05, 300)  # 15 s of work, read at once
        time.sleep(0.2)
        assert _elapsed(control(sibling).with_timeout(PROMPTLY).ping) < 2.0


@pytest.mark.timeout(60)
def test_a_peer_that_never_reads_is_hung_up_on_after_the_sibling_timeout() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        attacker.flood_without_reading(64 << 10)
        assert attacker.line_closed_within(SIBLING_TIMEOUT + PROMPTLY)
        assert control(sibling).with_timeout(PROMPTLY).ping() > 0


@pytest.mark.timeout(60)
def test_a_peer_call_to_a_peer_that_never_answers_times_out() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        sibling.take(attacker)
        start = time.monotonic()
        assert patient(sibling).ask("hang") == "CallTimeout"
        assert time.monotonic() - start < SIBLING_TIMEOUT + PROMPTLY


@pytest.mark.timeout(60)
def test_a_peer_call_with_keys_the_peer_would_refuse_is_a_type_error_and_the_line_lives() -> None:
    with Sibling() as caller, Sibling() as callee:
        caller.take(callee)
        assert caller.ask("echo", {(1, 2): "tuple key"}) == "TypeError"
        assert caller.ask("echo", "still there") == "'still there'"


@pytest.mark.timeout(60)
def test_a_peer_that_starts_an_answer_and_never_ends_it_times_out() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        sibling.take(attacker)
        assert patient(sibling).ask("half_answer") == "CallTimeout"


@pytest.mark.timeout(60)
def test_a_peer_that_never_reads_a_large_call_times_it_out() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        sibling.take(attacker)
        busy = threading.Thread(target=_ignoring_errors(attacker.hang), daemon=True)
        busy.start()  # the attacker is stuck in a call from the parent: it reads no line
        time.sleep(0.2)
        try:
            big = patient(sibling).ask("echo", b"x" * (8 << 20))
            assert big == "CallTimeout"
        finally:
            control(attacker).close()
            busy.join(PROMPTLY)


def _ignoring_errors(action: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Exception):  # the attacker is closed under it
            action()

    return run


@pytest.mark.timeout(60)
def test_a_peer_memfd_payload_that_is_shorter_than_it_claims_cannot_crash_the_sibling() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        attacker.take(sibling)
        attacker.memfd_request(1 << 20)
        time.sleep(0.2)
        assert control(sibling).with_timeout(PROMPTLY).ping() > 0


@pytest.mark.timeout(60)
def test_a_peer_answer_with_a_short_memfd_cannot_crash_the_caller() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker:
        sibling.take(attacker)
        assert patient(sibling).ask("poison") == "ProtocolError"
        assert sibling.ping() > 0


@pytest.mark.timeout(120)
def test_handing_the_same_sibling_over_again_and_again_never_runs_out_of_slots() -> None:
    with Sibling() as sibling, Sibling() as caller:
        for _ in range(70):
            caller.take(sibling)  # the line it replaces is closed on both ends
        assert caller.ask("ping") == repr(sibling.ping())


@pytest.mark.timeout(120)
def test_many_peer_refs_in_one_call_give_their_slots_back() -> None:
    with Sibling() as sibling, Sibling() as caller:
        for _ in range(2):
            assert caller.take_many(*[sibling] * 62) == 62
        caller.take(sibling)
        assert caller.ask("ping") == repr(sibling.ping())


@pytest.mark.timeout(60)
def test_peer_refs_from_a_peer_are_refused_and_take_no_slots() -> None:
    with Sibling() as sibling, PeerAttacker() as attacker, Sibling() as caller:
        attacker.take(sibling)
        attacker.peer_refs(62)
        time.sleep(0.2)
        caller.take(sibling)  # the sibling still has slots for a line from the parent
        assert caller.ask("ping") == repr(sibling.ping())


# -- class 11: a call that never returns --------------------------------------------------

BIG = 256 << 10


@pytest.mark.timeout(60)
def test_a_blocking_call_behind_a_pending_one_returns() -> None:
    try:
        data = os.urandom(BIG)
        future = echo_size.submit(data)
        assert echo_size(data) == data
        assert future.result() == data
    finally:
        echo_size.close()


@pytest.mark.timeout(60)
def test_a_timed_call_behind_a_pending_one_returns_within_its_timeout() -> None:
    try:
        data = os.urandom(1 << 20)  # more than the socket buffers hold: a blocked send
        future = echo_size_timed.submit(data)
        assert echo_size_timed(data) == data
        assert future.result() == data
    finally:
        echo_size_timed.close()


@pytest.mark.timeout(60)
def test_a_large_call_behind_one_with_a_large_answer_returns() -> None:
    try:
        future = echo_size.submit(b"small", 8 << 20)
        assert echo_size(os.urandom(BIG)) is not None
        assert future.result() == b"r" * (8 << 20)
    finally:
        echo_size.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("function", [echo_size, echo_size_timed], ids=["untimed", "timed"])
def test_threads_pipelining_mixed_sizes_all_get_their_answers(function: Any) -> None:
    sizes = [5, BIG, 3 << 20, 100, 1 << 20, 40 << 10]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for round_ in range(4):
                payloads = [os.urandom(sizes[(seed + round_ + i) % len(sizes)]) for i in range(3)]
                futures = [function.submit(p) for p in payloads[:2]]
                assert function(payloads[2]) == payloads[2]
                for future, payload in zip(futures, payloads, strict=False):
                    assert future.result() == payload
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        assert not any(thread.is_alive() for thread in threads), "a call never returned"
        assert errors == []
    finally:
        function.close()

