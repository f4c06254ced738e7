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

This module is the caller's side: the arguments, which process forks when, and reading
what comes back.  What each process of a run does is :mod:`._processes`, the long-lived
variant :mod:`._entering`, the frames that carry the result :mod:`._results`; the Linux
calls themselves (unshare, the id maps, the mounts that build the root, pivot_root) live
in :mod:`._namespaces`, where :class:`Bind` and :func:`runtime_binds` come from too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from ..errors import UnsupportedError
from ._entering import entered_init, shim
from ._namespaces import (
    Bind,
    Plan,
    build_root,
    pivot_into,
    pivot_root_number,
    remove_mount_point,
    runtime_binds,
    tmpfs_size_option,
    undo_mount_point,
    unshare_namespaces,
    write_id_maps,
)
from ._processes import close_fds_except, die_with_parent, outer
from ._results import IsolateResult, IsolateSetupError, read_result

__all__ = ["Bind", "Isolate", "IsolateResult", "IsolateSetupError", "runtime_binds"]


BindSpec = Bind | str | tuple[str, str]


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
            shim(init, status_r, status_w)
        entered_init(status_r, status_w)  # returns in the forked pid 2 only
        self._build_inside(plan, parent_fd, keep)

    def _build_inside(self, plan: Plan, parent_fd: int, keep: set[int]) -> None:
        stage = "close fds"
        try:
            die_with_parent(None)
            close_fds_except(keep | {parent_fd})
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
                outer(plan, caller, control_w, out_w, err_w, lambda: func(*args, **kwargs))
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
        return read_result(bytes(buffers[control_r]), outer_status, bytes(buffers[out_r]),
                       bytes(buffers[err_r]), timed_out)


