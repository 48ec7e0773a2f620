"""Smoke tests of the systemd test node itself (tools/testnode.py): real systemd, containerd, podman.

Before any encapsulation all of these share the node's one mount namespace, so container-runtime mounts
show up in PID 1's mount table; the propagation modes of the podman volumes decide which container sees
which mount (Kubernetes Bidirectional = rshared, HostToContainer = rslave, None = private).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testnode

pytestmark = pytest.mark.requires_node

VOL = "/srv/smoke-vol"


def test_pid1_is_systemd_and_running(node: testnode.Node) -> None:
    assert Path(f"/proc/{node.pid1}/comm").read_text().strip() == "systemd"
    assert node.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert node.run(["systemctl", "is-system-running"], check=False).stdout.strip() in ("running", "degraded")
    assert node.node_pid(node.pid1) == 1 and node.host_pid(1) == node.pid1
    # The node shares no mount namespace with this test process.
    assert node.mnt_ns(node.pid1) != os.readlink("/proc/self/ns/mnt")
    # The repo's src is bound read-only and importable.
    r = node.run(["python3", "-c", "import kubensctl, sys; print(kubensctl.__file__)"],
                 env={"PYTHONPATH": testnode.SRC_MOUNT})
    assert r.stdout.startswith(testnode.SRC_MOUNT)
    assert node.run(["touch", f"{testnode.SRC_MOUNT}/x"], check=False).returncode != 0


def test_run_as_the_non_root_user(node: testnode.Node) -> None:
    r = node.run(["id", "-un"], user=testnode.NODE_USER)
    assert r.stdout.strip() == testnode.NODE_USER
    assert node.run(["cat", "/proc/1/mountinfo"], user=testnode.NODE_USER, check=False).returncode == 0
    with pytest.raises(testnode.NodeCommandError, match="exited 1"):
        node.run(["false"])
    assert node.run("echo $HOME; cat", input="in\n").stdout == "/root\nin\n"


def test_standin_kubelet_mounts_in_its_namespace(node: testnode.Node) -> None:
    kubelet = node.wait_for_kubelet()
    assert Path(f"/proc/{kubelet}/comm").read_text().strip() == "kubelet"
    paths = testnode.kubelet_volume_paths()
    assert len(paths) == 2 * testnode.KUBELET_POD_COUNT
    # Not encapsulated: kubelet and PID 1 share a namespace, so PID 1 sees kubelet's volume mounts.
    assert node.mnt_ns(kubelet) == node.mnt_ns(node.pid1)
    for points in (node.mount_points(kubelet), node.mount_points()):
        assert set(paths) <= set(points)
    assert node.run(["cat", paths[1] + "/token"]).stdout == "not-a-real-token\n"
    node.run(["systemctl", "stop", "kubelet.service"])
    assert not set(paths) & set(node.mount_points())
    node.run(["systemctl", "start", "kubelet.service"])
    node.wait_for_kubelet()
    assert set(paths) <= set(node.mount_points())


def test_ctr_container_overlay_in_containerd_namespace(node: testnode.Node) -> None:
    containerd = node.start_containerd()
    assert Path(f"/proc/{containerd}/comm").read_text().strip() == "containerd"
    task = node.ctr_run("smoke-ctr", privileged=True)
    try:
        rootfs = f"/run/containerd/io.containerd.runtime.v2.task/{testnode.CTR_NAMESPACE}/smoke-ctr/rootfs"
        seen = {m.mount_point: m for m in node.mounts(containerd)}
        assert rootfs in seen and seen[rootfs].fstype == "overlay"
        assert rootfs in node.mount_points()  # same namespace as PID 1 before encapsulation
        # Inside the container its own root is that overlay.
        assert [m.fstype for m in node.mounts(task) if m.mount_point == "/"] == ["overlay"]
        node.container_mount("ctr", "smoke-ctr", "/tmp/inner")
        assert "/tmp/inner" in node.mount_points(task)
        assert not any(p.endswith("/tmp/inner") for p in node.mount_points())
    finally:
        node.ctr_rm("smoke-ctr")
    assert rootfs not in node.mount_points(containerd)


def test_podman_volume_propagation(node: testnode.Node) -> None:
    modes = {"bidir": "rshared", "h2c": "rslave", "none": "private"}
    pids = {}
    try:
        for name, prop in modes.items():
            pids[name] = node.podman_run(f"smoke-{name}", (VOL, "/vol", prop))
        for name in modes:
            node.container_mount("podman", f"smoke-{name}", f"/vol/{name}")
        host = set(node.mount_points())
        # Bidirectional: the container's mount propagates back to the node (PID 1's namespace).
        assert f"{VOL}/bidir" in host
        assert f"{VOL}/h2c" not in host and f"{VOL}/none" not in host
        seen = {name: set(node.mount_points(pid)) for name, pid in pids.items()}
        assert {"/vol/bidir"} <= seen["bidir"] and not {"/vol/h2c", "/vol/none"} & seen["bidir"]
        # HostToContainer: receives the bidirectional container's mount via the node, keeps its own.
        assert {"/vol/bidir", "/vol/h2c"} <= seen["h2c"] and "/vol/none" not in seen["h2c"]
        # None: sees only its own.
        assert "/vol/none" in seen["none"] and not {"/vol/bidir", "/vol/h2c"} & seen["none"]
        # podman's container root filesystems are overlays in the node's namespace too.
        assert any(m.fstype == "overlay" and m.mount_point.startswith("/var/lib/containers/storage/overlay/")
                   for m in node.mounts())
    finally:
        for name in modes:
            node.podman_rm(f"smoke-{name}")
    node.run(["umount", "-R", f"{VOL}/bidir"], check=False)


def test_reboot_keeps_the_disk(node: testnode.Node) -> None:
    node.write_file("/var/lib/smoke/marker", "kept\n")
    node.start_containerd()
    node.ctr_import()
    old = node.pid1
    took = node.reboot()
    print(f"reboot took {took:.1f} s")
    assert node.pid1 != old
    assert node.run(["cat", "/var/lib/smoke/marker"]).stdout == "kept\n"
    assert node.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    # Runtime storage (bind-mounted from the host) survives too: the imported image is still there.
    node.start_containerd()
    assert testnode.IMAGE in node.run(["ctr", "-n", testnode.CTR_NAMESPACE, "images", "ls", "-q"]).stdout
    node.wait_for_kubelet()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for the host's init to reap it counts as gone)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3] + " "
    except OSError:
        return False


def test_killed_owner_is_swept(node_rootfs: str) -> None:
    """A test run killed with SIGKILL leaves a running node; the next run's sweep removes it."""
    script = (
        "import sys, time, testnode\n"
        f"n = testnode.Node({node_rootfs!r}, progress=lambda m: None)\n"
        "n.boot()\n"
        "print(n.dir, n.pid1, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(testnode.__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        node_dir, pid1 = Path(line[0]), int(line[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert alive(pid1) and node_dir.exists()
        assert testnode.sweep_leftovers() >= 1
        deadline = time.monotonic() + 10
        while alive(pid1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid1)
        assert not node_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_standin_kubelet_mounts_in_a_private_namespace(node: testnode.Node) -> None:
    """Started in a mount namespace of its own (here systemd's PrivateMounts=), the stand-in's volume
    mounts are made there: the process sees them, PID 1 does not."""
    root = "/var/lib/kubelet-private"
    node.run(["systemd-run", "--unit=kubelet-private", "-p", "PrivateMounts=yes", "/usr/local/bin/kubelet",
              f"--root-dir={root}", "--state-dir=/run/kubelet-private", "--pods=1"])
    try:
        deadline = time.monotonic() + 20
        while node.run(["test", "-s", "/run/kubelet-private/mounts"], check=False).returncode != 0:
            assert time.monotonic() < deadline, node.run(["journalctl", "-u", "kubelet-private"]).stdout
            time.sleep(0.05)
        pid = node.service_pid("kubelet-private.service")
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "kubelet"
        assert node.mnt_ns(pid) != node.mnt_ns(node.pid1)
        paths = set(testnode.kubelet_volume_paths(1, root))
        assert paths <= set(node.mount_points(pid))
        assert not paths & set(node.mount_points())
    finally:
        node.run(["systemctl", "stop", "kubelet-private.service"], check=False)
