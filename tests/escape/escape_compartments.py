"""Compartments sealed for realistic jobs, and the attacks a compromised one would try.

Each attack runs inside the sealed child with real syscalls (stdlib calls, or ctypes
``syscall()`` for what the stdlib does not wrap) and reports, step by step, the errno it
got: 0 means the step SUCCEEDED, i.e. an escape. Everything an attack needs (ctypes,
syscall numbers, structs) is prepared at import, in the zygote, before any seal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
from collections.abc import Callable
from typing import Any

from compartments import compartment
from compartments._policy._seccomp import syscall_exists, syscall_number
from compartments.rulesets import Networking, SystemIO

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_NAMES = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kill", "tgkill", "tkill",
    "rt_sigqueueinfo", "pidfd_open", "pidfd_send_signal", "seccomp", "prctl", "unshare",
    "setns", "mount", "umount2", "chroot", "pivot_root", "io_uring_setup", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "personality",
    "vfork", "fork", "clone", "clone3", "memfd_create", "execveat", "connect", "bind",
    "socket", "fcntl", "ioctl", "dup3", "open_by_handle_at", "name_to_handle_at",
    "init_module", "finit_module", "kexec_load", "reboot", "setuid", "capset", "mknodat",
    "sendto",
)  # fmt: skip
NR = {name: syscall_number(name) for name in _NAMES if syscall_exists(name)}

SIGCHLD = int(signal.SIGCHLD)
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x20000, 0x40000000, 0x20000000
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206
F_SETOWN, F_SETSIG, F_SETOWN_EX, F_DUPFD = 8, 10, 15, 0
SIOCSIFNAME, TIOCSTI = 0x8923, 0x5412
AT_EMPTY_PATH = 0x1000
SECCOMP_SET_MODE_FILTER, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 22, 2
PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 4, 1, 38
SECCOMP_RET_ALLOW = 0x7FFF0000
READ_IMPLIES_EXEC = 0x0400000
X32_SYSCALL_BIT = 0x40000000
LINUX_REBOOT_BAD_MAGIC = 0  # a wrong magic: EINVAL if reboot() were reachable, never a reboot

#: The errno each compartment may get for a step: EPERM is the filter's answer.
DENIED = errno.EPERM


def _arg(value: Any) -> Any:
    return ctypes.c_long(value) if isinstance(value, int) else value


def raw(name: str, *args: Any) -> int:
    """syscall(name, args...): 0 on success, else the errno."""
    if name not in NR:
        return errno.ENOSYS
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(NR[name]), *(_arg(a) for a in args))
    return 0 if result >= 0 else ctypes.get_errno()


def raw_value(name: str, *args: Any) -> tuple[int, int]:
    """(return value, errno) of a raw syscall."""
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(NR[name]), *(_arg(a) for a in args)))
    return result, (ctypes.get_errno() if result < 0 else 0)


def _errno_of(action: Callable[[], object]) -> int:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_ALLOW_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, SECCOMP_RET_ALLOW))  # BPF_RET|BPF_K
ALLOW_ALL_PROGRAM = _SockFprog(1, ctypes.cast(_ALLOW_ALL, ctypes.POINTER(_SockFilter)))
_SCRATCH = ctypes.create_string_buffer(4096)
_EMPTY = ctypes.c_char_p(b"")
_ARGV = (ctypes.c_char_p * 2)(b"sh", None)


def _sockaddr_in(port: int) -> ctypes.Array[ctypes.c_char]:
    packed = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, bytes([127, 0, 0, 1]))
    return ctypes.create_string_buffer(packed + bytes(8), 16)


def _ifreq(name: bytes, new_name: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(struct.pack("16s16s8x", name, new_name), 40)


# -- the attacks ------------------------------------------------------------------------
#
# Each takes the context the test passes ({"parent", "sibling", "tmp", "victim", "own"})
# and returns {step: errno}; 0 would be an escape.

Steps = dict[str, int]


def _forkish(name: str, *args: Any) -> int:
    result, err = raw_value(name, *args)
    if result == 0:  # we are a child that must not exist: vanish at once
        os._exit(0)
    return err


def open_files(ctx: dict[str, Any]) -> Steps:
    return {
        "open(/etc/hostname)": _errno_of(lambda: open("/etc/hostname", "rb").close()),
        "os.open(O_CREAT|O_TRUNC)": _errno_of(
            lambda: os.close(
                os.open(os.path.join(ctx["tmp"], "created"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
            )
        ),
        "os.open(victim, O_WRONLY|O_TRUNC)": _errno_of(
            lambda: os.close(os.open(ctx["victim"], os.O_WRONLY | os.O_TRUNC))
        ),
        "open(/proc/parent/mem)": _errno_of(
            lambda: os.close(os.open(f"/proc/{ctx['parent']}/mem", os.O_RDWR))
        ),
        "open_by_handle_at": raw("open_by_handle_at", 0, _SCRATCH, 0),
        "name_to_handle_at": raw("name_to_handle_at", 0, _EMPTY, _SCRATCH, _SCRATCH, 0),
        "mknodat": raw("mknodat", -100, ctypes.c_char_p(b"/tmp/x"), 0o20600, 0),
    }


def parent_environment(ctx: dict[str, Any]) -> Steps:
    return {
        f"open(/proc/{who}/environ)": _errno_of(
            lambda pid=pid: open(f"/proc/{pid}/environ", "rb").close()
        )
        for who, pid in (("parent", ctx["parent"]), ("zygote", os.getppid()))
    }


def execute(ctx: dict[str, Any]) -> Steps:
    return {
        "os.execv(/bin/sh)": _errno_of(lambda: os.execv("/bin/sh", ["sh", "-c", "exit 0"])),
        "execveat(stdin, AT_EMPTY_PATH)": raw("execveat", 0, _EMPTY, _ARGV, _ARGV, AT_EMPTY_PATH),
    }


def fork_processes(ctx: dict[str, Any]) -> Steps:
    def os_fork() -> None:
        if os.fork() == 0:
            os._exit(0)

    return {
        "os.fork()": _errno_of(os_fork),
        "vfork": _forkish("vfork") if "vfork" in NR else DENIED,
        "fork": _forkish("fork") if "fork" in NR else DENIED,
        "clone(SIGCHLD)": _forkish("clone", SIGCHLD, 0, 0, 0, 0),
        "clone(CLONE_NEWUSER|CLONE_NEWPID)": _forkish(
            "clone", CLONE_NEWUSER | CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0
        ),
    }


def clone3_process(ctx: dict[str, Any]) -> Steps:
    args = ctypes.create_string_buffer(struct.pack("=QQQQQQQQ", 0, 0, 0, 0, SIGCHLD, 0, 0, 0), 64)
    return {"clone3(exit_signal=SIGCHLD)": _forkish("clone3", args, 64)}


def _socket(family: int, kind: int, proto: int = 0) -> Callable[[], object]:
    return lambda: socket.socket(family, kind, proto).close()


SOCKETS = {
    "AF_INET/STREAM": (socket.AF_INET, socket.SOCK_STREAM, 0),
    "AF_INET/DGRAM": (socket.AF_INET, socket.SOCK_DGRAM, 0),
    "AF_INET6/STREAM": (socket.AF_INET6, socket.SOCK_STREAM, 0),
    "AF_UNIX/STREAM": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
    "AF_UNIX/DGRAM": (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
    "AF_NETLINK/ROUTE": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "AF_PACKET/RAW": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
    "AF_INET/RAW(ICMP)": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "socketpair(AF_UNIX)": (-1, 0, 0),
}


def new_sockets(ctx: dict[str, Any]) -> Steps:
    steps = {}
    for label, (family, kind, proto) in SOCKETS.items():
        if family == -1:
            steps[label] = _errno_of(lambda: [s.close() for s in socket.socketpair()])
        else:
            steps[label] = _errno_of(_socket(family, kind, proto))
    return steps


def connect_and_bind(ctx: dict[str, Any]) -> Steps:
    """On the compartment's own channel (and listener, if any): no new endpoints."""
    steps = {}
    for fd in sorted(set(ctx["own"]) - {0, 1, 2}):
        steps[f"connect(fd {fd}, 127.0.0.1:{ctx['port']})"] = raw(
            "connect", fd, _sockaddr_in(ctx["port"]), 16
        )
        steps[f"bind(fd {fd}, 127.0.0.1:0)"] = raw("bind", fd, _sockaddr_in(0), 16)
        steps[f"sendto(fd {fd}, 127.0.0.1:{ctx['port']})"] = raw(
            "sendto", fd, ctypes.c_char_p(b"x"), 1, 0, _sockaddr_in(ctx["port"]), 16
        )
    return steps


