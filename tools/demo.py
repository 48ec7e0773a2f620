#!/usr/bin/env python3
"""`make demo`: mount namespace encapsulation on a real systemd node, before and after.

1. Build (first run, about a minute) or reuse the cached Debian rootfs; boot it with systemd-nspawn.
2. Before: containerd and the stand-in kubelet run as enabled units; real containers run. Show
   `kubensctl status` and PID 1's CPU while the runtime churns container mounts.
3. `kubensctl install`, reboot the node, start the same workload.
4. After: the same status and churn measurement.
5. Print a before/after table, power off and remove the node (the cached rootfs stays for next time).

Everything is real: systemd 252 as PID 1, containerd + runc containers, kubensctl as laid by install.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import testnode

CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()

# Run on the node in containerd's mount namespace: hold N kubelet-style volume mounts, then M
# mount/umount cycles (a pod's volumes coming and going), paced like real container churn.
CHURN = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
held, cycles, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
base = "/var/lib/kubelet/pods/demo-churn/volumes/kubernetes.io~empty-dir"
def mount(path):
    os.makedirs(path, exist_ok=True)
    if libc.mount(b"demo", path.encode(), b"tmpfs", 0, b"size=64k") != 0:
        raise OSError(ctypes.get_errno(), "mount " + path)
def umount(path):
    if libc.umount2(path.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "umount " + path)
paths = [f"{base}/v{i}" for i in range(held)]
for p in paths:
    mount(p)
print("held", flush=True)
sys.stdin.readline()
t = time.monotonic()
for i in range(cycles):
    mount(f"{base}/churn")
    umount(f"{base}/churn")
    time.sleep(pause)
wall = time.monotonic() - t
for p in reversed(paths):
    umount(p)
print(wall, flush=True)
"""


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def cpu_ticks(host_pid: int) -> int:
    with open(f"/proc/{host_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)


@dataclass
class Phase:
    name: str
    readlinks: List[str] = field(default_factory=list)
    verdict: str = ""
    status_exit: int = -1
    status_text: str = ""
    pid1_mounts: int = 0
    kubelet_mounts: int = 0
    container_rootfs_in_pid1: bool = False
    container_rootfs_in_runtime: bool = False
    pid1_cpu: float = 0.0
    churn_wall: float = 0.0
    containers: int = 0


def kubensctl(node: testnode.Node, installed: bool, *args: str) -> subprocess.CompletedProcess[str]:
    if installed:
        return node.run(["/usr/local/bin/kubensctl", *args], check=False)
    return node.kubensctl(*args, check=False)


def measure(node: testnode.Node, phase: Phase, installed: bool, held: int, cycles: int, containers: int) -> None:
    kubelet = node.wait_for_kubelet()
    ctrd = node.service_pid("containerd.service")
    pid1 = node.pid1
    r = node.run(
        "readlink /proc/1/ns/mnt; readlink /proc/$(pgrep -x kubelet)/ns/mnt; "
        "readlink /proc/$(pgrep -x containerd)/ns/mnt"
    )
    phase.readlinks = r.stdout.split()
    say(f"{phase.name}: readlink PID 1 / kubelet / containerd: {' '.join(phase.readlinks)}")

    names = [f"demo{i}" for i in range(containers)]
    say(f"{phase.name}: starting {containers} real containers (containerd + runc)")
    for n in names:
        node.ctr_run(n)
    phase.containers = containers
    rootfs = f"/run/containerd/io.containerd.runtime.v2.task/{testnode.CTR_NAMESPACE}/{names[0]}/rootfs"
    phase.container_rootfs_in_pid1 = rootfs in node.mount_points(pid1)
    phase.container_rootfs_in_runtime = rootfs in node.mount_points(ctrd)

    st = kubensctl(node, installed, "status")
    phase.status_exit, phase.status_text = st.returncode, st.stdout
    phase.verdict = json.loads(kubensctl(node, installed, "status", "--json").stdout)["verdict"]
    print(st.stdout.rstrip(), flush=True)

    say(f"{phase.name}: churn in containerd's namespace: {held} held volume mounts, {cycles} mount/umount cycles")
    node.write_file("/root/demo-churn.py", CHURN)
    ctrd_node_pid = node.node_pid(ctrd)
    enter = ["nsenter", "-t", str(pid1), "-m", "-p", "-u", "-i", "--", "nsenter", "-t", str(ctrd_node_pid), "-m"]
    proc = subprocess.Popen(
        [*enter, "--", "python3", "/root/demo-churn.py", str(held), str(cycles), "0.01"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "held":
        raise SystemExit("demo: the churn helper failed to mount its volumes")
    phase.pid1_mounts = len(node.mount_points(pid1))
    phase.kubelet_mounts = len(node.mount_points(kubelet))
    time.sleep(1.0)  # let PID 1 finish reacting to the held mounts before measuring the churn
    before = cpu_ticks(pid1)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    phase.churn_wall = float(proc.stdout.readline())
    time.sleep(0.5)
    phase.pid1_cpu = (cpu_ticks(pid1) - before) / CLK_TCK
    proc.wait(timeout=60)
    say(f"{phase.name}: PID 1 used {phase.pid1_cpu:.2f} s CPU during {phase.churn_wall:.1f} s of churn")
    for n in names:
        node.ctr_rm(n)


def table(before: Phase, after: Phase) -> str:
    def yn(b: bool) -> str:
        return "yes" if b else "no"

    ratio = f"{after.pid1_cpu / before.pid1_cpu:.1%} of before" if before.pid1_cpu > 0 else "n/a (no CPU before)"
    rows = [
        ("PID 1 mount namespace", before.readlinks[0], after.readlinks[0]),
        ("kubelet mount namespace", before.readlinks[1], after.readlinks[1]),
        ("containerd mount namespace", before.readlinks[2], after.readlinks[2]),
        (
            "kubensctl status (exit)",
            f"{before.verdict} ({before.status_exit})",
            f"{after.verdict} ({after.status_exit})",
        ),
        ("mounts PID 1 sees (during churn)", str(before.pid1_mounts), str(after.pid1_mounts)),
        ("mounts kubelet sees", str(before.kubelet_mounts), str(after.kubelet_mounts)),
        ("container rootfs visible to PID 1", yn(before.container_rootfs_in_pid1), yn(after.container_rootfs_in_pid1)),
        (
            "container rootfs visible to runtime",
            yn(before.container_rootfs_in_runtime),
            yn(after.container_rootfs_in_runtime),
        ),
        ("PID 1 CPU during churn", f"{before.pid1_cpu:.2f} s", f"{after.pid1_cpu:.2f} s ({ratio})"),
        ("churn wall time", f"{before.churn_wall:.1f} s", f"{after.churn_wall:.1f} s"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len("before"), *(len(r[1]) for r in rows))
    out = [f"{'':<{w0}}  {'before':<{w1}}  after", f"{'-' * w0}  {'-' * w1}  {'-' * 24}"]
    out += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--held", type=int, default=1000, help="volume mounts held during the churn (default 1000)")
    p.add_argument("--cycles", type=int, default=300, help="mount/umount cycles (default 300)")
    p.add_argument("--containers", type=int, default=5, help="real containers to run (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: run as root (it boots a systemd node with systemd-nspawn)", file=sys.stderr)
        return 1
    reason = testnode.host_tools_ready()
    if reason:
        print(f"demo: cannot run a systemd node here: {reason}", file=sys.stderr)
        return 1

    say("rootfs: building or reusing the cached Debian bookworm node (first build: about a minute)")
    rootfs = testnode.ensure_rootfs(progress=lambda m: say(m))
    phases: Dict[str, Phase] = {}
    with testnode.Node(rootfs, progress=lambda m: say(m)) as node:
        out = node.run(["systemctl", "--version"]).stdout.splitlines()[0]
        say(f"node up: PID 1 is {out}")
        phases["before"] = Phase("before")
        measure(node, phases["before"], False, a.held, a.cycles, a.containers)

        say("kubensctl install (lays kubens.service, kubensenter, kubensctl; wraps containerd and kubelet)")
        print(node.kubensctl("install").stdout.rstrip(), flush=True)
        say("rebooting the node: encapsulation takes effect at boot")
        node.reboot()
        say(node.run(["kubensenter", "true"]).stderr.strip())
        phases["after"] = Phase("after")
        measure(node, phases["after"], True, a.held, a.cycles, a.containers)
        say("powering off and removing the node")
    before, after = phases["before"], phases["after"]
    print("\nBefore / after mount namespace encapsulation (real systemd node):\n", flush=True)
    print(table(before, after), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: v.__dict__ for k, v in phases.items()}, f, indent=2)
    ok = (
        before.readlinks[0] == before.readlinks[1] == before.readlinks[2]
        and after.readlinks[1] == after.readlinks[2] != after.readlinks[0]
        and after.status_exit == 0
        and not after.container_rootfs_in_pid1
    )
    say("done: " + ("encapsulation worked as the seed describes" if ok else "UNEXPECTED RESULT, see above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
