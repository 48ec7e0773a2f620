"""Helpers for root tests: real mount namespaces in uniquely named temp trees, always cleaned up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def run(cmd: List[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


def env_with_src(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("KUBENSMNT", None)
    env.pop("DEFAULT_KUBENSMNT", None)
    env.pop("KUBENSENTER_LOG", None)
    if extra:
        env.update(extra)
    return env


def kubensctl(*args: str, check: bool = False, env: Optional[dict] = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "kubensctl", *args], check=check, env=env_with_src(env))


def mounts_under(root: str) -> List[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == root or mp.startswith(root + "/"):
                out.append(mp)
    return out


def unmount_all(root: str) -> None:
    """Unmount everything at or below ``root``, deepest first (lazily, so nothing can keep it busy)."""
    for _ in range(3):
        mps = mounts_under(root)
        if not mps:
            return
        for mp in sorted(mps, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)


class Scratch:
    """A shared scratch tree: ``mount --bind D D; mount --make-rshared D`` (as / is on a real node)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kubensctl-test-")
        run(["mount", "--bind", self.dir, self.dir])
        run(["mount", "--make-rshared", self.dir])
        self.runtime_dir = os.path.join(self.dir, "run", "kubens")
        self.pin = os.path.join(self.runtime_dir, "mnt")
        self.procs: List[subprocess.Popen[bytes]] = []

    def path(self, *parts: str) -> str:
        p = os.path.join(self.dir, *parts)
        return p

    def spawn(self, argv: List[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p  # type: ignore[no-any-return]

    def fake(self, name: str) -> str:
        """A copy of sleep(1) named ``name``, so comm and pgrep see that name."""
        path = self.path("bin", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
        return path

    def start_in(self, pin: Optional[str], name: str) -> subprocess.Popen[bytes]:
        """Start a fake process called ``name`` inside the namespace at ``pin`` (None: here)."""
        exe = self.fake(name)
        argv = [exe, "600"] if pin is None else ["nsenter", f"--mount={pin}", exe, "600"]
        p = self.spawn(argv)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                with open(f"/proc/{p.pid}/comm") as f:
                    if f.read().strip() == name:
                        return p
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"fake {name} did not start")

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        unmount_all(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def ns_of(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def mountinfo_in(pin: str) -> List[str]:
    """Mount points seen inside the namespace at ``pin``, read with util-linux nsenter (not our code)."""
    out = run(["nsenter", f"--mount={pin}", "cat", "/proc/self/mountinfo"]).stdout
    return [line.split()[4].replace("\\040", " ") for line in out.splitlines()]
