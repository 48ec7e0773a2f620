"""Measure the benefit: ``kubensctl bench`` and ``kubensctl watchers``.

bench
    Holds N tmpfs mounts in a scratch tree and runs M mount/umount cycles (containers starting and
    stopping), once in the host's mount namespace ("shared": what a kubelet and runtime outside
    encapsulation do) and once in a temporary namespace pinned exactly as kubens.service pins
    /run/kubens/mnt ("encapsulated"). For each leg it reports PID 1's CPU time (utime + stime from
    /proc/1/stat) and the churn's wall time.

    The scratch tree is ``BASE/kubensctl-bench-PID`` (BASE defaults to /run). It is bind-mounted onto
    itself, made private (its own peer group, so nothing leaks into other namespaces) and then rshared,
    as kubelet does with /var/lib/kubelet: in the encapsulated leg the pinned namespace's copy is a
    slave of it, so mounts made inside never reach the host, as on a real node.

    Leaving the mount table as found: the churn runs in forked worker processes (setns(2) needs a
    single-threaded process, and the parent must stay in the host namespace). A guardian process,
    started before the first mount and in its own session, holds the read end of a pipe from the
    parent: if the parent dies in any way (Ctrl-C, SIGTERM, an error, SIGKILL) without saying
    "done", it kills the workers and removes the scratch tree. If everything is SIGKILLed at once, a
    later run (or ``kubensctl bench --cleanup``) removes every ``kubensctl-bench-PID`` tree whose
    owner (pid and start time, in the tree's ``owner`` file) is gone.

watchers
    The processes holding an open /proc/*/mountinfo, /proc/*/mounts or /proc/*/mountstats (the ones
    woken by every mount event: systemd, ``systemd --user``, udisksd, ...), their mount namespace and
    whether encapsulation hides container mounts from them; ``--measure`` adds each one's CPU time
    during a short churn.

Exit codes: 0 ok, 1 error, 2 usage (bounds on --mounts/--cycles), 130/143 interrupted (after cleanup).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from kubensctl import mountinfo, namespace, procs, syscalls
from kubensctl.errors import KubensError, PermissionDenied, UsageError
from kubensctl.fsutil import atomic_write

DEFAULT_SCRATCH_BASE = "/run"
SCRATCH_PREFIX = "kubensctl-bench-"
DEFAULT_RESULT_FILE = "/var/lib/kubensctl/bench.json"
RESULT_VERSION = 1

DEFAULT_MOUNTS = 1000
DEFAULT_CYCLES = 300
# A pause after each cycle. systemd parses /proc/self/mountinfo at most a few times a second, so a churn
# squeezed into a few milliseconds would show it only once or twice; containers come and go over time.
DEFAULT_INTERVAL = 0.01
MAX_INTERVAL = 10.0
MAX_MOUNTS = 10000
MAX_CYCLES = 100000
# Mounts the bench needs besides the held ones: scratch bind, runtime dir bind, pin, churn mount.
_OVERHEAD_MOUNTS = 8

# After a leg, PID 1 may still be working through queued mount events (systemd rate-limits its
# mountinfo parsing to a few times a second). A leg ends when PID 1's CPU has not moved for this long.
SETTLE_QUIET_SECONDS = 1.5
SETTLE_MAX_SECONDS = 60.0
_SAMPLE_INTERVAL = 0.1
_PROGRESS_EVERY = 1.0  # seconds between progress lines

_TMPFS_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
_TMPFS_DATA = "size=16k,mode=0755"

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- /proc/PID/stat ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that kubensctl uses (proc(5))."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int  # clock ticks (field 14)
    stime: int  # clock ticks (field 15)
    starttime: int  # clock ticks after boot (field 22)

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_ticks / CLK_TCK


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line.

    Field 2 is the command name in parentheses and may itself contain spaces and parentheses
    (``1 (a) b) S ...``), so it ends at the *last* ``)`` of the line.
    """
    start = text.find("(")
    end = text.rfind(")")
    if start < 0 or end < start:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    try:
        pid = int(text[:start].strip())
        rest = text[end + 1 :].split()
        # rest[0] is field 3 (state); field N is rest[N - 3].
        return ProcStat(
            pid=pid,
            comm=text[start + 1 : end],
            state=rest[0],
            ppid=int(rest[1]),
            utime=int(rest[11]),
            stime=int(rest[12]),
            starttime=int(rest[19]),
        )
    except (ValueError, IndexError):
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}") from None


