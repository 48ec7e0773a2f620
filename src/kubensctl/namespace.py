"""Pin, inspect and unpin the Kubernetes mount namespace.

Layout of a runtime directory (default ``/run/kubens``)::

    /run/kubens        bind-mounted onto itself, unbindable
    /run/kubens/mnt    bind mount of an nsfs file: the pinned mount namespace
    /run/kubens/env    KUBENSMNT=/run/kubens/mnt  (EnvironmentFile= for units that join by themselves)

Why unbindable: the pinned namespace is a slave of the host, so a bind mount made under the runtime
directory in the host would propagate into the pinned namespace. The kernel refuses to make a
namespace file visible inside the very namespace it pins (the mnt_ns_loop() check in fs/namespace.c),
and an unbindable mount is also private, so nothing below it propagates at all.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from kubensctl import mountinfo, procs, syscalls
from kubensctl.errors import BusyError, KubensError, NamespaceError, PermissionDenied
from kubensctl.fsutil import atomic_write, read_text

DEFAULT_RUNTIME_DIR = "/run/kubens"

# Pin states, as ``inspect()`` reports them.
PIN_ABSENT = "absent"  # no file at DIR/mnt
PIN_FILE = "file"  # a plain file nothing is mounted on (stale: kubens stopped uncleanly)
PIN_MNT = "mnt"  # a bind-mounted mount namespace: healthy
PIN_OTHER_NS = "other-ns"  # a bind-mounted namespace of another type (net, uts, ...)
PIN_NOT_NS = "not-ns"  # something mounted there that is no namespace
PIN_UNREADABLE = "unreadable"  # exists but we may not open it (not root)


@dataclass
class Paths:
    runtime_dir: str = DEFAULT_RUNTIME_DIR

    def __post_init__(self) -> None:
        self.runtime_dir = os.path.abspath(self.runtime_dir)

    @property
    def mnt(self) -> str:
        return os.path.join(self.runtime_dir, "mnt")

    @property
    def env(self) -> str:
        return os.path.join(self.runtime_dir, "env")

    def env_text(self) -> str:
        return f"KUBENSMNT={self.mnt}\n"


@dataclass
class PinInfo:
    """What ``inspect()`` found in a runtime directory."""

    paths: Paths
    dir_exists: bool = False
    dir_mounted: bool = False
    dir_unbindable: bool = False
    pin: str = PIN_ABSENT
    pin_type: Optional[str] = None  # "net", "uts", ... when pin == PIN_OTHER_NS
    ns: Optional[str] = None  # "mnt:[N]" when pin == PIN_MNT
    env_ok: bool = False
    env_present: bool = False

    @property
    def healthy(self) -> bool:
        return self.dir_mounted and self.dir_unbindable and self.pin == PIN_MNT and self.env_ok

    def problems(self) -> List[str]:
        """Plain-language list of what is wrong with the pin (empty when healthy or absent)."""
        out: List[str] = []
        if self.pin == PIN_ABSENT and not self.env_present:
            return out
        if self.pin == PIN_FILE:
            out.append(f"{self.paths.mnt} is a plain file, not a mounted namespace (stale pin)")
        elif self.pin == PIN_OTHER_NS:
            out.append(f"{self.paths.mnt} pins a {self.pin_type} namespace, not a mount namespace")
        elif self.pin == PIN_NOT_NS:
            out.append(f"{self.paths.mnt} has something mounted that is not a namespace")
        elif self.pin == PIN_ABSENT:
            out.append(f"{self.paths.env} exists but {self.paths.mnt} does not (stale env file)")
        if self.pin == PIN_MNT:
            if not self.dir_mounted:
                out.append(f"{self.paths.runtime_dir} is not a mount point")
            elif not self.dir_unbindable:
                out.append(f"{self.paths.runtime_dir} is not unbindable")
            if not self.env_ok:
                out.append(f"{self.paths.env} is missing or does not say KUBENSMNT={self.paths.mnt}")
        return out


@dataclass
class Change:
    """One thing start/stop did, for printing."""

    what: str


@dataclass
class Result:
    changes: List[Change] = field(default_factory=list)
    info: Optional[PinInfo] = None

    def add(self, what: str) -> None:
        self.changes.append(Change(what))


def _is_mountpoint(table: List[mountinfo.Mount], path: str) -> Optional[mountinfo.Mount]:
    return mountinfo.find(table, path)


def probe_pin(path: str) -> tuple[str, Optional[str], Optional[str]]:
    """Classify ``path``: (state, other namespace type, ``mnt:[N]``). Never parses the mount table."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return PIN_ABSENT, None, None
    except PermissionError:
        return PIN_UNREADABLE, None, None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return PIN_NOT_NS, None, None
        raise
    try:
        try:
            kind = syscalls.ns_type(fd, path)
        except OSError as e:
            if e.errno != errno.ENOTTY:
                raise
            # Not nsfs. Mounted or not? A mount point sits on another device than its directory.
            parent = os.stat(os.path.dirname(path) or ".")
            if os.fstat(fd).st_dev != parent.st_dev:
                return PIN_NOT_NS, None, None
            return PIN_FILE, None, None
        if kind != syscalls.CLONE_NEWNS:
            return PIN_OTHER_NS, syscalls.ns_type_name(kind), None
        return PIN_MNT, None, f"mnt:[{os.fstat(fd).st_ino}]"
    finally:
        os.close(fd)


