"""Shedding privileges: no_new_privs and capabilities, for sealing and for Isolate."""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["drop_capabilities", "set_no_new_privs"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))  # fmt: skip


def _failed(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def set_no_new_privs() -> None:
    """Forbid gaining privileges via exec; seccomp and Landlock need it (root too)."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _failed("prctl(PR_SET_NO_NEW_PRIVS)")


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets, then every set capset holds."""
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.addressof(header), ctypes.addressof(data)) < 0:
        raise _failed("capset")
