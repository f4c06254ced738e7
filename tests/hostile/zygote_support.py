"""A zygote of one test's own, so the test controls when and from where it starts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import compartments._parent._supervisor as supervisor


@contextlib.contextmanager
def own_zygote() -> Iterator[None]:
    """The next compartment starts a new zygote, from whichever thread starts it, with
    the parent's stdio of that moment. Compartments of other tests keep the zygote they
    have; this one is closed on the way out, after the test closed its compartments."""
    saved = supervisor._zygote
    supervisor._zygote = None
    try:
        yield
    finally:
        ours, supervisor._zygote = supervisor._zygote, saved
        if ours is not None:
            ours.close()