def _signals(pid: int) -> Steps:
    return {
        "kill(SIGKILL)": raw("kill", pid, int(signal.SIGKILL)),
        "kill(0) probe": raw("kill", pid, 0),
        "tgkill(SIGKILL)": raw("tgkill", pid, pid, int(signal.SIGKILL)),
        "tkill(SIGKILL)": raw("tkill", pid, int(signal.SIGKILL)),
        "rt_sigqueueinfo(SIGKILL)": raw("rt_sigqueueinfo", pid, int(signal.SIGKILL), _SCRATCH),
        "pidfd_open": raw("pidfd_open", pid, 0),
    }


def kill_parent(ctx: dict[str, Any]) -> Steps:
    return {**_signals(ctx["parent"]), "kill(-pgid, SIGKILL)": raw("kill", -ctx["pgid"], 9)}


def kill_sibling(ctx: dict[str, Any]) -> Steps:
    return _signals(ctx["sibling"])


def kill_zygote(ctx: dict[str, Any]) -> Steps:
    return _signals(os.getppid())


def signal_by_sigio(ctx: dict[str, Any]) -> Steps:
    """F_SETOWN/F_SETSIG + O_ASYNC: have the kernel send SIGKILL for us on the next I/O."""
    owner_ex = ctypes.create_string_buffer(struct.pack("=ii", 1, ctx["parent"]), 8)  # F_OWNER_PID
    steps = {}
    for fd in sorted(set(ctx["own"]) - {0, 1, 2}):
        steps[f"fcntl(fd {fd}, F_SETOWN, parent)"] = raw("fcntl", fd, F_SETOWN, ctx["parent"])
        steps[f"fcntl(fd {fd}, F_SETOWN_EX, parent)"] = raw("fcntl", fd, F_SETOWN_EX, owner_ex)
        steps[f"fcntl(fd {fd}, F_SETSIG, SIGKILL)"] = raw(
            "fcntl", fd, F_SETSIG, int(signal.SIGKILL)
        )
        copy, steps[f"fcntl(fd {fd}, F_DUPFD)"] = raw_value("fcntl", fd, F_DUPFD, 3)
        # Where a step got through (a known gap), undo it: no armed owner, no extra fd.
        raw("fcntl", fd, F_SETOWN, 0)
        if copy >= 0:
            os.close(copy)
    return steps


