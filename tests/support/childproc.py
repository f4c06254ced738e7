"""Run a test body in a forked child and read its outcome from the exit status alone.

A sealed child may be denied every syscall but exit_group, so the exit status is the one
reporting channel that works under any filter under test.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

_OK = 0
_OTHER_ERROR = 99
_ERRNO_BASE = 100  # exit status 100 + errno for an OSError
_ASSERTION = 98


def run_in_child(body: Callable[[], object], timeout: float = 20.0) -> str:
    """Fork, run ``body`` and return "ok", an errno name ("EPERM"), "AssertionError",
    "error" or a signal name ("SIGSYS")."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = _OTHER_ERROR
        try:
            body()
            code = _OK
        except AssertionError:
            code = _ASSERTION
        except OSError as exc:
            code = _ERRNO_BASE + (exc.errno or 0) if (exc.errno or 0) < 150 else _OTHER_ERROR
        except BaseException:
            code = _OTHER_ERROR
        finally:
            os._exit(code)
    return wait_outcome(pid, timeout)


def wait_outcome(pid: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    if code == _OK:
        return "ok"
    if code == _ASSERTION:
        return "AssertionError"
    if code >= _ERRNO_BASE:
        return errno.errorcode.get(code - _ERRNO_BASE, str(code))
    return "error"
