"""A compartment's life, in the forked child: harden → set up → seal → serve → exit."""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import resource
import signal
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from .._isolation._isolate import Isolate
from .._policy._landlock import enter_private_domain
from .._policy._rules import ruleset_from_data
from .._privileges import drop_capabilities, set_no_new_privs
from .._wire import _decoder, _frames, _traceback
from .._wire._channel import Channel
from .._wire._frames import Fd, PeerRef
from ..errors import LandlockError, ProtocolError
from ..rulesets.runtime import (
    IMPORT_FD_LIMIT,
)
from . import _external, _log_forward, _sealed_stdio
from ._peers import channel_from_fd, peer_timeout, set_peer_timeout, with_peers
from ._sealing import seal
from ._server import Server
from ._target import import_target_module

__all__ = ["close_spec_fds", "run", "warm_sources"]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)


def close_spec_fds(spec: dict[str, Any]) -> None:
    """Drop the zygote's copies of the fds a spawned child now owns."""
    for value in _fd_carriers(spec):
        (value.fd if isinstance(value, PeerRef) else value).close()


def _fd_carriers(spec: dict[str, Any]) -> Iterable[Fd | PeerRef]:
    """The fds a spawn spec carries (channel, stdio), or a ``$start`` request's arguments."""
    values = [spec.get("channel"), spec.get("stdout"), spec.get("stderr")]
    values += [*spec.get("args", ()), *spec.get("kwargs", {}).values()]
    return [v for v in values if isinstance(v, (Fd, PeerRef))]


def _own_stdio(spec: dict[str, Any]) -> None:
    """Our own output pipes on fds 1 and 2; stdin stays the zygote's /dev/null.

    stdout is buffered as it would be on the parent's own stdout: by line when that is a
    terminal, by block otherwise (so a print without a stdout grant fails only when it
    is flushed, as it always has)."""
    for key, target in (("stdout", 1), ("stderr", 2)):
        fd = spec.get(key)
        if isinstance(fd, Fd):
            os.dup2(fd.fileno(), target)
            fd.close()
    if spec.get("line_buffered") is True:
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _harden(zygote_pid: int, *, isolated: bool = False) -> None:
    """Die with the zygote, never regain privileges, leave no core file, and be out of
    every process's ptrace reach but the parent's (and root's).

    A compartment stays dumpable, so that a parent of the same uid can read its memory
    for violation reports (the path of a denied open, a connect address), because it is
    put into a Landlock domain of its own first: a process in a domain may ptrace, read
    ``/proc/<pid>/mem`` of, or ``process_vm_readv`` only processes in its own or a
    nested domain, so siblings and the zygote are out of reach. RLIMIT_CORE is 0 (hard),
    so no core file ever holds its memory. Where no such domain is possible (no Landlock,
    or an Isolate on Landlock ABI < 6, whose mounts a filesystem domain would forbid) it
    is made non-dumpable instead, and a parent without CAP_SYS_PTRACE then reports
    paths as ``?``. Either way, other processes of the same uid outside Landlock (the
    user's own programs) could ptrace a dumpable compartment, as they can the parent.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != zygote_pid:
        os._exit(1)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    set_no_new_privs()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # single-threaded here, before any setup code: the domain binds the whole child
        private = enter_private_domain(mounts_needed=isolated)
    except LandlockError:
        private = False
    if private:
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IMPORT_FD_LIMIT:  # the channel and import blocks must fit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, already gone
                os.close(fd)


def _resolve(spec: dict[str, Any]) -> Any:
    target: Any = import_target_module(str(spec["module"]))
    for part in str(spec["qualname"]).split("."):
        target = getattr(target, part)
    return target


def _warm_sources(target: Any) -> None:
    warm_sources(sys.modules.get(getattr(target, "__module__", ""), None))


def warm_sources(module: Any) -> None:
    """Cache the sources of ``module`` and the framework for tracebacks after the seal
    (the zygote does it before forking, so a compartment mostly finds them cached)."""
    modules = [module]  # the framework's modules are loaded by now: we are running in them
    modules += [m for name, m in sys.modules.items() if name.partition(".")[0] == "compartments"]
    _traceback.warm_linecache([m for m in modules if m is not None])


class _PlainTarget:
    """An undecorated function or class run as a compartment (a Pool worker, ``learn``)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.is_class = inspect.isclass(target)
        self.setup = None
        self.rules: tuple[Any, ...] = ()