def read_stat(pid: int) -> ProcStat:
    """/proc/PID/stat of ``pid``. Raises FileNotFoundError when it is gone (or ProcessLookupError)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    try:
        return parse_stat(text)
    except ValueError:
        # A process exiting between open and read can yield an empty file.
        raise FileNotFoundError(errno.ENOENT, "no such process", f"/proc/{pid}/stat") from None


def stat_or_none(pid: int) -> Optional[ProcStat]:
    try:
        return read_stat(pid)
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds; a one-line error when it cannot be read."""
    try:
        return read_stat(pid).cpu_seconds
    except PermissionError:
        raise PermissionDenied(
            f"cannot read /proc/{pid}/stat: permission denied", "run as root, or pass --host-pid PID"
        ) from None
    except OSError:
        raise KubensError(f"no process with PID {pid}", "pass the PID of a host process to --host-pid") from None


def alive(pid: int, starttime: int) -> bool:
    """Is the process ``pid`` that started at ``starttime`` still there (and not a zombie)?"""
    st = stat_or_none(pid)
    return st is not None and st.starttime == starttime and st.state not in ("Z", "X")


# ---- who is PID 1 --------------------------------------------------------------------------------


@dataclass
class Pid1:
    pid: int
    name: str
    systemd: bool
    version: Optional[str]  # "252 (252.22-1~deb12u1)" for systemd

    def describe(self) -> str:
        if self.systemd:
            return f"systemd {self.version}" if self.version else "systemd (version unknown)"
        return f"{self.name}, not systemd"

    def as_dict(self) -> Dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "systemd": self.systemd,
            "version": self.version,
            "description": self.describe(),
        }