def inspect(paths: Paths, table: Optional[List[mountinfo.Mount]] = None) -> PinInfo:
    info = PinInfo(paths)
    info.dir_exists = os.path.isdir(paths.runtime_dir)
    if info.dir_exists:
        if table is None:
            table = mountinfo.read()
        top = _is_mountpoint(table, paths.runtime_dir)
        info.dir_mounted = top is not None
        info.dir_unbindable = bool(top and top.unbindable)
    info.pin, info.pin_type, info.ns = probe_pin(paths.mnt)
    env = read_text(paths.env)
    info.env_present = env is not None
    info.env_ok = env == paths.env_text()
    return info


def _threads() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def _require_single_thread(action: str) -> None:
    n = _threads()
    if n > 1:
        raise NamespaceError(
            f"cannot {action}: this process has {n} threads and setns(2) refuses CLONE_NEWNS then",
            "do it before starting threads, or in a child process",
        )


class _Lock:
    """flock(2) serialising start/stop: two concurrent starts end with one namespace.

    The lock is taken on the runtime directory's parent (e.g. /run): an fd open on the runtime
    directory itself would keep its bind mount busy and make stop's umount fail with EBUSY.
    """

    def __init__(self, directory: str) -> None:
        parent = os.path.dirname(directory.rstrip("/")) or "/"
        self.fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> _Lock:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _root_error(e: OSError, action: str) -> KubensError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"cannot {action}: {e.strerror}", "run as root")
    return NamespaceError(f"cannot {action}: {e.strerror} ({e.filename})", "rerun with --debug for details")


def _new_namespace_fd(cpu: Optional[int] = None) -> int:
    """Create the namespace to pin and return an fd for it, leaving this process where it was.

    This process unshares, sets propagation inside (slave of the caller's, then rshared, as
    ``unshare --propagation slave mount --make-rshared /`` does), opens its new namespace, and setns(2)s
    back to the original through a saved fd. No child process is needed. ``cpu``: create it while
    running on that CPU (see ``pin_namespace``).
    """
    _require_single_thread("create a mount namespace")
    if cpu is not None:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            return _new_namespace_fd()
        finally:
            os.sched_setaffinity(0, allowed)
    cwd = os.getcwd()
    orig = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        try:
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SLAVE)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SHARED)
            return os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            syscalls.setns(orig, syscalls.CLONE_NEWNS, "/proc/self/ns/mnt")
            # setns(2) into a mount namespace moves cwd to its root; go back.
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
    finally:
        os.close(orig)


def pin_namespace(target: str) -> None:
    """Create a new mount namespace and bind-mount it onto ``target`` (an existing file).

    The kernel refuses (EINVAL) to bind a mount namespace that is not newer than the caller's
    (mnt_ns_loop() in fs/namespace.c compares namespace ids). Since Linux 6.18 those ids come from
    per-CPU batches (gen_cookie_next()), so a namespace made on one CPU can get a lower id than an
    older one made on another, and the pin fails at random (util-linux's unshare --mount=FILE too).
    So: where the kernel tells ids (NS_GET_MNTNS_ID), make namespaces until one is newer than ours,
    first on each allowed CPU (the CPU that made ours hands out higher ids than it did then), then on
    this one until its batch runs out and it takes a fresh, higher one. Older kernels count up
    globally and succeed at once.
    """
    with open("/proc/self/ns/mnt", "rb", buffering=0) as f:
        ours = syscalls.mntns_id(f.fileno())
    cpus = sorted(os.sched_getaffinity(0))
    plan: List[Optional[int]] = [None, *cpus]
    for attempt in range(_MAX_PIN_ATTEMPTS):
        cpu = plan[attempt] if attempt < len(plan) else None
        fd = _new_namespace_fd(cpu)
        try:
            if ours is not None:
                new = syscalls.mntns_id(fd)
                if new is not None and new <= ours:
                    continue
            try:
                syscalls.mount(f"/proc/self/fd/{fd}", target, None, syscalls.MS_BIND)
                return
            except OSError as e:
                if e.errno != errno.EINVAL or attempt >= len(plan) - 1:
                    raise
        finally:
            os.close(fd)
    raise NamespaceError(
        f"cannot pin a mount namespace at {target}: every new namespace got an older id than this one",
        "retry 'kubensctl start' (the kernel hands out namespace ids in per-CPU batches)",
    )


