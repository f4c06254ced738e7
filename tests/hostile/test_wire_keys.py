"""Class 3 of issue 12: work that grows faster than the frame.

A map's keys are hashed as the parent decodes it, inside one C call holding the GIL. If
a compartment can choose keys whose hashes collide (tuples, ints: CPython hashes them
without a secret), building the dict is quadratic and every parent thread stops. So
from a compartment, array keys are refused and predictable-hash keys are budgeted.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from wire_attacks import KeyForger, colliding_pairs, int_keys_sharing_probe_paths, packed_map

from compartments import control
from compartments._wire._decoder import FrameDecoder
from compartments.errors import ProtocolError

#: msgpack's pure-Python build is ~50x slower than its C build: a frame big enough to
#: show quadratic work takes the attacker longer to build than any timeout allows, and the
#: unpacker's own cost drowns the ratio. Both builds share the refusal these measure.
_SLOW_BUILD = pytest.mark.skipif(
    msgpack.Unpacker.__module__.endswith("fallback"),
    reason="needs msgpack's C build to make and time frames of this size",
)

MiB = 2**20
pytestmark = pytest.mark.timeout(120)


class _Ticker:
    """A parent thread that should keep running: the longest pause it saw."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture
def forger() -> Iterator[Any]:
    with KeyForger() as compartment_:
        yield compartment_


def _refused_promptly(call: Callable[[], object]) -> None:
    """The reply is refused as a protocol error, and no parent thread stalls meanwhile.

    The call's timeout leaves the child time to build its frame; what matters is that
    decoding it never holds the parent's GIL for long, which the ticker would see.
    """
    with _Ticker() as ticker, pytest.raises(ProtocolError, match=r"map key|int/float map keys"):
        call()
    assert ticker.longest < 1.0, f"parent threads stalled {ticker.longest:.1f}s"


def patient(forger: Any) -> Any:
    return control(forger).with_timeout(15)


def test_a_reply_with_40k_tuple_keys_sharing_one_hash_is_refused_promptly(forger: Any) -> None:
    # Before the fix: ~25 s with the GIL held, far past any call timeout.
    _refused_promptly(lambda: patient(forger).colliding_tuple_keys(40_000))


def test_nested_tuple_keys_sharing_one_hash_are_refused_promptly(forger: Any) -> None:
    _refused_promptly(lambda: patient(forger).colliding_tuple_keys(20_000, nested=True))


def test_colliding_tuple_keys_spread_over_many_small_maps_are_refused_promptly(
    forger: Any,
) -> None:
    # 300 maps of 1500: quadratic in each map, so the frame costs 300 * 1500**2.
    _refused_promptly(lambda: patient(forger).colliding_tuple_keys_in_small_maps(300, 1500))


@_SLOW_BUILD
def test_int_keys_sharing_probe_paths_are_refused_promptly(forger: Any) -> None:
    # Distinct hashes, but i << 17 clusters CPython's probing: ~2 s for 800k before the fix.
    _refused_promptly(lambda: patient(forger).int_keys_sharing_probe_paths(800_000))


def test_a_compartment_returning_tuple_keys_gets_a_type_error_and_lives(forger: Any) -> None:
    with pytest.raises(TypeError, match=r"result of call `return_tuple_keys` holds.*\(1, 2\)"):
        forger.return_tuple_keys()
    assert forger.ping() == 1


def test_a_compartment_returning_too_many_int_keys_gets_a_value_error_and_lives(
    forger: Any,
) -> None:
    assert len(forger.return_many_int_keys(4096)) == 4096  # the budget: one map this big
    with pytest.raises(ValueError, match="too many int/float dict keys"):
        forger.return_many_int_keys(4097)
    assert forger.ping() == 1


# -- decode time against frame size ------------------------------------------------------


def _reply(packed_result: bytes) -> bytes:
    return b"\x94\x01\x01\xc0" + packed_result


def _decode_seconds(small: bytes, large: bytes) -> tuple[float, float]:
    """The fastest of five decodes of each (refused or not), taken in turns: noise only
    ever adds time. The collector is held off: its passes scale with the suite's heap."""
    best = [float("inf"), float("inf")]
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            for which, frame in enumerate((small, large)):
                best[which] = min(best[which], _one_decode(frame))
    finally:
        gc.enable()
    return best[0], best[1]


def _one_decode(frame: bytes) -> float:
    decoder = FrameDecoder(max_message=64 * MiB, name="compartment")
    started = time.perf_counter()
    with contextlib.suppress(ProtocolError):
        decoder.feed(frame)
    elapsed = time.perf_counter() - started
    decoder.close()
    return elapsed


_WORST_CASES: dict[str, Callable[[int], bytes]] = {
    "tuple keys sharing one hash": lambda n: packed_map(list(colliding_pairs(n))),
    "int keys sharing probe paths": lambda n: packed_map(int_keys_sharing_probe_paths(n)),
}
_SIZES = {
    "tuple keys sharing one hash": 8000,
    "int keys sharing probe paths": 200_000,
}


@_SLOW_BUILD
@pytest.mark.parametrize("case", sorted(_WORST_CASES))
def test_decode_time_of_a_worst_case_frame_grows_linearly_with_its_size(case: str) -> None:
    n = _SIZES[case]
    small, large = _reply(_WORST_CASES[case](n)), _reply(_WORST_CASES[case](4 * n))
    assert 3.5 < len(large) / len(small) < 4.5
    ratio = float("inf")
    for _ in range(3):  # a busy machine can slow one round; a quadratic decode is slow in all
        small_seconds, large_seconds = _decode_seconds(small, large)
        ratio = min(ratio, large_seconds / small_seconds)
        if ratio < 8:
            break
    # Linear is 4; quadratic is 16 (the original code took 16-20x on the first two).
    assert ratio < 8, f"{case}: 4x the frame took {ratio:.1f}x the time"