def device_ioctls(ctx: dict[str, Any]) -> Steps:
    """ioctl reaching the network stack or a terminal through an fd the compartment holds.

    SIOCSIFNAME on an interface that does not exist changes nothing even if reachable
    (ENODEV then); TIOCSTI goes to stdout moved into the channel block with dup3.
    """
    steps = {}
    for fd in sorted(set(ctx["own"]) - {0, 1, 2}):
        steps[f"ioctl(fd {fd}, SIOCSIFNAME)"] = raw(
            "ioctl", fd, SIOCSIFNAME, _ifreq(b"nonexist0", b"nonexist1")
        )
    moved = 127
    steps["dup3(stdout, 127)"] = raw("dup3", 1, moved, 0)
    steps["ioctl(127 = stdout, TIOCSTI)"] = raw("ioctl", moved, TIOCSTI, ctypes.c_char_p(b"!"))
    with contextlib.suppress(OSError):
        os.close(moved)
    return steps


def _vm(name: str, pid: int) -> int:
    local = (_Iovec * 1)(_Iovec(ctypes.cast(_SCRATCH, ctypes.c_void_p), 64))
    remote = (_Iovec * 1)(_Iovec(ctypes.c_void_p(ctypes.addressof(_SCRATCH)), 64))
    return raw(name, pid, local, 1, remote, 1, 0)


