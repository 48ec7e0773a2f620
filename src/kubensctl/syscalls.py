"""The only ctypes/ioctl code in kubensctl: thin, typed wrappers over a few Linux syscalls.

Each wrapper raises ``OSError(errno, strerror, path)`` like the ``os`` module does, so callers handle
one kind of failure. Constants cite the kernel header they come from.

(``kubensctl/enter.py`` carries its own two-line setns fallback: it must run as a single file on
nodes, see its docstring.)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import sys
from typing import Optional

# include/uapi/linux/sched.h
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NS_TYPE_NAMES = {
    CLONE_NEWNS: "mnt",
    CLONE_NEWCGROUP: "cgroup",
    CLONE_NEWUTS: "uts",
    CLONE_NEWIPC: "ipc",
    CLONE_NEWUSER: "user",
    CLONE_NEWPID: "pid",
    CLONE_NEWNET: "net",
    CLONE_NEWTIME: "time",
}

# include/uapi/linux/mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_UNBINDABLE = 1 << 17

# include/linux/fs.h (umount2 flags)
MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# include/uapi/linux/nsfs.h: _IO(NSIO, 0x3) with NSIO = 0xb7
NS_GET_NSTYPE = (0xB7 << 8) | 0x3

# include/uapi/linux/nsfs.h: _IOR(NSIO, 0x5, __u64), Linux 6.10+ (mount namespace id)
NS_GET_MNTNS_ID = (2 << 30) | (8 << 16) | (0xB7 << 8) | 0x5

# include/uapi/linux/magic.h
NSFS_MAGIC = 0x6E736673

_libc: Optional[ctypes.CDLL] = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.setns.restype = ctypes.c_int
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        ]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


def _check(result: int, path: Optional[str] = None) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _b(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2). Python >= 3.12 has ``os.unshare``; this covers 3.9–3.11 (RHEL 9, Debian 12)."""
    native = getattr(os, "unshare", None)
    if native is not None:
        native(flags)
        return
    _check(_lib().unshare(flags))


def setns(fd: int, nstype: int = 0, path: Optional[str] = None) -> None:
    """setns(2). Fails with EINVAL for CLONE_NEWNS when the process has more than one thread."""
    native = getattr(os, "setns", None)
    if native is not None:
        try:
            native(fd, nstype)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None
        return
    _check(_lib().setns(fd, nstype), path)


def mount(
    source: Optional[str],
    target: str,
    fstype: Optional[str] = None,
    flags: int = 0,
    data: Optional[str] = None,
) -> None:
    """mount(2). Propagation changes pass ``source=None`` and one MS_* propagation flag."""
    data_b = _b(data)
    _check(
        _lib().mount(_b(source), os.fsencode(target), _b(fstype), flags, data_b),
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_lib().umount2(os.fsencode(target), flags), target)


def ns_type(fd: int, path: Optional[str] = None) -> int:
    """The CLONE_NEW* type of the namespace file open at ``fd`` (ioctl NS_GET_NSTYPE, Linux 4.11).

    Raises OSError(ENOTTY) when ``fd`` is not an nsfs file (for example a plain file).
    """
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def mntns_id(fd: int) -> Optional[int]:
    """The 64-bit id of the mount namespace open at ``fd`` (NS_GET_MNTNS_ID); None before Linux 6.10."""
    try:
        buf = fcntl.ioctl(fd, NS_GET_MNTNS_ID, b"\0" * 8)
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder)


def ns_type_name(nstype: int) -> str:
    return NS_TYPE_NAMES.get(nstype, hex(nstype))
