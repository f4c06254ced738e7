"""Learn-mode compartments whose calls carry hostile text into the generated policy."""

from __future__ import annotations

import os
import threading

from compartments import compartment


@compartment(learn=True)
def open_paths(paths: list[str]) -> int:
    """Open each path (they need not exist: learn mode lets the call run and records it)."""
    opened = 0
    for index, path in enumerate(paths):
        # A different flag per path: each call is its own line in the policy's comments.
        flags = (os.O_NONBLOCK if index % 2 else 0) | (os.O_NOFOLLOW if index % 3 else 0)
        try:
            os.close(os.open(path, flags))
            opened += 1
        except OSError:
            pass
    return opened


@compartment(learn=True)
def start_a_thread() -> int:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return 1
