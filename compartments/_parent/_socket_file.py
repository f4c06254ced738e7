"""The served socket's file: created with its mode from the start, a stale one (a server
that died) replaced, and anything else at the path refused.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

__all__ = ["inode_of", "listen"]


def listen(path: str, mode: int, max_clients: int) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at ``path`` whose file has ``mode`` from the moment it exists."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), mode)  # bind creates the file with the socket's mode
        _remove_stale(path)
        sock.bind(path)
        os.chmod(path, mode)  # exactly mode, whatever the umask took away
        sock.listen(max(128, 2 * max_clients))
        sock.setblocking(False)
        inode = inode_of(path)
        assert inode is not None
        return sock, inode
    except BaseException:
        sock.close()
        raise


def _remove_stale(path: str) -> None:
    """A socket file nobody listens on (a server that died) is replaced; anything else
    at ``path`` is an error."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise FileExistsError(errno.EADDRINUSE, "a server is listening there already", path)


def inode_of(path: str) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
