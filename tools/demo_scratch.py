#!/usr/bin/env python3
"""A small, real demonstration without a systemd node (issue 2's demo; `make demo-scratch`).

A shared scratch tree stands in for a node's shared `/`; copies of sleep named kubelet and crio stand
in for the Kubernetes processes. Everything is real: mount namespaces, mounts, kubensctl, kubensenter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))
ENV.pop("KUBENSMNT", None)


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def sh(argv: List[str], env: Optional[Dict[str, str]] = None, check: bool = True) -> int:
    print("$ " + " ".join(argv), flush=True)
    r = subprocess.run(argv, env=env or ENV)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} failed with {r.returncode}")
    return r.returncode


def kctl(*args: str, check: bool = True) -> int:
    return sh([sys.executable, "-m", "kubensctl", *args], check=check)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it makes real mounts and namespaces)", file=sys.stderr)
        return 1
    d = tempfile.mkdtemp(prefix="kubensctl-demo-")
    procs: List[subprocess.Popen[bytes]] = []
    rt = os.path.join(d, "run", "kubens")
    pin = os.path.join(rt, "mnt")
    me = str(os.getpid())
    try:
        step("A shared scratch tree stands in for a node's / (shared, as systemd makes it)")
        subprocess.run(["mount", "--bind", d, d], check=True)
        subprocess.run(["mount", "--make-rshared", d], check=True)
        os.makedirs(os.path.join(d, "bin"))
        for name in ("kubelet", "crio"):
            shutil.copy(shutil.which("sleep") or "/bin/sleep", os.path.join(d, "bin", name))

        def run_fakes(through_kubensenter: bool) -> None:
            for name in ("crio", "kubelet"):
                argv = [os.path.join(d, "bin", name), "600"]
                if through_kubensenter:
                    argv = [sys.executable, "-m", "kubensctl.enter", *argv]
                procs.append(subprocess.Popen(argv, env=dict(ENV, KUBENSMNT=pin) if through_kubensenter else ENV))
            time.sleep(0.3)

        def stop_fakes() -> None:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait()
            procs.clear()

        status = ["status", "--runtime-dir", rt, "--host-pid", me, "--process", "kubelet", "--process", "crio"]
        step("Before: kubelet and crio share the host's mount namespace")
        run_fakes(False)
        kctl(*status, check=False)

        step("Pin the Kubernetes mount namespace (what kubens.service runs)")
        kctl("start", "--runtime-dir", rt)
        step("Restart kubelet and crio through kubensenter (what the wrapped units do)")
        stop_fakes()
        run_fakes(True)
        kctl(*status, check=False)

        step("A container makes a mount inside; the host does not see it")
        target = os.path.join(d, "var", "lib", "kubelet", "pods", "demo-pod", "volumes", "empty-dir")
        os.makedirs(target)
        sh(
            [sys.executable, "-m", "kubensctl.enter", "mount", "-t", "tmpfs", "demo-volume", target],
            env=dict(ENV, KUBENSMNT=pin),
        )
        print("inside (kubensenter findmnt):", flush=True)
        sh([sys.executable, "-m", "kubensctl.enter", "findmnt", target], env=dict(ENV, KUBENSMNT=pin))
        print("host (findmnt):", flush=True)
        rc = sh(["findmnt", target], check=False)
        print(f"-> findmnt exit {rc}: the host does not see the container mount", flush=True)
        kctl("mounts", "--runtime-dir", rt, "--host-pid", me)

        step("Stop refuses while kubelet runs inside (that is how a split brain starts)")
        kctl("stop", "--runtime-dir", rt, check=False)
        step("Stop kubelet and crio, then unpin")
        stop_fakes()
        kctl("stop", "--runtime-dir", rt)
        kctl(*status, check=False)
        return 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
            mp = line.split()[4]
            if mp == d or mp.startswith(d + "/"):
                subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