class _Compartment:
    """What the child serves: the function or the instance, plus the control methods."""

    def __init__(self, spec: dict[str, Any], server_channel: Channel) -> None:
        self.name = str(spec["name"])
        self.max_message = int(spec["max_message"])
        set_peer_timeout(spec.get("timeout"))
        self.primary = server_channel
        self.server: Server | None = None
        resolved = _resolve(spec)
        self.definition = getattr(resolved, "_definition", None) or _PlainTarget(resolved)
        self.target = self.definition.target
        self.instance: Any = None
        sent = spec.get("rules")
        self.sent_rules = None if sent is None else [ruleset_from_data(r) for r in sent]

    def set_up(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        args = [with_peers(a, self.max_message) for a in args]
        kwargs = {k: with_peers(v, self.max_message) for k, v in kwargs.items()}
        if self.definition.is_class:
            self.instance = self.target(*args, **kwargs)
        elif self.definition.setup is not None:
            self.definition.setup()

    def rules(self) -> Iterable[Any]:
        if self.sent_rules is not None:
            return self.sent_rules
        rules = self.definition.rules
        if callable(rules):
            return list(rules(self.instance) if self.definition.is_class else rules())
        return list(rules)

    def handle(self, method: str, params: list[Any], channel: Channel) -> Any:
        if method[0] == "$":  # the decoder lets no empty method through
            if channel is not self.primary:
                raise PermissionError(f"`{method}` may only come from the parent")
            return self._control(method, params)
        try:
            return self._call(method, params)
        finally:  # what the call printed goes out now (or is refused, and reported), and
            _sealed_stdio.flush()  # so does the count of log records it dropped
            _log_forward.flush_drops()

    def _call(self, method: str, params: list[Any]) -> Any:
        # _split_params inline: this runs for every call
        if len(params) != 2 or type(params[0]) is not list or type(params[1]) is not dict:
            _split_params(method, params)  # raises, naming the call
        args, kwargs = params
        if args and PeerRef in map(type, args):
            args = [with_peers(a, self.max_message) for a in args]
        if kwargs:
            if not _STR.issuperset(map(type, kwargs)):
                _split_params(method, params)
            if PeerRef in map(type, kwargs.values()):
                kwargs = {k: with_peers(v, self.max_message) for k, v in kwargs.items()}
        if self.instance is None:
            if method != "__call__":
                raise AttributeError(f"function compartment `{self.name}` has only __call__")
            return self.target(*args, **kwargs)
        if method[0] == "_":
            raise AttributeError(f"`{method}` is private to compartment `{self.name}`")
        return getattr(self.instance, method)(*args, **kwargs)

    def _control(self, method: str, params: list[Any]) -> Any:
        if method == "$start":
            return os.getpid()
        if method == "$attach":
            fd, peer_name, *served = params
            if not isinstance(fd, Fd) or not isinstance(peer_name, str) or len(served) > 1:
                raise TypeError("$attach takes an Fd, a name and, for a served client, options")
            assert self.server is not None
            if served:
                self._attach_client(fd, peer_name, served[0])
                return None
            self.server.add_channel(
                channel_from_fd(fd, peer_name), peer_name, drain_timeout=peer_timeout()
            )
            return None
        raise AttributeError(f"unknown control method `{method}`")

    def _attach_client(self, fd: Fd, name: str, data: object) -> None:
        """A client of ``compartments.serve()``: its own line, on its own terms."""
        assert self.server is not None
        options = _external.LineOptions(data, self.max_message)
        channel = channel_from_fd(fd, name, _external.ExternalChannel)
        assert isinstance(channel, _external.ExternalChannel)
        channel.sentinel = options.sentinel
        function = None if self.definition.is_class else getattr(self.target, "__name__", None)
        decoder = _external.ExternalDecoder(
            max_message=options.max_message, name=name, function=function
        )
        self.server.add_channel(
            channel, name, drain_timeout=options.drain_timeout, decoder=decoder,
            encoder=_external.ExternalEncoder(name, options),
        )  # fmt: skip


_STR = frozenset({str})


def _split_params(method: str, params: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    if (
        len(params) != 2
        or type(params[0]) is not list
        or type(params[1]) is not dict
        or (params[1] and not all(type(k) is str for k in params[1]))
    ):
        raise TypeError(f"call `{method}`: params must be [args list, kwargs map]")
    return params[0], params[1]


def run(spec: dict[str, Any], zygote_pid: int) -> NoReturn:
    """The whole life of a compartment process. Never returns."""
    code = 0
    try:
        _harden(zygote_pid, isolated=spec.get("isolate") is not None)
        _own_stdio(spec)
        primary = channel_from_fd(spec["channel"], "parent")
        keep = {0, 1, 2, primary.fileno()}
        _close_all_but(keep)
        start = _receive_start(primary, int(spec["max_message"]))
        _log_forward.forward_records(primary, spec.get("log_level"))
        try:
            args, kwargs = _split_params("$start", start.params)
            keep.update(
                (v.fd if isinstance(v, PeerRef) else v).fileno()
                for v in _fd_carriers({"args": args, "kwargs": kwargs})
            )
            compartment = _Compartment(spec, primary)
            if spec.get("isolate") is not None:  # namespaces + tmpfs root; we become pid 2
                _warm_sources(compartment.target)  # the sources stay outside
                Isolate.from_data(spec["isolate"]).enter(keep)
            compartment.set_up(args, kwargs)
            del args, kwargs
            _warm_sources(compartment.target)
            # Setup may have needed root's powers (a low port); the sealed code never does.
            drop_capabilities()
            _sealed_stdio.flush()  # setup's output goes out while it still may
            if spec.get("unsealed_for_benchmarks") is True:
                primary.send(*_frames.encode_notification("$listener", [None, ""]))
            else:
                seal(compartment.rules(), primary, listener=spec.get("listener") is not False)
        except Exception as exc:
            _report_setup_failure(primary, start.msgid, exc)
            _exit(1)
        primary.send(*_frames.encode_response(start.msgid, None, os.getpid()))
        server = Server(primary, compartment.handle, max_message=compartment.max_message)
        compartment.server = server
        server.serve_forever()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        code = 70
    _exit(code)


def _receive_start(primary: Channel, max_message: int) -> _frames.Request:
    """The parent's first request, ``$start`` with the constructor's [args, kwargs]: they
    come on our own channel, after the fork, so no zygote ever held them."""
    decoder = _decoder.FrameDecoder(max_message=max_message, name="parent", from_parent=True)
    while primary.receive_into(decoder):
        message = decoder.next_message()
        if message is None:
            continue
        if (
            type(message) is not _frames.Request
            or message.method != "$start"
            or decoder.next_message() is not None
            or not decoder.between_frames
        ):
            raise ProtocolError("the parent's first message must be `$start`, alone")
        return message
    raise SystemExit(1)  # the parent gave up before starting us


def _report_setup_failure(primary: Channel, msgid: int, exc: BaseException) -> None:
    """Answer the parent's ``$start`` with the setup error, then stop."""
    data, fds = _frames.encode_response(msgid, _frames.encode_error(exc), None)
    primary.send(data, fds)


def _exit(code: int) -> NoReturn:
    _sealed_stdio.flush()  # stdout may be denied by the policy
    os._exit(code)