def parse_systemd_version(output: str) -> Optional[str]:
    """``systemd 252 (252.22-1~deb12u1)`` (first line of ``systemd --version``) -> ``252 (252.22-1~deb12u1)``."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    m = re.match(r"systemd\s+(\S.*)$", first.strip())
    return m.group(1).strip() if m else None


def identify(pid: int) -> Pid1:
    """What process ``pid`` is: systemd with its version, or its name (comm)."""
    name = procs.comm(pid) or "?"
    try:
        exe: Optional[str] = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    exe_name = os.path.basename(exe.replace(" (deleted)", "")) if exe else ""
    is_systemd = name == "systemd" or exe_name == "systemd"
    version = None
    if is_systemd and exe is not None:
        try:
            out = subprocess.run(
                [f"/proc/{pid}/exe", "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            version = parse_systemd_version(out)
        except (OSError, subprocess.SubprocessError):
            version = None
    return Pid1(pid, name, is_systemd, version)


# ---- scratch trees and their leftovers -----------------------------------------------------------


def scratch_dir(base: str, pid: int) -> str:
    return os.path.join(base, f"{SCRATCH_PREFIX}{pid}")


_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)$")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def mounts_under(top: str) -> List[mountinfo.Mount]:
    return [m for m in mountinfo.read() if _under(m.mount_point, top)]


def unmount_tree(top: str) -> int:
    """Detach every mount at or below ``top`` (MNT_DETACH takes a whole subtree at once). Returns how many."""
    for count in range(1000):
        found = mounts_under(top)
        if not found:
            return count
        shallowest = min(found, key=lambda m: (m.mount_point.count("/"), -m.mount_id))
        try:
            syscalls.umount2(shallowest.mount_point, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
    raise KubensError(f"cannot unmount everything below {top}", "unmount it by hand: umount -R -l " + top)


def remove_tree(top: str) -> None:
    """Unmount everything at or below ``top``, then delete it. Never deletes through a mount."""
    unmount_tree(top)
    if mounts_under(top):
        raise KubensError(f"mounts remain below {top}", "unmount them by hand: umount -R -l " + top)
    shutil.rmtree(top, ignore_errors=True)


@dataclass
class Leftover:
    path: str
    pid: int
    starttime: Optional[int]
    mounts: int

    @property
    def owner_alive(self) -> bool:
        if self.starttime is None:
            return stat_or_none(self.pid) is not None
        return alive(self.pid, self.starttime)


def _read_owner(path: str) -> Optional[Tuple[int, int]]:
    try:
        with open(os.path.join(path, "owner"), encoding="ascii") as f:
            pid_s, start_s = f.read().split()[:2]
        return int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None


def find_leftovers(base: str) -> List[Leftover]:
    """Scratch trees under ``base`` (directories or mounts named kubensctl-bench-PID)."""
    base = os.path.abspath(base)
    paths: Dict[str, int] = {}
    try:
        entries = os.listdir(base)
    except OSError:
        entries = []
    for entry in entries:
        m = _SCRATCH_RE.match(entry)
        if m:
            paths[os.path.join(base, entry)] = int(m.group(1))
    table = mountinfo.read()
    for mnt in table:
        if os.path.dirname(mnt.mount_point) == base:
            m = _SCRATCH_RE.match(os.path.basename(mnt.mount_point))
            if m:
                paths[mnt.mount_point] = int(m.group(1))
    out = []
    for path, pid in sorted(paths.items()):
        owner = _read_owner(path)
        count = sum(1 for mnt in table if _under(mnt.mount_point, path))
        out.append(Leftover(path, pid, owner[1] if owner and owner[0] == pid else None, count))
    return out


def cleanup_leftovers(base: str, say: Callable[[str], None]) -> List[Leftover]:
    """Remove scratch trees whose owning bench run is gone. Returns what was removed."""
    removed = []
    for left in find_leftovers(base):
        if left.owner_alive:
            continue
        remove_tree(left.path)
        say(f"removed the leftover scratch tree {left.path} of bench run {left.pid} ({left.mounts} mount(s))")
        removed.append(left)
    return removed


# ---- the guardian --------------------------------------------------------------------------------


def _guardian(rfd: int, top: str, owner_pid: int) -> None:
    """Child process: wait for EOF on ``rfd``; unless told "done", kill workers and remove ``top``."""
    try:
        os.setsid()
    except OSError:
        pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    os.chdir("/")
    workers: List[Tuple[int, int]] = []
    done = False
    buf = b""
    while True:
        try:
            chunk = os.read(rfd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words = line.decode().split()
            if words[:1] == ["worker"] and len(words) == 3:
                workers.append((int(words[1]), int(words[2])))
            elif words == ["done"]:
                done = True
    if done:
        os._exit(0)
    for pid, start in workers:
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p, s) for p, s in workers):
        time.sleep(0.02)
    try:
        remove_tree(top)
        msg = f"kubensctl bench: run {owner_pid} ended early; removed its scratch tree {top}\n"
    except BaseException as e:  # nothing may escape a forked child
        msg = f"kubensctl bench: could not remove {top} ({e}); run 'kubensctl bench --cleanup'\n"
    try:
        os.write(2, msg.encode())
    except OSError:
        pass
    os._exit(0)


# ---- workers and legs ----------------------------------------------------------------------------


@dataclass
class Leg:
    name: str
    pid1_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0  # the M mount/umount cycles
    setup_wall_seconds: float = 0.0  # mounting the N held mounts
    teardown_wall_seconds: float = 0.0  # unmounting them
    settle_seconds: float = 0.0  # waiting for PID 1 to go quiet afterwards
    phase_cpu_seconds: Dict[str, float] = field(default_factory=dict)
    cpu_by_pid: Dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "pid1_cpu_seconds": round(self.pid1_cpu_seconds, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "setup_wall_seconds": round(self.setup_wall_seconds, 4),
            "teardown_wall_seconds": round(self.teardown_wall_seconds, 4),
            "settle_seconds": round(self.settle_seconds, 3),
            "phase_pid1_cpu_seconds": {k: round(v, 4) for k, v in self.phase_cpu_seconds.items()},
        }


def _worker(top: str, n: int, m: int, interval: float, pin_fd: Optional[int], wfd: int, parent: int) -> None:
    """Forked child: (join the pin,) hold ``n`` tmpfs mounts, run ``m`` cycles, unmount, report on ``wfd``."""
    out = os.fdopen(wfd, "w", buffering=1)

    def check_parent() -> None:
        if os.getppid() != parent:
            os._exit(3)  # the parent died; the guardian cleans up

    try:
        if pin_fd is not None:
            syscalls.setns(pin_fd, syscalls.CLONE_NEWNS, "pin")
            os.close(pin_fd)
        held_dir = os.path.join(top, "held")
        churn = os.path.join(top, "churn")
        step_n = max(1, n // 10)
        step_m = max(1, m // 10)
        t0 = time.monotonic()
        print("phase setup", file=out)
        for i in range(n):
            syscalls.mount("tmpfs", os.path.join(held_dir, str(i)), "tmpfs", _TMPFS_FLAGS, _TMPFS_DATA)
            if (i + 1) % step_n == 0:
                check_parent()
                print(f"progress setup {i + 1}", file=out)
        t1 = time.monotonic()
        print("phase churn", file=out)
        for j in range(m):
            syscalls.mount("tmpfs", churn, "tmpfs", _TMPFS_FLAGS, _TMPFS_DATA)
            syscalls.umount2(churn)
            if interval > 0:
                time.sleep(interval)
            if (j + 1) % step_m == 0:
                check_parent()
                print(f"progress churn {j + 1}", file=out)
        t2 = time.monotonic()
        print("phase teardown", file=out)
        for i in reversed(range(n)):
            syscalls.umount2(os.path.join(held_dir, str(i)))
        t3 = time.monotonic()
        print("done " + json.dumps({"setup": t1 - t0, "churn": t2 - t1, "teardown": t3 - t2}), file=out)
        out.flush()
        os._exit(0)
    except BaseException as e:
        try:
            text = str(e) if not isinstance(e, OSError) else f"{e.strerror} ({e.filename})"
            print(f"error {text}", file=out)
            out.flush()
        finally:
            os._exit(1)


def _settle(pids: Sequence[int], quiet: float) -> float:
    """Wait until the summed CPU of ``pids`` has not moved for ``quiet`` seconds. Returns the wait."""
    t0 = time.monotonic()
    if quiet <= 0:
        return 0.0

    def total() -> int:
        return sum(st.cpu_ticks for st in (stat_or_none(p) for p in pids) if st is not None)

    last = total()
    last_change = time.monotonic()
    while time.monotonic() - t0 < SETTLE_MAX_SECONDS:
        time.sleep(_SAMPLE_INTERVAL)
        now = total()
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            break
    return time.monotonic() - t0


class Interrupted(KubensError):
    """SIGINT/SIGTERM/SIGHUP during a bench: raised after the scratch tree is gone."""


class Session:
    """A scratch tree, its guardian, and the workers that churn in it. A context manager."""

    def __init__(self, base: str, say: Callable[[str], None]) -> None:
        self.base = os.path.abspath(base)
        self.say = say
        self.top = scratch_dir(self.base, os.getpid())
        self.guard_w: Optional[int] = None
        self.guard_pid: Optional[int] = None
        self.workers: List[int] = []
        self._old_handlers: Dict[int, Any] = {}

    # -- lifecycle

    def __enter__(self) -> Session:
        if not os.path.isdir(self.base):
            raise KubensError(f"{self.base} does not exist", "pass an existing directory to --scratch-base")
        cleanup_leftovers(self.base, self.say)
        if os.path.lexists(self.top):
            remove_tree(self.top)
        self._install_signals()
        try:
            os.mkdir(self.top, 0o700)
            me = read_stat(os.getpid())
            atomic_write(os.path.join(self.top, "owner"), f"{me.pid} {me.starttime}\n")
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # guardian
                try:
                    os.close(w)
                    _guardian(r, self.top, me.pid)
                finally:
                    os._exit(1)
            os.close(r)
            self.guard_w, self.guard_pid = w, pid
            os.set_inheritable(w, False)
            # A shared tree of our own: bind onto itself, private (a new peer group), then rshared.
            syscalls.mount(self.top, self.top, None, syscalls.MS_BIND)
            syscalls.mount(None, self.top, None, syscalls.MS_PRIVATE)
            syscalls.mount(None, self.top, None, syscalls.MS_REC | syscalls.MS_SHARED)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            for pid in self.workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (OSError, ChildProcessError):
                    pass
            self.workers.clear()
            if os.path.lexists(self.top):
                remove_tree(self.top)
            if self.guard_w is not None:
                try:
                    os.write(self.guard_w, b"done\n")
                except OSError:
                    pass
                os.close(self.guard_w)
                self.guard_w = None
            if self.guard_pid is not None:
                try:
                    os.waitpid(self.guard_pid, 0)
                except ChildProcessError:
                    pass
                self.guard_pid = None
        finally:
            self._restore_signals()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _install_signals(self) -> None:
        def handler(signum: int, frame: object) -> None:
            raise Interrupted(
                f"interrupted by {signal.Signals(signum).name}",
                "the scratch tree was removed; the mount table is as it was",
                exit_code=128 + signum,
            )

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    # -- legs

    def prepare(self, leg: str, n: int) -> str:
        """Directories for one leg: LEG/held/0..n-1 and LEG/churn (plain directories, no mounts)."""
        top = os.path.join(self.top, leg)
        held = os.path.join(top, "held")
        os.makedirs(held, exist_ok=True)
        os.makedirs(os.path.join(top, "churn"), exist_ok=True)
        for i in range(n):
            os.mkdir(os.path.join(held, str(i)))
        return top

    def run_leg(
        self,
        leg: Leg,
        n: int,
        m: int,
        watch: Sequence[int],
        pin: Optional[str] = None,
        interval: float = 0.0,
        settle: float = SETTLE_QUIET_SECONDS,
        progress: Optional[Callable[[str], None]] = None,
    ) -> Leg:
        """Run one leg in a worker (inside the namespace pinned at ``pin``, if given).

        ``watch[0]`` is the process whose CPU is the leg's ``pid1_cpu_seconds`` (PID 1 or --host-pid);
        every watched pid's CPU goes into ``cpu_by_pid``.
        """
        top = self.prepare(leg.name, n)
        pin_fd = namespace.open_namespace(pin) if pin is not None else None
        assert self.guard_w is not None
        _settle(watch[:1], settle)  # start from a quiet PID 1 (it may still digest the pin's mounts)
        before = {p: _ticks(p) for p in watch}
        phase_start = before[watch[0]]
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                if self.guard_w is not None:
                    os.close(self.guard_w)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                _worker(top, n, m, interval, pin_fd, w, parent)
            finally:
                os._exit(1)
        self.workers.append(pid)
        os.close(w)
        if pin_fd is not None:
            os.close(pin_fd)  # an open file on the pin would keep its mount busy at stop
        st = stat_or_none(pid)
        os.write(self.guard_w, f"worker {pid} {st.starttime if st else 0}\n".encode())
        done: Optional[Dict[str, float]] = None
        error: Optional[str] = None
        phase = "setup"
        last_said = time.monotonic()
        with os.fdopen(r, "r") as lines:
            for raw in lines:
                words = raw.rstrip("\n").split(" ", 2)
                if words[0] == "phase" and len(words) > 1:
                    now = _ticks(watch[0])
                    leg.phase_cpu_seconds[phase] = (now - phase_start) / CLK_TCK
                    phase_start, phase = now, words[1]
                elif words[0] == "progress" and progress is not None and len(words) == 3:
                    total = n if words[1] == "setup" else m
                    if time.monotonic() - last_said >= _PROGRESS_EVERY or words[2] == str(total):
                        verb = "holding mounts" if words[1] == "setup" else "mount/umount cycles"
                        progress(f"{leg.name} leg: {verb} {words[2]}/{total}")
                        last_said = time.monotonic()
                elif words[0] == "done":
                    done = json.loads(raw[5:])
                elif words[0] == "error":
                    error = raw[6:].strip()
        _, status = os.waitpid(pid, 0)
        self.workers.remove(pid)
        now = _ticks(watch[0])
        leg.phase_cpu_seconds[phase] = (now - phase_start) / CLK_TCK
        if done is None:
            code = os.waitstatus_to_exitcode(status)
            raise KubensError(
                f"the {leg.name} leg failed: {error or f'worker exited with {code}'}",
                "rerun with --debug; the scratch tree was removed",
            )
        leg.settle_seconds = _settle(watch, settle)
        after = {p: _ticks(p) for p in watch}
        leg.phase_cpu_seconds["settle"] = (after[watch[0]] - now) / CLK_TCK
        leg.cpu_by_pid = {p: max(0, after[p] - before[p]) / CLK_TCK for p in watch}
        leg.pid1_cpu_seconds = leg.cpu_by_pid[watch[0]]
        leg.setup_wall_seconds = done["setup"]
        leg.wall_seconds = done["churn"]
        leg.teardown_wall_seconds = done["teardown"]
        shutil.rmtree(top, ignore_errors=True)
        return leg

    def pin(self) -> namespace.Paths:
        """Pin a temporary namespace exactly as kubens.service does (``kubensctl start``)."""
        paths = namespace.Paths(os.path.join(self.top, "kubens"))
        namespace.start(paths)
        return paths


def _ticks(pid: int) -> int:
    st = stat_or_none(pid)
    return st.cpu_ticks if st is not None else 0


# ---- bench ---------------------------------------------------------------------------------------


@dataclass
class BenchResult:
    pid1: Pid1
    mounts: int
    cycles: int
    interval: float
    shared: Leg
    encapsulated: Leg
    same_namespace: Optional[bool]
    started: float
    hostname: str = field(default_factory=socket.gethostname)
    kernel: str = field(default_factory=lambda: os.uname().release)

    @property
    def ratio(self) -> Optional[float]:
        if self.shared.pid1_cpu_seconds <= 0:
            return None
        return self.encapsulated.pid1_cpu_seconds / self.shared.pid1_cpu_seconds

    def as_dict(self) -> Dict[str, Any]:
        ratio = self.ratio
        return {
            "version": RESULT_VERSION,
            "timestamp": round(self.started, 3),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "hostname": self.hostname,
            "kernel": self.kernel,
            "pid1": self.pid1.as_dict(),
            "host_pid_namespace_checked": self.same_namespace,
            "mounts": self.mounts,
            "cycles": self.cycles,
            "interval_seconds": self.interval,
            "clock_ticks_per_second": CLK_TCK,
            "shared": self.shared.as_dict(),
            "encapsulated": self.encapsulated.as_dict(),
            "ratio": None if ratio is None else round(ratio, 6),
        }


def check_bounds(mounts: int, cycles: int, interval: float = 0.0) -> None:
    if not 0 <= mounts <= MAX_MOUNTS:
        raise UsageError(f"--mounts must be between 0 and {MAX_MOUNTS}, not {mounts}", "pick a count in that range")
    if not 0 <= cycles <= MAX_CYCLES:
        raise UsageError(f"--cycles must be between 0 and {MAX_CYCLES}, not {cycles}", "pick a count in that range")
    if not 0 <= interval <= MAX_INTERVAL:
        raise UsageError(
            f"--interval must be between 0 and {MAX_INTERVAL:g} seconds, not {interval:g}", "pick a pause in that range"
        )
    if mounts == 0 and cycles == 0:
        raise UsageError("--mounts 0 with --cycles 0 measures nothing", "give at least one mount or one cycle")


def check_headroom(mounts: int) -> None:
    """Refuse when the held mounts would hit fs.mount-max (the kernel's per-namespace limit)."""
    try:
        with open("/proc/sys/fs/mount-max", encoding="ascii") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return
    current = len(mountinfo.read())
    if current + mounts + _OVERHEAD_MOUNTS > limit:
        raise UsageError(
            f"--mounts {mounts} would exceed fs.mount-max ({limit}; {current} mounts exist already)",
            f"use at most {max(0, limit - current - _OVERHEAD_MOUNTS)}",
        )


def check_namespace(host_pid: int) -> Optional[bool]:
    """True when this process runs in ``host_pid``'s mount namespace, None when that cannot be read."""
    try:
        host = procs.mntns(host_pid)
    except FileNotFoundError:
        raise KubensError(f"no process with PID {host_pid}", "pass the PID of a host process to --host-pid") from None
    except OSError:
        return None
    mine = procs.mntns("self")
    if host != mine:
        raise KubensError(
            f"this process runs in mount namespace {mine}, not PID {host_pid}'s {host}: "
            "the shared leg would not reach it",
            "run kubensctl bench from a host shell (not through kubensenter or nsenter)",
        )
    return True


def run_bench(
    mounts: int,
    cycles: int,
    host_pid: int = 1,
    scratch_base: str = DEFAULT_SCRATCH_BASE,
    settle: float = SETTLE_QUIET_SECONDS,
    say: Callable[[str], None] = lambda s: None,
    interval: float = DEFAULT_INTERVAL,
) -> BenchResult:
    check_bounds(mounts, cycles, interval)
    if os.geteuid() != 0:
        raise PermissionDenied("kubensctl bench needs root: it mounts tmpfs file systems", "run it as root")
    check_headroom(mounts)
    cpu_seconds(host_pid)  # fail early with a clear line when PID 1's stat is unreadable
    pid1 = identify(host_pid)
    same = check_namespace(host_pid)
    say(f"PID {host_pid} is {pid1.describe()}")
    if same is None:
        say(f"cannot read PID {host_pid}'s mount namespace; assuming this process runs in it")
    started = time.time()
    with Session(scratch_base, say) as s:
        say(f"scratch tree {s.top} (shared); {mounts} held tmpfs mounts, {cycles} mount/umount cycles per leg")
        shared = s.run_leg(Leg("shared"), mounts, cycles, [host_pid], None, interval, settle, say)
        say(f"shared leg: PID {host_pid} used {shared.pid1_cpu_seconds:.2f} s CPU")
        paths = s.pin()
        say(f"pinned a temporary namespace at {paths.mnt}, as kubens.service does")
        enc = s.run_leg(Leg("encapsulated"), mounts, cycles, [host_pid], paths.mnt, interval, settle, say)
        namespace.stop(paths, force=True)
        say(f"encapsulated leg: PID {host_pid} used {enc.pid1_cpu_seconds:.2f} s CPU; unpinned")
    return BenchResult(pid1, mounts, cycles, interval, shared, enc, same, started)


def conclusion(r: BenchResult) -> str:
    s, e = r.shared.pid1_cpu_seconds, r.encapsulated.pid1_cpu_seconds
    short = f"systemd {(r.pid1.version or '').split(' ')[0]}".strip() if r.pid1.systemd else r.pid1.name
    who = f"PID {r.pid1.pid} ({short})"
    tick = 1.0 / CLK_TCK
    if s < 2 * tick:
        return (
            f"{who} used no measurable CPU in the shared leg: it does not re-read the mount table, "
            "so encapsulation saves it nothing here (run this on a systemd node)"
        )
    ratio = r.ratio or 0.0
    if e < tick:
        return (
            f"Encapsulation hid the churn from {who}: {s:.2f} s of CPU in the shared leg, none measurable encapsulated"
        )
    return (
        f"Encapsulation cut {who}'s CPU under this churn from {s:.2f} s to {e:.2f} s "
        f"({100 * ratio:.1f}% of the shared leg, {1 / ratio:.0f}x less)"
    )


def render_bench(r: BenchResult) -> str:
    lines = [
        f"PID {r.pid1.pid}: {r.pid1.describe()}    {r.mounts} held tmpfs mounts, "
        f"{r.cycles} mount/umount cycles {1000 * r.interval:g} ms apart",
        "",
        f"  {'LEG':<14}{f'PID {r.pid1.pid} CPU':>12}{'CHURN WALL':>13}{'SETUP WALL':>13}{'TEARDOWN':>11}",
    ]
    for leg in (r.shared, r.encapsulated):
        lines.append(
            f"  {leg.name:<14}{leg.pid1_cpu_seconds:>10.2f} s{leg.wall_seconds:>11.3f} s"
            f"{leg.setup_wall_seconds:>11.3f} s{leg.teardown_wall_seconds:>9.3f} s"
        )
    ratio = r.ratio
    lines.append(f"  {'ratio':<14}{'-' if ratio is None else f'{100 * ratio:.2f}%':>12}")
    lines.append("")
    lines.append(conclusion(r))
    return "\n".join(lines)


def save_result(path: str, result: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        atomic_write(path, json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise KubensError(
            f"cannot save the result to {path}: {e.strerror}", "pass --result-file PATH or --no-save"
        ) from None


def load_result(path: str) -> Optional[Dict[str, Any]]:
    """The last saved bench result, or None when there is none (or it is unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# ---- watchers ------------------------------------------------------------------------------------

_WATCH_RE = re.compile(r"^/proc/(\d+)(?:/task/\d+)?/(mountinfo|mounts|mountstats)$")


@dataclass
class Watcher:
    pid: int
    name: str
    mntns: Optional[str]
    files: List[str]
    watched_ns: Optional[str]
    hidden: str  # "yes" | "no" | "unknown"
    cpu_seconds: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "pid": self.pid,
            "name": self.name,
            "namespace": self.mntns,
            "files": self.files,
            "watched_namespace": self.watched_ns,
            "encapsulation_hides_container_mounts": self.hidden,
        }
        if self.cpu_seconds is not None:
            d["cpu_seconds"] = round(self.cpu_seconds, 4)
        return d


def _fd_targets(pid: int) -> Iterator[str]:
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            yield os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue


def find_watchers(
    host_ns: Optional[str], pinned_ns: Optional[str], exclude: Sequence[int] = ()
) -> Tuple[List[Watcher], int]:
    """Processes with an open mount-table file. Returns (watchers, processes whose fds were unreadable)."""
    out = []
    denied = 0
    skip = set(exclude) | {os.getpid()}
    for pid in procs.pids():
        if pid in skip:
            continue
        try:
            files = sorted({t for t in _fd_targets(pid) if _WATCH_RE.match(t)})
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue
        if not files:
            continue
        ns = procs.mntns_or_none(pid)
        target = _WATCH_RE.match(files[0])
        assert target is not None
        tpid = int(target.group(1))
        watched = ns if tpid == pid else procs.mntns_or_none(tpid)
        if watched is not None and watched == pinned_ns:
            hidden = "no"
        elif watched is not None and watched == host_ns:
            hidden = "yes"
        else:
            hidden = "unknown"
        out.append(Watcher(pid, procs.comm(pid) or "?", ns, files, watched, hidden))
    return out, denied


def render_watchers(ws: List[Watcher], denied: int, host_pid: int) -> str:
    if not ws:
        lines = ["no process holds an open mount table (/proc/*/mountinfo, /proc/*/mounts)"]
    else:
        nw = max(4, *(len(w.name) for w in ws))
        head = f"  {'PID':>7}  {'NAME':<{nw}}  {'MOUNT NAMESPACE':<18}  {'HIDDEN':<7}"
        measured = any(w.cpu_seconds is not None for w in ws)
        lines = [
            f"{len(ws)} process(es) watch the mount table; HIDDEN: would encapsulation hide container mounts "
            f"from it (it watches PID {host_pid}'s namespace)",
            "",
            head + ("  CPU (churn)" if measured else "") + "  FILE",
        ]
        for w in ws:
            cpu = f"  {w.cpu_seconds:>9.2f} s" if w.cpu_seconds is not None else ""
            lines.append(
                f"  {w.pid:>7}  {w.name:<{nw}}  {w.mntns or '?':<18}  {w.hidden:<7}{cpu}  {', '.join(w.files)}"
            )
    if denied:
        lines.append(f"({denied} process(es) could not be inspected: run as root to see them)")
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------------


def _stderr(line: str) -> None:
    print(f"kubensctl bench: {line}", file=sys.stderr, flush=True)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.cleanup:
        removed = cleanup_leftovers(args.scratch_base, lambda s: print(s))
        if not removed:
            busy = [left.path for left in find_leftovers(args.scratch_base) if left.owner_alive]
            extra = f" ({len(busy)} belong to running benches)" if busy else ""
            print(f"no leftovers of kubensctl bench under {os.path.abspath(args.scratch_base)}{extra}")
        return 0
    say: Callable[[str], None] = (lambda s: None) if args.quiet else _stderr
    try:
        result = run_bench(args.mounts, args.cycles, args.host_pid, args.scratch_base, args.settle, say, args.interval)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted by SIGINT", "the scratch tree was removed; the mount table is as it was", exit_code=130
        ) from None
    doc = result.as_dict()
    if not args.no_save:
        save_result(args.result_file, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_bench(result))
    return 0


def _cmd_watchers(args: argparse.Namespace) -> int:
    try:
        host_ns: Optional[str] = procs.mntns(args.host_pid)
    except OSError:
        host_ns = None
    state, _, pinned_ns = namespace.probe_pin(namespace.Paths(args.runtime_dir).mnt)
    ws, denied = find_watchers(host_ns, pinned_ns if state == namespace.PIN_MNT else None)
    if args.measure:
        check_bounds(args.mounts, args.cycles)
    if args.measure and ws:
        if os.geteuid() != 0:
            raise PermissionDenied("watchers --measure needs root: it mounts tmpfs file systems", "run it as root")
        say: Callable[[str], None] = (lambda s: None) if args.json else _stderr
        pids = [w.pid for w in ws]
        with Session(args.scratch_base, say) as s:
            leg = s.run_leg(Leg("measure"), args.mounts, args.cycles, pids, None, DEFAULT_INTERVAL, progress=say)
        for w in ws:
            w.cpu_seconds = leg.cpu_by_pid.get(w.pid)
    if args.json:
        doc = {
            "host": {"pid": args.host_pid, "namespace": host_ns},
            "pinned": {"path": namespace.Paths(args.runtime_dir).mnt, "namespace": pinned_ns},
            "watchers": [w.as_dict() for w in ws],
            "uninspectable_processes": denied,
        }
        if args.measure:
            doc["churn"] = {"mounts": args.mounts, "cycles": args.cycles}
        print(json.dumps(doc, indent=2))
    else:
        print(render_watchers(ws, denied, args.host_pid))
    return 0


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="measure PID 1's CPU under a mount churn, shared vs encapsulated",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--mounts",
        type=_int_arg,
        default=DEFAULT_MOUNTS,
        metavar="N",
        help=f"tmpfs mounts held during the churn, like containers' mounts (0..{MAX_MOUNTS}, default {DEFAULT_MOUNTS})",
    )
    p.add_argument(
        "--cycles",
        type=_int_arg,
        default=DEFAULT_CYCLES,
        metavar="M",
        help=f"mount/umount cycles, like containers starting and stopping (0..{MAX_CYCLES}, default {DEFAULT_CYCLES})",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"pause after each cycle, as containers come and go (default {DEFAULT_INTERVAL})",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cleanup", action="store_true", help="only remove scratch trees left by killed runs, then exit")
    namespace.add_host_pid(p, "the host process whose CPU and namespace count")
    p.add_argument(
        "--scratch-base",
        default=DEFAULT_SCRATCH_BASE,
        metavar="DIR",
        help="where the scratch tree kubensctl-bench-PID is made (default: /run)",
    )
    p.add_argument(
        "--result-file",
        default=DEFAULT_RESULT_FILE,
        metavar="PATH",
        help=f"where the result is saved for 'kubensctl metrics' (default: {DEFAULT_RESULT_FILE})",
    )
    p.add_argument("--no-save", action="store_true", help="do not save the result")
    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE_QUIET_SECONDS,
        metavar="SECONDS",
        help=f"a leg ends when PID 1's CPU has not moved for this long (default {SETTLE_QUIET_SECONDS})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("watchers", help="processes that re-read the mount table, and whether encapsulation hides it")
    namespace.add_runtime_dir(p)
    namespace.add_host_pid(p, "the host process whose CPU and namespace count")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--measure", action="store_true", help="also measure each watcher's CPU during a short churn")
    p.add_argument("--mounts", type=_int_arg, default=100, metavar="N", help="held mounts for --measure (default 100)")
    p.add_argument("--cycles", type=_int_arg, default=200, metavar="M", help="cycles for --measure (default 200)")
    p.add_argument("--scratch-base", default=DEFAULT_SCRATCH_BASE, metavar="DIR", help="scratch tree base (/run)")
    p.set_defaults(func=_cmd_watchers)


__all__ = [
    "BenchResult",
    "Leg",
    "Pid1",
    "ProcStat",
    "Session",
    "Watcher",
    "check_bounds",
    "cpu_seconds",
    "find_leftovers",
    "find_watchers",
    "identify",
    "load_result",
    "parse_stat",
    "parse_systemd_version",
    "run_bench",
]
