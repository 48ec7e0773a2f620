"""The process table: names and mount namespaces, read straight from /proc."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, List, NamedTuple, Optional

DEFAULT_NAMES = ("kubelet", "crio", "containerd", "k3s", "rke2")
# k3s and RKE2 rename their main process ("k3s-server", "k3s-agent"); comm is what the kernel keeps.
_SUFFIXES = ("-server", "-agent")


class Proc(NamedTuple):
    pid: int
    name: str
    mntns: Optional[str]  # "mnt:[N]" as readlink(/proc/PID/ns/mnt) prints it; None when unreadable


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None  # gone, or a kernel thread we may not read


def mntns(pid: int | str) -> str:
    """``mnt:[N]`` of a process. Raises OSError (EACCES for other users' or PID 1's in a sandbox)."""
    return os.readlink(f"/proc/{pid}/ns/mnt")


def mntns_or_none(pid: int) -> Optional[str]:
    try:
        return mntns(pid)
    except OSError:
        return None


def matches(name: str, wanted: Iterable[str]) -> bool:
    for w in wanted:
        if name == w or (name.startswith(w) and name[len(w) :] in _SUFFIXES):
            return True
    return False


def pidns(pid: int | str) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def find(names: Iterable[str] = DEFAULT_NAMES, same_pidns_as: int | str | None = None) -> List[Proc]:
    """Processes whose name (comm) is one of ``names`` (also NAME-server / NAME-agent).

    With ``same_pidns_as``, only processes in that process's PID namespace: a kubelet of a nested node
    (kind, k3d, a systemd-nspawn machine) is visible in /proc but is not this node's.
    """
    wanted = tuple(names)
    want_pidns = pidns(same_pidns_as) if same_pidns_as is not None else None
    found = []
    for pid in pids():
        name = comm(pid)
        if name is not None and matches(name, wanted):
            if want_pidns is not None and pidns(pid) != want_pidns:
                continue
            found.append(Proc(pid, name, mntns_or_none(pid)))
    found.sort(key=lambda p: p.pid)
    return found


def in_namespace(ns: str, exclude: Iterable[int] = ()) -> List[Proc]:
    """Every process whose mount namespace is ``ns`` (``mnt:[N]``)."""
    skip = set(exclude)
    found = []
    for pid in pids():
        if pid in skip:
            continue
        if mntns_or_none(pid) == ns:
            found.append(Proc(pid, comm(pid) or "?", ns))
    found.sort(key=lambda p: p.pid)
    return found