def trace_and_peek(ctx: dict[str, Any]) -> Steps:
    parent, zygote = ctx["parent"], os.getppid()
    return {
        "ptrace(ATTACH, parent)": raw("ptrace", PTRACE_ATTACH, parent, 0, 0),
        "ptrace(SEIZE, parent)": raw("ptrace", PTRACE_SEIZE, parent, 0, 0),
        "ptrace(ATTACH, zygote)": raw("ptrace", PTRACE_ATTACH, zygote, 0, 0),
        "ptrace(ATTACH, sibling)": raw("ptrace", PTRACE_ATTACH, ctx["sibling"], 0, 0),
        "ptrace(TRACEME)": raw("ptrace", PTRACE_TRACEME, 0, 0, 0),
        "process_vm_readv(parent)": _vm("process_vm_readv", parent),
        "process_vm_writev(parent)": _vm("process_vm_writev", parent),
        "process_vm_readv(sibling)": _vm("process_vm_readv", ctx["sibling"]),
    }


def widen_the_filter(ctx: dict[str, Any]) -> Steps:
    prog = ctypes.byref(ALLOW_ALL_PROGRAM)
    return {
        "seccomp(SET_MODE_FILTER, allow-all)": raw("seccomp", SECCOMP_SET_MODE_FILTER, 0, prog),
        "seccomp(SET_MODE_FILTER, TSYNC, allow-all)": raw(
            "seccomp", SECCOMP_SET_MODE_FILTER, 1, prog
        ),
        "prctl(PR_SET_SECCOMP, allow-all)": raw("prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog),
        "prctl(PR_SET_DUMPABLE, 1)": raw("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0),
        "prctl(PR_SET_PDEATHSIG, 0)": raw("prctl", PR_SET_PDEATHSIG, 0, 0, 0, 0),
        "still sealed: socket(AF_INET)": _errno_of(_socket(socket.AF_INET, socket.SOCK_STREAM)),
        "still sealed: open()": _errno_of(lambda: open("/etc/hostname", "rb").close()),
    }


def namespaces_and_mounts(ctx: dict[str, Any]) -> Steps:
    return {
        "unshare(NEWUSER|NEWNS|NEWNET)": raw("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET),
        "setns(0, 0)": raw("setns", 0, 0),
        "mount(tmpfs on /tmp)": raw(
            "mount",
            ctypes.c_char_p(b"none"),
            ctypes.c_char_p(b"/tmp"),
            ctypes.c_char_p(b"tmpfs"),
            0,
            0,
        ),
        "umount2(/proc)": raw("umount2", ctypes.c_char_p(b"/proc"), 2),  # MNT_DETACH
        "chroot(/)": raw("chroot", ctypes.c_char_p(b"/")),
        "pivot_root(/, /)": raw("pivot_root", ctypes.c_char_p(b"/"), ctypes.c_char_p(b"/")),
    }


def kernel_surfaces(ctx: dict[str, Any]) -> Steps:
    """The big kernel attack surfaces: each would be reachable with a wrong errno."""
    return {
        "io_uring_setup": raw("io_uring_setup", 1, _SCRATCH),
        "bpf(BPF_PROG_LOAD)": raw("bpf", 5, _SCRATCH, 128),
        "perf_event_open": raw("perf_event_open", _SCRATCH, 0, -1, -1, 0),
        "userfaultfd": raw("userfaultfd", 0),
        "keyctl(GET_KEYRING_ID)": raw("keyctl", 0, -3, 0),
        "add_key": raw("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"x"), _SCRATCH, 1, -3),
        "request_key": raw("request_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"x"), 0, 0),
        "personality(READ_IMPLIES_EXEC)": raw("personality", READ_IMPLIES_EXEC),
        "init_module": raw("init_module", _SCRATCH, 0, _EMPTY),
        "finit_module": raw("finit_module", 0, _EMPTY, 0),
        "kexec_load": raw("kexec_load", 0, 0, 0, 0),
        "reboot(bad magic)": raw("reboot", LINUX_REBOOT_BAD_MAGIC, 0, 0, 0),
        "setuid(0)": raw("setuid", 0),
        "capset": raw("capset", _SCRATCH, _SCRATCH),
    }


def memfd_then_exec(ctx: dict[str, Any]) -> Steps:
    memfd, err = raw_value("memfd_create", ctypes.c_char_p(b"payload"), 0)
    steps = {"memfd_create": err}
    # Whether or not the memfd exists, executing an fd must be refused on its own.
    target = memfd if memfd >= 0 else 0
    steps["execveat(fd, '', AT_EMPTY_PATH)"] = raw(
        "execveat", target, _EMPTY, _ARGV, _ARGV, AT_EMPTY_PATH
    )
    return steps


ATTACKS: dict[str, Callable[[dict[str, Any]], Steps]] = {
    f.__name__: f
    for f in (
        open_files,
        parent_environment,
        execute,
        fork_processes,
        clone3_process,
        new_sockets,
        connect_and_bind,
        kill_parent,
        kill_sibling,
        kill_zygote,
        signal_by_sigio,
        device_ioctls,
        trace_and_peek,
        widen_the_filter,
        namespaces_and_mounts,
        kernel_surfaces,
        memfd_then_exec,
    )
}

#: clone3 hides its flags behind a pointer; compartments answer it ENOSYS (glibc then falls
#: back to clone, whose flags the filter checks) or EPERM. Either way no process appears.
ACCEPTED_ERRNOS = {"clone3_process": {errno.EPERM, errno.ENOSYS}}


def stray_fd_writes(own: list[int]) -> dict[str, int]:
    """write() to every fd number the compartment does not own, and sendto() in the block.

    Returns errno → count, plus an entry per fd that answered anything else.
    """
    outcome: dict[str, int] = {}
    for fd in [*range(3, 64), *range(65, 1024)]:
        if fd in own:
            continue
        err = _errno_of(lambda fd=fd: os.write(fd, b"!"))
        if err not in (errno.EBADF, errno.EPERM):
            outcome[f"write(fd {fd})"] = err
        code = errno.errorcode.get(err, str(err))
        outcome[code] = outcome.get(code, 0) + 1
        if 64 < fd < 128:  # the channel block: the filter allows sendto, the kernel must say EBADF
            sent = raw("sendto", fd, ctypes.c_char_p(b"!"), 1, 0, 0, 0)
            if sent != errno.EBADF:
                outcome[f"sendto(fd {fd})"] = sent
    return outcome


# -- the compartments -----------------------------------------------------------------


class _Attacker:
    """What every escape-suite compartment offers the test."""

    _fds_at_seal: list[int]

    def _record_fds(self) -> None:
        """The fds open right before the seal (the rules callable runs last)."""
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
        self._fds_at_seal = sorted(
            fd for fd in listed if _errno_of(lambda fd=fd: os.fstat(fd)) == 0
        )

    def fds_at_seal(self) -> list[int]:
        return self._fds_at_seal

    def attempt(self, name: str, ctx: dict[str, Any]) -> Steps:
        return ATTACKS[name](ctx)

    def write_stray_fds(self) -> dict[str, int]:
        return stray_fd_writes(self._fds_at_seal)

    def arm_sigio_and_wait(self, target: int, seconds: float) -> dict[str, int]:
        """Ask the kernel to SIGKILL ``target`` when the channel turns readable, then
        wait (polling, not reading) for the parent's next request to arrive."""
        flags = raw_value("fcntl", 64, 3, 0)[0]  # F_GETFL
        steps = {
            "F_SETOWN": raw("fcntl", 64, F_SETOWN, target),
            "F_SETSIG": raw("fcntl", 64, F_SETSIG, int(signal.SIGKILL)),
            "F_SETFL(O_ASYNC)": raw("fcntl", 64, 4, max(flags, 0) | os.O_ASYNC),
        }
        poller = select.poll()
        poller.register(64, select.POLLIN)
        poller.poll(seconds * 1000)
        raw("fcntl", 64, F_SETOWN, 0)
        raw("fcntl", 64, 4, max(flags, 0))
        return steps

    def attempt_x32(self) -> int:
        """getpid through the x32 ABI: the filter must kill, not evaluate it as x86_64."""
        return int(_libc.syscall(ctypes.c_long(X32_SYSCALL_BIT | syscall_number("getpid"))))

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ping(self) -> int:
        return os.getpid()


def _web_rules(web: WebServer) -> list[Any]:
    web._record_fds()
    return [Networking.nothing().allow_running_tcp_servers()]


@compartment(rules=_web_rules)
class WebServer(_Attacker):
    """Network-only: a listener bound in setup, then accept/recv/send and nothing else."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)

    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def serve_one(self) -> bytes:
        """The job: accept one connection, echo one request upper-cased."""
        conn, _ = self.listener.accept()
        with conn:
            data = conn.recv(1024)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + data.upper())
        return data


def _db_rules(db: Database) -> list[Any]:
    db._record_fds()
    return [SystemIO.nothing().allow_file_read(db.file).allow_file_write(db.file)]


@compartment(rules=_db_rules)
class Database(_Attacker):
    """File-only: reads and writes the one file opened in setup."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "r+b", buffering=0)

    def put(self, data: bytes) -> None:
        self.file.seek(0)
        self.file.write(data)

    def get(self, size: int) -> bytes:
        self.file.seek(0)
        return bytes(self.file.read(size))


def _parser_rules(parser: Parser) -> list[Any]:
    parser._record_fds()
    return [SystemIO.nothing()]


@compartment(rules=_parser_rules)
class Parser(_Attacker):
    """Pure computation: bytes in, data out."""

    def parse(self, data: bytes) -> Any:
        return json.loads(data)


@compartment(rules=[SystemIO.nothing()])
class Bystander:
    """A sibling the attackers try to reach; it must keep answering."""

    def ping(self) -> int:
        return os.getpid()


@compartment(rules=[SystemIO.nothing(), "seccomp", "prctl"])
class FilterLoader:
    """May load filters of its own: proves a stacked filter can only narrow."""

    def load_allow_all(self) -> dict[str, int]:
        before = _errno_of(_socket(socket.AF_INET, socket.SOCK_STREAM))
        prog = ctypes.byref(ALLOW_ALL_PROGRAM)
        return {
            "socket before": before,
            "seccomp(allow-all)": raw("seccomp", SECCOMP_SET_MODE_FILTER, 0, prog),
            "prctl(PR_SET_SECCOMP, allow-all)": raw(
                "prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog
            ),
            "socket after": _errno_of(_socket(socket.AF_INET, socket.SOCK_STREAM)),
            "open after": _errno_of(lambda: open("/etc/hostname", "rb").close()),
            "kill(parent) after": raw("kill", os.getppid(), 0),
        }

    def ping(self) -> int:
        return os.getpid()
