"""The seal: the policy a compartment seals with (its RuleSets, the runtime's, the import
roots), applied to every thread, with the violation listener handed to the parent.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

from .._policy import _roots
from .._policy._context import SafetyContext
from .._wire import _frames
from .._wire._channel import Channel
from .._wire._frames import Fd
from ..errors import LandlockError, UnsupportedError
from ..rulesets import SystemIO
from ..rulesets.runtime import (
    compartment_runtime,
)
from . import _sealed_imports, _stdio

__all__ = ["seal", "sealing_context"]


_NO_USER_NOTIFICATION = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBUSY)


def sealing_context(rules: Iterable[Any], pid: int) -> SafetyContext:
    """The policy a compartment seals with (and ``inspect`` shows): its RuleSets
    (``SystemIO.nothing()`` if none), the runtime's, and the import roots readable where
    Landlock restricts files."""
    ctx = SafetyContext().preload(codecs="none")  # the parent serves the import roots
    enabled = False
    for ruleset in rules:
        ctx.enable(ruleset)
        enabled = True
    if not enabled:
        ctx.enable(SystemIO.nothing())
    for runtime in compartment_runtime(pid):
        ctx.enable_yielding(runtime)
    ctx._readable_under_landlock(_roots.import_roots(), "ImportRootsRuntime")
    return ctx


def seal(rules: Iterable[Any], primary: Channel, *, listener: bool = True) -> None:
    """Apply the policy; hand the violation listener to the parent and keep no copy."""
    ctx = sealing_context(rules, os.getpid())  # our pid now: after an Isolate's fork
    _sealed_imports.prepare(listener=listener, granted=ctx._readable_paths())
    _stdio.forward_stdio(primary, {fd: ctx._allows("write", (fd, 0, 0, 0, 0, 0)) for fd in (1, 2)})
    if not listener:
        ctx.apply_to_all_threads()
        primary.send(*_frames.encode_notification("$listener", [None, ""]))
        return
    try:
        listener_fd = ctx.apply_with_listener()
    except (UnsupportedError, OSError) as exc:
        if isinstance(exc, LandlockError) or exc.errno not in _NO_USER_NOTIFICATION:
            raise
        ctx.apply_to_all_threads()
        _sealed_imports.not_served(f"no seccomp user notification: {exc}")
        primary.send(*_frames.encode_notification("$listener", [None, str(exc)]))
        return
    try:
        primary.send(*_frames.encode_notification("$listener", [Fd(listener_fd), ""]))
    finally:
        os.close(listener_fd)
