"""Networking: sockets, with exact domain/type checks where extrasafe masked loosely."""

from __future__ import annotations

import socket

from .._policy._landlock import TCP_BIND, TCP_CONNECT, PortRule
from .._policy._rules import Arg, SeccompRule
from ._builder import BuilderRuleSet, YesReally

__all__ = ["Networking"]

IO = (
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "epoll_pwait2", "select", "pselect6", "poll", "ppoll", "accept", "accept4", "eventfd",
    "eventfd2", "getsockopt", "setsockopt", "getpeername", "getsockname",
    "shutdown", "close",
)  # fmt: skip
READ = ("listen", "recvfrom", "recvmsg", "recvmmsg", "read", "readv", "preadv", "preadv2")
WRITE = ("sendto", "sendmsg", "sendmmsg", "sendfile", "write", "writev", "pwritev", "pwritev2")
RUNNING = IO + READ + WRITE

# fcntl/ioctl only with the commands sockets use. extrasafe allows any command, which
# lets a compromised server arm F_SETOWN/F_SETSIG + O_ASYNC (the kernel then signals,
# even SIGKILLs, another process of its uid) or reach device ioctls (SIOCSIF* with
# CAP_NET_ADMIN, TIOCSTI on a terminal).
_F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL = 1, 2, 3, 4
_O_ASYNC = 0o20000
_TCGETS, _FIONREAD, _TIOCOUTQ, _FIONBIO, _FIONCLEX, _FIOCLEX = (
    0x5401, 0x541B, 0x5411, 0x5421, 0x5450, 0x5451,
)  # fmt: skip
SOCKET_COMMANDS = [
    *(SeccompRule("fcntl").and_condition(Arg(1, bits=32) == command)
      for command in (_F_GETFD, _F_SETFD, _F_GETFL)),
    SeccompRule("fcntl").and_condition(Arg(1, bits=32) == _F_SETFL)
    .and_condition(Arg(2) & _O_ASYNC == 0),
    *(SeccompRule("ioctl").and_condition(Arg(1, bits=32) == command)
      for command in (_TCGETS, _FIONREAD, _TIOCOUTQ, _FIONBIO, _FIONCLEX, _FIOCLEX)),
]  # fmt: skip

# CPython ORs these into every socket type it creates.
_TYPE_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_TYPE_MASK = ~_TYPE_FLAGS & 0xFFFFFFFF
_INET = (socket.AF_INET, socket.AF_INET6)


def _socket_rules(
    syscall: str, domains: tuple[int, ...], kind: int, protocols: tuple[int, ...]
) -> list[SeccompRule]:
    """socket()/socketpair() for exactly these domains, this type, these protocols."""
    return [
        SeccompRule(syscall)
        .and_condition(Arg(0, bits=32) == domain)
        .and_condition(Arg(1, bits=32) & _TYPE_MASK == kind)
        .and_condition(Arg(2, bits=32) == protocol)
        for domain in domains
        for protocol in protocols
    ]


TCP = _socket_rules("socket", _INET, socket.SOCK_STREAM, (0, socket.IPPROTO_TCP))
UDP = _socket_rules("socket", _INET, socket.SOCK_DGRAM, (0, socket.IPPROTO_UDP))
UNIX = [
    *_socket_rules("socket", (socket.AF_UNIX,), socket.SOCK_STREAM, (0,)),
    *_socket_rules("socket", (socket.AF_UNIX,), socket.SOCK_DGRAM, (0,)),
    *_socket_rules("socketpair", (socket.AF_UNIX,), socket.SOCK_STREAM, (0,)),
]


def _port_rule(port: int, access: int, method: str) -> PortRule:
    """A Landlock grant on one TCP port, the port checked now so the error names it."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"Networking.{method}: port must be an int, got {port!r}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"Networking.{method}: port must be 0 to 65535, got {port}")
    return PortRule(port, access, Networking.name)


class Networking(BuilderRuleSet):
    """Sockets. AF_NETLINK, AF_PACKET, AF_ALG and raw sockets are never granted."""

    name = "Networking"

    def allow_running_tcp_servers(self) -> Networking:
        """accept/recv/send/close on sockets already bound before sealing."""
        return self._with(simple=RUNNING, conditional=SOCKET_COMMANDS)

    def allow_running_tcp_clients(self) -> Networking:
        return self._with(simple=RUNNING, conditional=SOCKET_COMMANDS)

    def allow_running_udp_sockets(self) -> Networking:
        return self._with(simple=RUNNING, conditional=SOCKET_COMMANDS)

    def allow_running_unix_servers(self) -> Networking:
        return self._with(simple=RUNNING, conditional=SOCKET_COMMANDS)

    def allow_running_unix_clients(self) -> Networking:
        return self._with(simple=RUNNING, conditional=SOCKET_COMMANDS)

    def allow_start_tcp_clients(self) -> Networking:
        """Create TCP sockets (IPv4/IPv6) and connect them."""
        return self._with(simple=("connect",), conditional=TCP)

    def allow_start_tcp_servers(self) -> YesReally[Networking]:
        """Create, bind and listen on new TCP sockets: risky, so it must be confirmed."""
        granted = self._with(simple=("bind", "listen", "setsockopt"), conditional=TCP)
        return YesReally(granted, "Networking.allow_start_tcp_servers()")

    def allow_start_udp_servers(self) -> YesReally[Networking]:
        granted = self._with(simple=("bind", "setsockopt"), conditional=UDP)
        return YesReally(granted, "Networking.allow_start_udp_servers()")

    def allow_start_unix_servers(self) -> YesReally[Networking]:
        granted = self._with(simple=("bind", "listen"), conditional=UNIX)
        return YesReally(granted, "Networking.allow_start_unix_servers()")

    def allow_connect(self) -> YesReally[Networking]:
        """connect() on any socket: risky, so it must be confirmed."""
        return YesReally(self._with(simple=("connect",)), "Networking.allow_connect()")

    # -- Landlock-backed port grants (ABI 4) ------------------------------------------
    #
    # Once any port is granted, Landlock polices both TCP bind and TCP connect: every
    # port not granted for that operation is denied (EACCES), whichever RuleSet asked.
    # UDP and unix sockets are not affected.

    def allow_tcp_connect_port(self, port: int) -> Networking:
        """Create TCP sockets and connect them to ``port`` only (any host)."""
        rule = _port_rule(port, TCP_CONNECT, "allow_tcp_connect_port")
        return self._with(simple=("connect",), conditional=TCP, landlock=[rule])

    def allow_tcp_bind_port(self, port: int) -> Networking:
        """Create TCP sockets, bind them to ``port`` only and listen.

        No yes_really() as for allow_start_tcp_servers(): Landlock bounds the bind to
        this port. Port 0 grants binding to a kernel-chosen ephemeral port.
        """
        rule = _port_rule(port, TCP_BIND, "allow_tcp_bind_port")
        return self._with(simple=("bind", "listen", "setsockopt"), conditional=TCP, landlock=[rule])
