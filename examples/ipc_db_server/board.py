"""The parent: start the Database and the WebServer, run the clients, show the policies.

Readiness needs no sleeps: a compartment's constructor returns only after its setup ran
and its seal was applied (the child answers the parent's first call after sealing), so
when ``WebServer(...)`` returns, the port is bound and known; ``start()`` then lets it
accept.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from compartments import Proxy, RuleSet, SafetyContext, Served, control, serve
from compartments._policy._landlock import abi_version
from compartments.rulesets.runtime import compartment_runtime

from .client import LANDLOCK_NET_ABI, ReadClient, WriteClient, client_rules
from .database import Database, database_rules_for
from .reader import READ_ONE_LINER, BoardReader
from .webserver import WEB_SERVER_RULES, WebServer

__all__ = [
    "Board",
    "CompartmentPolicy",
    "run_demo",
    "sealed_context",
    "show_policies",
    "start",
]

HOST = "127.0.0.1"
MESSAGES = ("hello", "extrasafe")
#: The framework's own RuleSets, enabled in every compartment.
RUNTIME_RULESETS = frozenset({
    "BasicCapabilities", "CPythonRuntime", "CompartmentRuntime", "ImportRootsRuntime",
    "SelfSignals", "TerminalQuery",
})  # fmt: skip
#: Syscalls worth naming when they are denied.
NOTABLE = (
    "open", "openat", "socket", "connect", "bind", "listen", "accept4", "execve", "clone",
    "fork", "unlink", "ptrace", "mount",
)  # fmt: skip


def start(compartment_class: Any, *args: Any, **kwargs: Any) -> Proxy:
    """Start a compartment. (Type checkers see the decorated class; calling it gives a
    Proxy to an instance living in its own sealed process.)"""
    proxy = compartment_class(*args, **kwargs)
    if not isinstance(proxy, Proxy):
        raise TypeError(f"{compartment_class!r} is not a compartment class")
    return proxy


def sealed_context(rulesets: Sequence[RuleSet]) -> SafetyContext:
    """The policy a compartment sealed with these RuleSets runs under: the RuleSets plus
    the runtime's own (its channels, reading the import roots, signals to itself), as the
    child builds it before sealing."""
    context = SafetyContext()
    for ruleset in rulesets:
        context.enable(ruleset)
    for runtime in compartment_runtime(os.getpid()):  # the child's pid, in the child
        context.enable_yielding(runtime)
    return context


@dataclass
class CompartmentPolicy:
    name: str
    role: str
    rulesets: list[RuleSet]
    landlock: str = ""

    @property
    def context(self) -> SafetyContext:
        return sealed_context(self.rulesets)

    def summary(self) -> list[str]:
        """Short lines: which RuleSets grant what, and which notable syscalls are denied."""
        allowed = self.context.allowed_syscalls()
        by_ruleset: dict[str, list[str]] = {}
        for syscall, grants in allowed.items():
            for condition, source in grants:
                if source not in RUNTIME_RULESETS:
                    mark = "*" if condition else ""
                    by_ruleset.setdefault(source, []).append(syscall + mark)
        lines = [
            f"{ruleset.name}: {' '.join(sorted(set(by_ruleset.get(ruleset.name, []))))}"
            if by_ruleset.get(ruleset.name)
            else f"{ruleset.name}: nothing"
            for ruleset in self.rulesets
        ]
        lines.append("runtime (every compartment): memory, signals to itself, futexes, exit, "
                     "close, its RPC channels (fds 64-127 only), reading the stdlib and "
                     "site-packages the parent opens for it (fds 128-191 only)")
        if self.landlock:
            lines.append(f"Landlock: {self.landlock}")
        denied = [name for name in NOTABLE if name not in allowed]
        lines.append(f"denied (EPERM): {' '.join(denied)}, and everything not listed")
        return lines


def stop(proxy: Any) -> None:
    """The class's own close() (the HTTP loop ends, the database checkpoints), then the
    child: compartments.control(proxy).close() sends EOF, then SIGKILL after a grace."""
    try:
        proxy.close()
    finally:
        control(proxy).close()


class Board:
    """The Database and the WebServer, started and stopped together; with
    ``read_socket``, also the BoardReader, served to other processes on that path."""

    def __init__(
        self,
        data_dir: str,
        host: str = HOST,
        port: int = 0,
        access_log: bool = False,
        read_socket: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.db = start(Database, data_dir)  # returns once SQLite is open and the seal applied
        self.reader: Proxy | None = None
        self.read_api: Served | None = None
        try:
            self.web = start(WebServer, self.db, host, port, access_log=access_log)
            self.port: int = self.web.start()
            if read_socket is not None:
                self.reader = start(BoardReader, self.db)
                self.read_api = serve(self.reader, read_socket)
        except BaseException:
            self.close()
            raise
        self.host = host
        self.files: dict[str, int] = self.db.held_files()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def policies(self) -> list[CompartmentPolicy]:
        clients = client_rules(self)
        pinned = (
            f"TCP connect to port {self.port} only"
            if abi_version() >= LANDLOCK_NET_ABI
            else "not available on this kernel (ABI < 4): any TCP port"
        )
        files = ", ".join(f"{role}=fd {fd}" for role, fd in sorted(self.files.items()))
        return [
            CompartmentPolicy(
                "Database", f"SQLite, its own fds only ({files})", database_rules_for(self.files)
            ),
            CompartmentPolicy(
                "WebServer", f"HTTP on {self.url}, sockets it has only", list(WEB_SERVER_RULES)
            ),
            CompartmentPolicy("WriteClient/ReadClient", "TCP clients only", clients, pinned),
        ]

    def close(self) -> None:
        """Stop serving the read API, the web server (its HTTP thread ends), then the
        database (checkpoint)."""
        try:
            if self.read_api is not None:
                self.read_api.close()
            if self.reader is not None:
                control(self.reader).close()
            web = getattr(self, "web", None)
            if web is not None:
                stop(web)
        finally:
            stop(self.db)

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def data_directory(given: str | None) -> Iterator[str]:
    if given is not None:
        yield os.path.abspath(given)
        return
    with tempfile.TemporaryDirectory(prefix="board-") as temporary:
        yield temporary


def _exited(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_demo(out: TextIO, data_dir: str | None = None) -> int:
    """extrasafe's main(): start, write twice, read back, stop. 0 when it matched."""
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("A message board in sealed compartments (extrasafe's ipc_server_with_database)")
    with data_directory(data_dir) as directory:
        board = Board(directory, read_socket=os.path.join(directory, "board.sock"))
        assert board.reader is not None and board.read_api is not None
        db_pid, web_pid = control(board.db).pid, control(board.web).pid
        reader_pid = control(board.reader).pid
        pids: list[int | None] = [db_pid, web_pid, reader_pid]
        try:
            policies = {p.name: p for p in board.policies()}
            say(f"\n[Database  pid {db_pid}] opened {os.path.join(directory, 'board.db')}"
                " (WAL, synchronous=FULL) and prepared its statements, then sealed itself")
            _show(say, policies["Database"])
            say(f"\n[WebServer pid {web_pid}] bound {board.url} and received a direct "
                "channel to the Database, then sealed itself")
            _show(say, policies["WebServer"])
            say("\n[clients] each in its own compartment, sealed before its first request")
            _show(say, policies["WriteClient/ReadClient"])
            say()
            for message in MESSAGES:
                with start(WriteClient, HOST, board.port) as writer:
                    pids.append(writer_pid := control(writer).pid)
                    answer = writer.post(message)
                    say(f"[WriteClient pid {writer_pid}] POST /write {message!r} -> {answer!r}")
            expected = "\n".join(MESSAGES)
            with start(ReadClient, HOST, board.port) as reader:
                pids.append(control(reader).pid)
                try:
                    text = reader.check(expected)
                except ValueError as exc:
                    say(f"[ReadClient  pid {control(reader).pid}] MISMATCH: {exc}")
                    return 1
                say(f"[ReadClient  pid {control(reader).pid}] GET /read -> {text!r}: as expected")
            say(f"\n[BoardReader pid {reader_pid}] sealed (nothing but its line to the "
                f"Database), served to other processes on {board.read_api.path}")
            read = subprocess.run(
                [sys.executable, "-c", READ_ONE_LINER, board.read_api.path],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            newest = list(reversed(MESSAGES))
            if read.returncode != 0 or read.stdout.strip() != repr(newest):
                say(f"[second process] MISMATCH: {read.stdout.strip()!r} {read.stderr[-300:]}")
                return 1
            say(f"[second process] msgpack-RPC latest(10) -> {read.stdout.strip()}: as expected")
        finally:
            board.close()
        gone = all(_exited(pid) for pid in pids)
        say(f"\n[parent] stopped WebServer and Database; "
            f"{'no compartment process left' if gone else 'SOME PROCESSES REMAIN'}")
        return 0 if gone else 1


def _show(say: Any, policy: CompartmentPolicy) -> None:
    say(f"    what it is: {policy.role}")
    for line in policy.summary():
        say(f"    {line}")


def show_policies(out: TextIO) -> int:
    """Every compartment's allowed syscalls, as a table, from the live policies."""
    with data_directory(None) as directory, Board(directory) as board:
        for policy in board.policies():
            print(f"== {policy.name}: {policy.role}", file=out)
            print(f"   RuleSets: {', '.join(r.name for r in policy.rulesets)}", file=out)
            if policy.landlock:
                print(f"   Landlock: {policy.landlock}", file=out)
            print(policy.context.describe(), file=out)
            print(file=out)
    out.flush()
    return 0