# Each attempt is one unshare(2) and a few syscalls (tens of microseconds); a CPU's id batch is 4096.
_MAX_PIN_ATTEMPTS = 20000


def _unmount_pin(path: str) -> None:
    """Unmount whatever is stacked on ``path``."""
    for _ in range(64):
        try:
            syscalls.umount2(path, syscalls.UMOUNT_NOFOLLOW)
        except OSError as e:
            if e.errno == errno.EINVAL:  # not a mount point (any more)
                return
            raise


def ensure_shared_mountpoint(directory: str, res: Result) -> None:
    """Make ``directory`` a shared mount point (bind onto itself when it is none).

    For /run/netns: ip-netns(8) makes it a mount point the first time it is used. If that happens on the
    host after the runtime has bound network namespaces there from inside the pinned namespace, the new
    mount propagates in on top of them and pods fail with "setns: Invalid argument".
    """
    os.makedirs(directory, mode=0o755, exist_ok=True)
    top = mountinfo.find(mountinfo.read(), os.path.abspath(directory))
    if top is None:
        syscalls.mount(directory, directory, None, syscalls.MS_BIND)
        res.add(f"bind-mounted {directory} onto itself")
    if top is None or top.shared is None:
        syscalls.mount(None, directory, None, syscalls.MS_SHARED)
        res.add(f"made {directory} shared")


def start(paths: Paths, netns_dir: Optional[str] = None) -> Result:
    """Create or repair the pinned namespace. Idempotent; a healthy pin is left untouched."""
    res = Result()
    if netns_dir:
        try:
            ensure_shared_mountpoint(netns_dir, res)
        except OSError as e:
            raise _root_error(e, f"make {netns_dir} a shared mount point") from None
    try:
        os.makedirs(paths.runtime_dir, mode=0o755, exist_ok=True)
    except OSError as e:
        raise _root_error(e, f"create {paths.runtime_dir}") from None
    with _Lock(paths.runtime_dir):
        info = inspect(paths)
        try:
            if not info.dir_mounted:
                syscalls.mount(paths.runtime_dir, paths.runtime_dir, None, syscalls.MS_BIND)
                res.add(f"bind-mounted {paths.runtime_dir} onto itself")
            if not info.dir_unbindable:
                syscalls.mount(None, paths.runtime_dir, None, syscalls.MS_UNBINDABLE)
                res.add(f"made {paths.runtime_dir} unbindable")
            if info.pin in (PIN_OTHER_NS, PIN_NOT_NS):
                _unmount_pin(paths.mnt)
                res.add(f"unmounted the wrong pin at {paths.mnt} ({info.pin_type or 'not a namespace'})")
            if info.pin != PIN_MNT:
                if not os.path.exists(paths.mnt):
                    with open(paths.mnt, "x"):
                        pass
                pin_namespace(paths.mnt)
                res.add(f"pinned a new mount namespace at {paths.mnt}")
        except OSError as e:
            raise _root_error(e, f"pin the namespace at {paths.mnt}") from None
        if not info.env_ok:
            atomic_write(paths.env, paths.env_text())
            res.add(f"wrote {paths.env}")
        res.info = inspect(paths)
    return res


def users(ns: str) -> List[procs.Proc]:
    """Processes (other than this one) whose mount namespace is ``ns``."""
    return procs.in_namespace(ns, exclude=(os.getpid(),))


def stop(paths: Paths, force: bool = False) -> Result:
    """Unpin: unmount everything at and below the runtime directory, remove env and pin files.

    Refuses while processes run inside, unless ``force``: a kubelet left in an unpinned namespace
    while its runtime restarts in the host's is the split this tool exists to prevent.
    """
    res = Result()
    if not os.path.isdir(paths.runtime_dir):
        res.info = inspect(paths)
        return res
    with _Lock(paths.runtime_dir):
        info = inspect(paths)
        if info.pin == PIN_MNT and info.ns is not None:
            inside = users(info.ns)
            if inside and not force:
                listing = ", ".join(f"{p.pid} {p.name}" for p in inside[:20])
                more = f" and {len(inside) - 20} more" if len(inside) > 20 else ""
                raise BusyError(
                    f"{len(inside)} process(es) still run in the pinned namespace: {listing}{more}",
                    "stop kubelet and the container runtime first, or pass --force",
                )
            if inside:
                res.add(f"forced: {len(inside)} process(es) keep running in the unpinned namespace")
        try:
            for m in sorted(_mounts_under(paths.runtime_dir), key=lambda m: -m.mount_id):
                _unmount_pin(m.mount_point)
                res.add(f"unmounted {m.mount_point}")
        except OSError as e:
            raise _root_error(e, f"unmount {paths.runtime_dir}") from None
        for path, what in ((paths.env, "env file"), (paths.mnt, "pin file")):
            try:
                os.unlink(path)
                res.add(f"removed {what} {path}")
            except FileNotFoundError:
                pass
    res.info = inspect(paths)
    return res


