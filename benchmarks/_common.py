"""Shared helpers for the benchmarks: a scratch tree, timing loops, machine facts, result files.

Benchmarks are programs, never timed tests. Every number is reported next to a baseline measured in the
same run, on the same machine, interleaved with it (round-robin, shuffled), so drift and noise hit both.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")
RESULTS_DIR = os.path.join(REPO, "docs", "benchmarks")
EXIT_SKIPPED = 77  # like automake: "this benchmark cannot run here"

if SRC not in sys.path:
    sys.path.insert(0, SRC)


# ---- timing ----------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall times of one case, in seconds."""

    name: str
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]

    @property
    def minimum(self) -> float:
        return min(self.samples)


def spawn_wait(argv: Sequence[str], env: Dict[str, str]) -> float:
    """Wall time of one run of ``argv`` (posix_spawn + waitpid: the least overhead Python offers).

    Output goes wherever ours goes; callers point stdout/stderr at /dev/null around the loop.
    """
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), env)
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}")
    return dt


class Quiet:
    """Point fds 1 and 2 at /dev/null (children inherit them); restore on exit."""

    def __enter__(self) -> Quiet:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])


def interleaved(
    cases: Dict[str, Callable[[], float]],
    runs: int,
    warmup: int,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Timing]:
    """Run every case once per round, in a shuffled order, ``warmup`` + ``runs`` rounds.

    Each case is a callable returning its own wall time (so setup around the timed part is excluded).
    """
    out = {name: Timing(name) for name in cases}
    names = list(cases)
    rng = random.Random(1)
    for r in range(warmup + runs):
        rng.shuffle(names)
        for name in names:
            dt = cases[name]()
            if r >= warmup:
                out[name].samples.append(dt)
        if progress is not None:
            progress(r)
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# ---- machine and result files ---------------------------------------------------------------------


def machine() -> Dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = "?"
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count() or "?"),
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
    }


def machine_line(m: Dict[str, str]) -> str:
    return f"{m['cpu']} x{m['cpus']}, Linux {m['kernel']}, {m['distro']}, Python {m['python']}"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_results(name: str, markdown: str, rows: List[Dict[str, str]]) -> List[str]:
    """Write ``docs/benchmarks/NAME.md`` (latest run) and append ``rows`` to ``NAME.csv`` (history)."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    md_path = os.path.join(RESULTS_DIR, f"{name}.md")
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(markdown)
    os.replace(md_path + ".tmp", md_path)
    csv_path = os.path.join(RESULTS_DIR, f"{name}.csv")
    fields = list(rows[0]) if rows else []
    new = not os.path.exists(csv_path)
    if not new:
        with open(csv_path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
        if header != fields:  # columns changed: start a new history rather than mixing shapes
            os.replace(csv_path, csv_path + ".old")
            new = True
    with open(csv_path, "a", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
    return [md_path, csv_path]


def write_summary(path: Optional[str], summary: Dict[str, object]) -> None:
    """Machine-readable summary for benchmarks/run.py (``--summary FILE``)."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


def system_python() -> str:
    """The interpreter nodes run kubensctl with (/usr/bin/python3), else the one running this."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        print(f"{what}: skipped: needs root (real mount namespaces)", file=sys.stderr)
        raise SystemExit(EXIT_SKIPPED)


# ---- scratch tree -----------------------------------------------------------------------------------


def _mount_points_under(root: str) -> List[str]:
    from kubensctl import mountinfo

    prefix = root.rstrip("/") + "/"
    return [m.mount_point for m in mountinfo.read() if m.mount_point == root or m.mount_point.startswith(prefix)]


class Scratch:
    """A shared scratch tree (``mount --bind D D; mount --make-rshared D``), as ``/`` is on a systemd node.

    ``cleanup()`` kills every process registered with ``track()``, detaches the whole tree at once
    (umount2 MNT_DETACH: one syscall however many mounts are below; a pinned namespace whose pin goes
    away dies with its last process) and removes the directory only once nothing is mounted below it.
    It runs on normal exit, on exceptions and on SIGINT/SIGTERM/SIGHUP.
    """

    def __init__(self, prefix: str) -> None:
        from kubensctl import syscalls

        self.dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.pids: List[int] = []
        self.popens: List[subprocess.Popen[bytes]] = []
        self._cleaned = False
        try:
            syscalls.mount(self.dir, self.dir, None, syscalls.MS_BIND)
            syscalls.mount(None, self.dir, None, syscalls.MS_REC | syscalls.MS_SHARED)
        except BaseException:
            self.cleanup()
            raise
        self.runtime_dir = os.path.join(self.dir, "run", "kubens")
        self.pin = os.path.join(self.runtime_dir, "mnt")

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def track(self, pid: int) -> None:
        self.pids.append(pid)

    def fake(self, name: str) -> str:
        """A copy of sleep(1) called ``name``: the kernel's comm, and so kubensctl, see that name."""
        path = self.path("bin", name)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
        return path

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        from kubensctl import syscalls

        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for p in self.popens:
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in range(5):
            if not _mount_points_under(self.dir):
                break
            try:
                syscalls.umount2(self.dir, syscalls.MNT_DETACH)
            except OSError:
                time.sleep(0.1)
        left = _mount_points_under(self.dir)
        if left:
            print(f"warning: {len(left)} mount(s) left under {self.dir}; not removing it", file=sys.stderr)
            return
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class _Handlers:
    saved: Dict[int, object] = field(default_factory=dict)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class cleanup_on_signals:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``finally:`` blocks run; restore on exit."""

    def __enter__(self) -> cleanup_on_signals:
        self.h = _Handlers()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self.h.saved[sig] = signal.signal(sig, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.h.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
