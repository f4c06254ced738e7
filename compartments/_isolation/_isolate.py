"""Isolate: run one Python callable inside fresh Linux namespaces.

extrasafe's Isolate, done from Python.  ``Isolate(...).run(func, *args)`` forks; the
calling process itself never unshares anything.  Three processes are involved:

* **outer** (child of the caller): sets PDEATHSIG, closes inherited fds, unshares the
  user, mount, PID, IPC, UTS (and network) namespaces, maps uid/gid 0 inside to the
  caller's uid/gid outside (setgroups denied), then forks ``init``.
* **init** (pid 1 of the new PID namespace): builds the new root on a size-limited
  tmpfs (bind mounts, optional /proc and device nodes), pivots into it, sets the
  hostname, forks the worker and reaps everything until the worker ends.  A separate
  pid 1 keeps the worker free of init's special signal rules (default-action signals
  from inside the namespace are ignored by pid 1) and reaps orphans.
* **worker** (pid 2): drops every capability (bounding, ambient, then capset to
  empty), sets no_new_privs and calls ``func``.

Nothing is re-executed: the worker is a fork of the caller, so every module the
caller already imported keeps working.  Only *lazy* imports and file reads need
files inside; by default (``runtime=True``) the interpreter's prefixes, /usr and the
loader's directories are bound read-only so those work too.

Results travel back through one pipe as tagged frames: the worker's return value
(msgpack-native values only, never pickle), the wait status, or a setup error.
The tmpfs root's mount point is a host temporary directory, removed afterwards.

``Isolate(...).enter(keep_fds)`` is the long-lived variant (``@compartment(isolate=...)``):
the calling process becomes the outer *shim* and returns from ``enter`` as pid 2; see
"entering" below.

This module is the choreography: which process forks when, what each one does in
which order, and what travels back to the caller.  The Linux calls themselves
(unshare, the id maps, the mounts that build the root, pivot_root) live in
:mod:`._namespaces`, where :class:`Bind` and :func:`runtime_binds` come from too.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import io
import os
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn, cast

import msgpack

from .._privileges import drop_capabilities, set_no_new_privs
from ..errors import CompartmentsError, UnsupportedError
from ._namespaces import (
    Bind,
    Plan,
    build_root,
    pivot_into,
    pivot_root_number,
    remove_mount_point,
    runtime_binds,
    set_parent_death_signal,
    tmpfs_size_option,
    undo_mount_point,
    unshare_namespaces,
    write_id_maps,
)

__all__ = ["Bind", "Isolate", "IsolateResult", "IsolateSetupError", "runtime_binds"]


class IsolateSetupError(CompartmentsError, OSError):
    """Building the isolated environment failed before the callable ran."""


_SETUP_FAILED = 125  # exit code of a process whose setup failed (as in podman/env)


# --- public types -------------------------------------------------------------------

BindSpec = Bind | str | tuple[str, str]


@dataclass(frozen=True)
class IsolateResult:
    """How the callable ended, what it printed, and what it returned."""

    status: int
    """Raw wait status (os.waitpid) of the worker."""
    stdout: bytes
    stderr: bytes
    value: object = None
    timed_out: bool = False

    @property
    def returncode(self) -> int:
        """Exit code, or -N when killed by signal N (subprocess's convention)."""
        return os.waitstatus_to_exitcode(self.status)

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out


# --- the arguments ------------------------------------------------------------------


def _normalise_binds(binds: Mapping[str, str] | Iterable[BindSpec],
                     writable_binds: Mapping[str, str] | Iterable[BindSpec]) -> list[Bind]:
    def to_binds(specs: Mapping[str, str] | Iterable[BindSpec], writable: bool) -> list[Bind]:
        items: Iterable[BindSpec] = specs.items() if isinstance(specs, Mapping) else specs
        result = []
        for spec in items:
            if isinstance(spec, Bind):
                result.append(spec)
            elif isinstance(spec, str):
                result.append(Bind(spec, spec, writable))
            else:
                result.append(Bind(spec[0], spec[1], writable))
        return result

    chosen = to_binds(binds, False) + to_binds(writable_binds, True)
    for bind in chosen:
        target = bind.target
        if not os.path.isabs(target) or os.path.normpath(target) != target.rstrip("/") or \
                target == "/":
            raise ValueError(f"bind target {target!r} must be an absolute, normalised path "
                             "below /")
        if not os.path.exists(bind.src):
            raise FileNotFoundError(errno.ENOENT, "bind source does not exist", bind.src)
    return chosen


# --- the control channel ------------------------------------------------------------

_VALUE, _STATUS, _SETUP_ERROR, _UNSUPPORTED = b"V", b"S", b"E", b"U"
_HEADER = struct.Struct("<cI")


def _send(fd: int, tag: bytes, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(tag, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _send_error(fd: int, exc: BaseException, stage: str) -> None:
    number = exc.errno if isinstance(exc, OSError) and exc.errno else 0
    tag = _UNSUPPORTED if stage == "unshare" else _SETUP_ERROR
    text = f"{stage}: {exc}".encode("utf-8", "backslashreplace")
    _send(fd, tag, struct.pack("<i", number) + text)


def _frames(data: bytes) -> list[tuple[bytes, bytes]]:
    frames = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        tag, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        frames.append((tag, data[offset:offset + length]))
        offset += length
    return frames


# --- processes ----------------------------------------------------------------------


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL us when our parent goes; ``parent=None`` where getppid() cannot tell."""
    set_parent_death_signal(signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(_SETUP_FAILED)


def _close_fds_except(keep: Iterable[int]) -> None:
    # Never call closerange(n, n): CPython turns it into close_range(n, UINT_MAX).
    start = 0
    for fd in sorted(set(keep)):
        if fd > start:
            os.closerange(start, fd)
        start = max(start, fd + 1)
    os.closerange(start, max(os.sysconf("SC_OPEN_MAX"), start + 1))


def _outer(plan: Plan, caller: int, control: int, stdout: int, stderr: int,
           call: Callable[[], object]) -> NoReturn:
    """First child: unshare, map ids, fork init and pass on its fate."""
    stage = "setup"
    try:
        _die_with_parent(caller)
        if plan.capture:
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
        _close_fds_except({0, 1, 2, control, *plan.pass_fds})
        uid, gid = os.getuid(), os.getgid()
        stage = "unshare"
        unshare_namespaces(plan.network)
        stage = "uid/gid map"
        write_id_maps(uid, gid)
        stage = "fork init"
        init = os.fork()
        if init == 0:
            _init(plan, control, call)
        _, status = os.waitpid(init, 0)
        if status != 0:  # init died before reporting the worker's status
            _send(control, _STATUS, struct.pack("<i", status))
    except BaseException as exc:
        _send_error(control, exc, stage)
        os._exit(_SETUP_FAILED)
    os._exit(0)


def _init(plan: Plan, control: int, call: Callable[[], object]) -> NoReturn:
    """pid 1 of the new namespace: build the root, start the worker, reap."""
    stage = "mount"
    try:
        _die_with_parent(None)  # the parent lives outside our PID namespace: getppid() == 0
        build_root(plan)
        stage = "pivot_root"
        pivot_into(plan.root, plan.pivot_root_nr)
        stage = "sethostname"
        socket.sethostname(plan.hostname)
        stage = "fork worker"
        worker = os.fork()
        if worker == 0:
            _worker(control, call)
        status = _reap_until(worker)
        _send(control, _STATUS, struct.pack("<i", status))
    except BaseException as exc:
        _send_error(control, exc, stage)
        os._exit(_SETUP_FAILED)
    os._exit(0)


def _reap_until(worker: int) -> int:
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == worker:
            return status


def _worker(control: int, call: Callable[[], object]) -> NoReturn:
    """pid 2: shed privileges, run the callable, send its value."""
    try:
        drop_capabilities()
        set_no_new_privs()
    except BaseException as exc:
        _send_error(control, exc, "drop privileges")
        os._exit(_SETUP_FAILED)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")
    if faulthandler.is_enabled():  # it may point at an fd we closed
        faulthandler.enable(sys.stderr)
    code = 0
    try:
        payload = msgpack.packb(call(), use_bin_type=True)
        _send(control, _VALUE, payload)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)


# --- entering: the calling process itself moves in (a compartment) ------------------
#
# ``Isolate.enter`` is for a process that must *keep running* isolated, e.g. a
# compartment's RPC server, rather than return one value.  CLONE_NEWPID only applies to
# children, so three processes take part, as in ``run``:
#
# * the **shim** is the process that called ``enter``: whoever supervises it (by pid or
#   pidfd) keeps supervising it.  It unshares, maps ids, forks ``init``, closes every fd
#   and waits; then it exits the way the isolated process did, dying of the same signal
#   if it was killed.  Any fatal signal sent to the shim (SIGKILL on a timeout) kills
#   init through PDEATHSIG, and init's death kills everything in the namespace.
# * **init** (pid 1) only reaps, and reports the isolated process's wait status to the
#   shim through a pipe (pid 1 cannot die of a signal it sends itself).
# * the **isolated process** (pid 2), forked from init, builds the root, pivots into it
#   and returns from ``enter``: the caller's code continues there with its fds intact
#   (``keep_fds``), still holding every capability of the new user namespace.  Being
#   pid 2 keeps the usual signal rules (pid 1 ignores its own SIGKILL, abort()...).


def _exit_like(status: int) -> NoReturn:
    """End this process the way the process with wait status ``status`` ended."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP have no handler
            signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default action is not to terminate
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else _SETUP_FAILED)


def _shim(init: int, status_r: int, status_w: int) -> NoReturn:
    """The entering process, outside the PID namespace: wait, then end like pid 2."""
    try:
        os.close(status_w)
        _close_fds_except({status_r})
        with contextlib.suppress(OSError, ValueError):
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # mirroring SIGSEGV dumps nothing
        _, init_status = os.waitpid(init, 0)
        os.set_blocking(status_r, False)
        try:
            report = os.read(status_r, _STATUS_SIZE)
        except BlockingIOError:
            report = b""
        status = struct.unpack("<i", report)[0] if len(report) == _STATUS_SIZE else init_status
    except BaseException:
        os._exit(_SETUP_FAILED)
    _exit_like(status)


_STATUS_SIZE = 4


def _entered_init(status_r: int, status_w: int) -> None:
    """pid 1: fork the isolated process (which returns) and reap until it ends."""
    try:
        os.close(status_r)
        _die_with_parent(None)  # the shim is outside our PID namespace: getppid() == 0
        poller = select.poll()
        poller.register(status_w, select.POLLOUT)
        if any(event & select.POLLERR for _, event in poller.poll(0)):
            os._exit(_SETUP_FAILED)  # the shim died before PDEATHSIG was armed
        worker = os.fork()
    except BaseException:
        os._exit(_SETUP_FAILED)
    if worker == 0:
        os.close(status_w)
        return
    try:
        _close_fds_except({status_w})
        status = _reap_until(worker)
        _send_status(status_w, status)
    except BaseException:
        os._exit(_SETUP_FAILED)
    os._exit(0)


def _send_status(fd: int, status: int) -> None:
    os.write(fd, struct.pack("<i", status))


# --- the caller's side --------------------------------------------------------------


def _drain(fds: dict[int, bytearray], pid: int, deadline: float | None) -> bool:
    """Read every fd to EOF; kill ``pid`` at the deadline.  True when it timed out."""
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            wait = None if deadline is None or timed_out else max(deadline - time.monotonic(), 0)
            events = selector.select(wait)
            if not events and not timed_out:
                os.kill(pid, signal.SIGKILL)  # init and the worker follow via PDEATHSIG
                timed_out = True
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if chunk:
                    fds[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
    return timed_out


class Isolate:
    """Run a callable in new user, mount, PID, IPC, UTS (and network) namespaces.

    ``binds`` are read-only; ``writable_binds`` are read-write.  Both take a mapping
    ``{host_path: inside_path}``, or an iterable of paths (same place inside), of
    ``(host, inside)`` pairs or of :class:`Bind`.  ``runtime=True`` also binds the
    interpreter and system libraries read-only (see :func:`runtime_binds`);
    ``devices=True`` binds /dev/null, zero, full, random and urandom.
    """

    def __init__(
        self,
        *,
        tmpfs_size: int | str = "16M",
        binds: Mapping[str, str] | Iterable[BindSpec] = (),
        writable_binds: Mapping[str, str] | Iterable[BindSpec] = (),
        network: bool = False,
        proc: bool = False,
        hostname: str = "compartment",
        runtime: bool = True,
        devices: bool = True,
        pass_fds: Iterable[int] = (),
        capture_output: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.tmpfs_size = tmpfs_size_option(tmpfs_size)
        self.binds = tuple(_normalise_binds(binds, writable_binds))
        self.network = network
        self.proc = proc
        self.hostname = hostname
        self.runtime = tuple(runtime_binds()) if runtime else ()
        self.devices = devices
        self.pass_fds = tuple(pass_fds)
        self.capture_output = capture_output
        self.timeout = timeout

    def to_data(self) -> dict[str, object]:
        """What :meth:`enter` needs, as msgpack-native data (see :meth:`from_data`)."""
        return {
            "tmpfs_size": self.tmpfs_size,
            "binds": [[bind.src, bind.dst, bind.writable] for bind in self.binds],
            "network": self.network,
            "proc": self.proc,
            "hostname": self.hostname,
            "runtime": list(self.runtime),
            "devices": self.devices,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, object]) -> Isolate:
        """Rebuild an Isolate from :meth:`to_data` (bind sources are checked again)."""
        kinds = {"tmpfs_size": str, "binds": list, "network": bool, "proc": bool,
                 "hostname": str, "runtime": list, "devices": bool}
        for key, kind in kinds.items():
            value = data.get(key)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise TypeError(f"isolate data: {key!r} must be a {kind.__name__}, "
                                f"got {value!r}")
        binds = []
        for item in cast(list[object], data["binds"]):
            if not (isinstance(item, list) and len(item) == 3
                    and isinstance(item[0], str) and isinstance(item[1], str)
                    and isinstance(item[2], bool)):
                raise TypeError(f"isolate data: bad bind {item!r}")
            binds.append(Bind(item[0], item[1], item[2]))
        runtime = cast(list[object], data["runtime"])
        if not all(isinstance(path, str) for path in runtime):
            raise TypeError("isolate data: runtime paths must be strings")
        isolate = cls(tmpfs_size=cast(str, data["tmpfs_size"]), binds=binds,
                      network=data["network"] is True, proc=data["proc"] is True,
                      hostname=cast(str, data["hostname"]), runtime=False,
                      devices=data["devices"] is True)
        isolate.runtime = tuple(cast(list[str], runtime))
        return isolate

    def enter(self, keep_fds: Iterable[int] = ()) -> None:
        """Move the calling process into the isolated environment and return there.

        Afterwards the caller runs as pid 2 of new user (uid/gid 0 inside, mapped to
        its own), mount, PID, IPC, UTS (and network) namespaces, rooted on the tmpfs
        with the binds; every fd but 0, 1, 2 and ``keep_fds`` is closed.  It still has
        all capabilities *of the new user namespace* (e.g. to bind a low port in its
        own network namespace): drop them with :func:`drop_capabilities` before
        running untrusted code.  The calling process itself becomes a shim that
        waits and then exits as the isolated process did (same code, same signal);
        killing the shim kills the whole namespace.  Only modules already imported
        (or under the ``runtime``/bind paths) can be imported afterwards.

        Must be called single-threaded.  Raises :class:`UnsupportedError` where user
        namespaces are unavailable and :class:`IsolateSetupError` when building the
        root fails (then inside already, in the pid-2 process).
        """
        pivot_root_nr = pivot_root_number()
        keep = {0, 1, 2, *keep_fds, *self.pass_fds}
        uid, gid = os.getuid(), os.getgid()
        root = tempfile.mkdtemp(prefix="compartments-isolate-")
        plan = Plan(root, self.tmpfs_size, self.runtime, self.binds, self.devices,
                     self.proc, self.hostname, self.network, tuple(keep), False,
                     pivot_root_nr)
        opened: list[int] = []
        try:
            opened.append(os.open(os.path.dirname(root), os.O_PATH | os.O_DIRECTORY
                                  | os.O_CLOEXEC))
            status_r, status_w = os.pipe()
            opened += [status_r, status_w]
            try:
                unshare_namespaces(self.network)
            except OSError as exc:
                err = exc.errno or 0
                hint = " (the process has other threads)" if err == errno.EINVAL else ""
                raise UnsupportedError(err, f"unshare: {os.strerror(err)}{hint}") from None
            try:
                write_id_maps(uid, gid)
            except OSError as exc:
                raise IsolateSetupError(exc.errno or errno.EPERM, f"uid/gid map: {exc}") from exc
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            init = os.fork()
        except BaseException:
            for fd in opened:
                os.close(fd)
            remove_mount_point(root)
            raise
        parent_fd = opened[0]
        if init:
            _shim(init, status_r, status_w)
        _entered_init(status_r, status_w)  # returns in the forked pid 2 only
        self._build_inside(plan, parent_fd, keep)

    def _build_inside(self, plan: Plan, parent_fd: int, keep: set[int]) -> None:
        stage = "close fds"
        try:
            _die_with_parent(None)
            _close_fds_except(keep | {parent_fd})
            stage = "mount"
            build_root(plan)
            stage = "pivot_root"
            pivot_into(plan.root, plan.pivot_root_nr)
            stage = "sethostname"
            socket.sethostname(plan.hostname)
        except OSError as exc:
            raise IsolateSetupError(exc.errno or errno.EINVAL, f"{stage}: {exc}") from exc
        finally:
            undo_mount_point(plan.root, parent_fd)
            os.close(parent_fd)

    def run(self, func: Callable[..., object], /, *args: object,
            **kwargs: object) -> IsolateResult:
        """Call ``func(*args, **kwargs)`` isolated; its value must be msgpack-native."""
        pivot_root_nr = pivot_root_number()
        root = tempfile.mkdtemp(prefix="compartments-isolate-")
        pipes: list[int] = []
        pid = 0
        try:
            control_r, control_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            pipes += [control_r, control_w, out_r, out_w, err_r, err_w]
            plan = Plan(root, self.tmpfs_size, self.runtime, self.binds, self.devices,
                         self.proc, self.hostname, self.network, self.pass_fds,
                         self.capture_output, pivot_root_nr)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            caller = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                _outer(plan, caller, control_w, out_w, err_w, lambda: func(*args, **kwargs))
            for fd in (control_w, out_w, err_w):
                os.close(fd)
                pipes.remove(fd)
            buffers = {control_r: bytearray(), out_r: bytearray(), err_r: bytearray()}
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            timed_out = _drain(buffers, pid, deadline)
            _, outer_status = os.waitpid(pid, 0)
            pid = 0
        finally:
            if pid:  # interrupted (e.g. KeyboardInterrupt): take the isolate down with us
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            for fd in pipes:
                os.close(fd)
            remove_mount_point(root)
        return _result(bytes(buffers[control_r]), outer_status, bytes(buffers[out_r]),
                       bytes(buffers[err_r]), timed_out)


def _result(control: bytes, outer_status: int, stdout: bytes, stderr: bytes,
            timed_out: bool) -> IsolateResult:
    status, value = None, None
    for tag, payload in _frames(control):
        if tag in (_SETUP_ERROR, _UNSUPPORTED):
            (number,) = struct.unpack_from("<i", payload)
            text = payload[4:].decode("utf-8", "replace")
            kind = UnsupportedError if tag == _UNSUPPORTED else IsolateSetupError
            detail = stderr.decode("utf-8", "replace").strip()
            raise kind(number or errno.EINVAL, text + (f"\n{detail}" if detail else ""))
        if tag == _VALUE:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        elif tag == _STATUS and status is None:
            (status,) = struct.unpack("<i", payload)
    return IsolateResult(outer_status if status is None else status, stdout, stderr,
                         value, timed_out)