def _mounts_under(directory: str) -> Iterator[mountinfo.Mount]:
    prefix = directory.rstrip("/") + "/"
    for m in mountinfo.read():
        if m.mount_point == directory or m.mount_point.startswith(prefix):
            yield m


def open_namespace(path: str) -> int:
    """Open ``path`` and check it is a mount namespace; return the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"{path} does not exist", "start kubens.service (kubensctl start)") from None
    except PermissionError:
        raise PermissionDenied(f"cannot open {path}: permission denied", "run as root") from None
    try:
        kind = syscalls.ns_type(fd, path)
    except OSError:
        os.close(fd)
        raise NamespaceError(f"{path} is not a mounted namespace", "start kubens.service (kubensctl start)") from None
    if kind != syscalls.CLONE_NEWNS:
        os.close(fd)
        raise NamespaceError(
            f"{path} is a {syscalls.ns_type_name(kind)} namespace, not a mount namespace",
            "point KUBENSMNT at the mount namespace pin, e.g. /run/kubens/mnt",
        )
    return fd


def join(path: Optional[str] = None) -> Optional[str]:
    """Join the namespace at ``path`` or ``$KUBENSMNT``; None (and no change) when neither is set.

    Like containers/kubensmnt does for Go programs: call it first thing, before threads start.
    """
    target = path or os.environ.get("KUBENSMNT") or None
    if target is None:
        return None
    _require_single_thread(f"join {target}")
    fd = open_namespace(target)
    try:
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            return target
        cwd = os.getcwd()
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNS, target)
        except OSError as e:
            raise _root_error(e, f"join {target}") from None
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")
    finally:
        os.close(fd)
    return target


def read_mountinfo(path: str) -> str:
    """The mount table of the namespace pinned at ``path``, read by a child that joins it."""
    fd = open_namespace(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: one thread after fork(2), so setns is allowed
        try:
            os.close(r)
            syscalls.setns(fd, syscalls.CLONE_NEWNS, path)
            with open("/proc/self/mountinfo", "rb") as f:
                data = f.read()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w)
    os.close(fd)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NamespaceError(f"cannot read the mount table of {path}", "run as root")
    return b"".join(chunks).decode("utf-8", "surrogateescape")


# ---- CLI -----------------------------------------------------------------------------------------


def _print_result(res: Result, idle: str) -> None:
    if not res.changes:
        print(idle)
    for c in res.changes:
        print(c.what)


def _cmd_start(args: argparse.Namespace) -> int:
    paths = Paths(args.runtime_dir)
    res = start(paths, args.netns_dir)
    assert res.info is not None
    _print_result(res, f"{paths.mnt}: already pinned ({res.info.ns}), nothing changed")
    if res.changes:
        print(f"{paths.mnt}: pinned {res.info.ns}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    paths = Paths(args.runtime_dir)
    res = stop(paths, force=args.force)
    _print_result(res, f"{paths.runtime_dir}: nothing pinned, nothing changed")
    return 0


def add_runtime_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime-dir",
        default=os.environ.get("KUBENS_RUNTIME_DIR", DEFAULT_RUNTIME_DIR),
        metavar="DIR",
        help="runtime directory holding the pin (default: /run/kubens)",
    )


def add_host_pid(p: argparse.ArgumentParser, meaning: str = "a process in the host mount namespace") -> None:
    """--host-pid: PID 1 stands for the host; in sandboxes whose PID 1 links are unreadable, name another."""
    p.add_argument("--host-pid", type=int, default=1, metavar="PID", help=f"{meaning} (default: 1, systemd)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("start", help="pin the Kubernetes mount namespace (idempotent, repairs stale state)")
    add_runtime_dir(p)
    p.add_argument(
        "--netns-dir",
        metavar="DIR",
        help="also make DIR (kubens.service: /run/netns) a shared mount point before pinning",
    )
    p.set_defaults(func=_cmd_start)
    p = sub.add_parser("stop", help="unpin the namespace (refuses while processes run inside)")
    add_runtime_dir(p)
    p.add_argument("--force", action="store_true", help="unpin even while processes run inside")
    p.set_defaults(func=_cmd_stop)
