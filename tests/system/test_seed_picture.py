"""The seed's picture (7.4.1) with real podman containers on the systemd test node, before and after
encapsulation.

Three containers share one node volume ``SRC`` (a directory under /run, a shared mount on systemd),
mounted at ``/vol`` inside each, with Kubernetes' three propagation modes:

* container 1 ``c1``: Bidirectional (``rshared``), mounts a tmpfs at ``/vol/a`` (the seed's /run/a);
* container 2 ``c2``: HostToContainer (``rslave``), mounts ``/vol/b`` (the seed's /run/b);
* container 3 ``c3``: None (``private``), mounts ``/vol/c`` (the seed's /run/c).

Then a host process mounts ``SRC/h`` in PID 1's namespace (a systemd/host mount) and the kubelet side
mounts ``SRC/k`` in kubelet's namespace (a kubelet/runtime mount). Every context's view is read from the
host through ``/proc/PID/mountinfo`` (kernel state, nothing mocked): node contexts see ``SRC/x``,
containers ``/vol/x``. The contexts are systemd (the node's PID 1), a host OS process (a ``sleep`` an
admin started), kubelet (the stand-in ``kubelet.service``), the container runtime (the Kubernetes runtime
unit containerd, and podman's runtime side: the containers' conmon processes) and the three containers.

Before encapsulation podman runs plainly; after ``kubensctl install`` and a reboot it runs as an admin
must run it, through ``kubensenter`` (``kubensenter podman run ...``), so its conmons and containers live
in the pinned namespace beside kubelet and containerd.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Set, Tuple

import pytest
import testnode

pytestmark = pytest.mark.requires_node

Factory = Callable[[], testnode.Node]
Prefix = Sequence[str]

SRC = "/run/seed-vol"
DST = "/vol"
CONTAINERS = {"c1": "rshared", "c2": "rslave", "c3": "private"}  # Bidirectional, HostToContainer, None
OWN_MOUNT = {"c1": "a", "c2": "b", "c3": "c"}
MOUNTS = ("a", "b", "c", "h", "k")

NODE_SIDE = ("systemd", "host", "kubelet", "containerd", "conmon")
KUBE_SIDE = ("kubelet", "containerd", "conmon")

# Who sees each mount, as 7.4.1 lists it. h: made on the host; k: made in kubelet's namespace.
BEFORE: Dict[str, Set[str]] = {
    "a": {*NODE_SIDE, "c1", "c2"},  # container 1's mount reaches every shared context and container 2
    "b": {"c2"},  # container 2's mount stays in container 2
    "c": {"c3"},  # container 3's mount stays in container 3
    "h": {*NODE_SIDE, "c1", "c2"},  # host mounts reach containers 1 and 2, never container 3
    "k": {*NODE_SIDE, "c1", "c2"},  # one namespace: a kubelet mount is a host mount
}
AFTER: Dict[str, Set[str]] = {
    "a": {*KUBE_SIDE, "c1", "c2"},  # no longer seen by systemd or host processes
    "b": {"c2"},
    "c": {"c3"},
    "h": {*NODE_SIDE, "c1", "c2"},  # host mounts still propagate in
    "k": {*KUBE_SIDE, "c1", "c2"},  # kubelet/runtime mounts stay in the Kubernetes namespace
}
# After encapsulation, but podman run plainly (outside the namespace): the admin's mistake. Its conmons
# sit in PID 1's namespace, container 1's mount reaches systemd again and kubelet's never reach the pods.
OUTSIDE: Dict[str, Set[str]] = {
    "a": {*NODE_SIDE, "c1", "c2"},
    "b": {"c2"},
    "c": {"c3"},
    "h": {*NODE_SIDE, "c1", "c2"},
    "k": {"kubelet", "containerd"},
}


# ----------------------------------------------------------------------------------------------------
# podman, plainly or through kubensenter (prefix)


def podman(node: testnode.Node, prefix: Prefix, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return node.run([*prefix, "podman", *args], check=check)


def start_container(node: testnode.Node, prefix: Prefix, name: str, propagation: str) -> Tuple[int, int]:
    """``podman run`` a sleeper with SRC at /vol (``propagation``); return host pids of it and its conmon."""
    if podman(node, prefix, "image", "exists", testnode.IMAGE, check=False).returncode != 0:
        podman(node, prefix, "import", testnode.ROOTFS_TAR, testnode.IMAGE)
    podman(
        node,
        prefix,
        "run", "-d", "--name", name, "--network", "none", "--cap-add", "SYS_ADMIN",
        "--mount", f"type=bind,src={SRC},dst={DST},bind-propagation={propagation}",
        testnode.IMAGE, *testnode.SLEEPER,
    )  # fmt: skip
    pid, conmon = podman(node, prefix, "inspect", "-f", "{{.State.Pid}} {{.State.ConmonPid}}", name).stdout.split()
    return node.host_pid(int(pid)), node.host_pid(int(conmon))


def mount_tmpfs(node: testnode.Node, enter: Prefix, target: str, source: str) -> None:
    node.run([*enter, "sh", "-c", 'mkdir -p "$1" && mount -t tmpfs "$2" "$1"', "-", target, source])


def label(mount: str) -> str:
    return f"seed-{mount}"


# ----------------------------------------------------------------------------------------------------
# the picture


class Picture:
    """The contexts of 7.4.1 on one booted node; ``prefix`` is how podman is run (``kubensenter`` or not)."""

    def __init__(self, node: testnode.Node, prefix: Prefix) -> None:
        self.node = node
        self.prefix = list(prefix)
        self.host_sleep = 0
        self.pids: Dict[str, int] = {}
        self.conmons: Dict[str, int] = {}

    def build(self) -> None:
        node = self.node
        node.run(["mkdir", "-p", SRC])
        kubelet = node.wait_for_kubelet()
        containerd = node.service_pid("containerd.service") or node.start_containerd()
        # A host OS process: what an admin starts from a shell in PID 1's namespace.
        sleep = node.run("sleep 1000000 </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
        self.host_sleep = node.host_pid(int(sleep))
        self.pids = {"systemd": node.pid1, "host": self.host_sleep, "kubelet": kubelet, "containerd": containerd}
        for name, propagation in CONTAINERS.items():
            self.pids[name], self.conmons[name] = start_container(node, self.prefix, name, propagation)
        self.pids["conmon"] = self.conmons["c1"]
        for ctx, comm in (("kubelet", "kubelet"), ("containerd", "containerd"), ("conmon", "conmon")):
            assert Path(f"/proc/{self.pids[ctx]}/comm").read_text().strip() == comm, ctx
        # Each container mounts under its volume; then the host, then the kubelet side, mount under SRC.
        for name, mount in OWN_MOUNT.items():
            podman(node, self.prefix, "exec", name, "sh", "-c", 'mkdir -p "$1" && mount -t tmpfs "$2" "$1"', "-",
                   f"{DST}/{mount}", label(mount))  # fmt: skip
        mount_tmpfs(node, [], f"{SRC}/h", label("h"))
        mount_tmpfs(node, ["nsenter", "-t", str(node.node_pid(kubelet)), "-m", "--"], f"{SRC}/k", label("k"))

    def namespaces(self) -> Dict[str, str]:
        return {ctx: self.node.mnt_ns(pid) for ctx, pid in self.pids.items()}

    def conmon_namespaces(self) -> Set[str]:
        return {self.node.mnt_ns(pid) for pid in self.conmons.values()}

    def seen_by(self) -> Dict[str, Set[str]]:
        """For each mount, the contexts whose mountinfo holds it (at its path there, with our tmpfs label)."""
        seen: Dict[str, Set[str]] = {m: set() for m in MOUNTS}
        for ctx, pid in self.pids.items():
            base = DST if ctx in CONTAINERS else SRC
            have = {(m.mount_point, m.fstype, m.source) for m in self.node.mounts(host_pid=pid)}
            for mount in MOUNTS:
                if (f"{base}/{mount}", "tmpfs", label(mount)) in have:
                    seen[mount].add(ctx)
        return seen

    def clean(self) -> None:
        for name in CONTAINERS:
            podman(self.node, self.prefix, "rm", "-f", "-t", "0", name, check=False)
        if self.host_sleep and Path(f"/proc/{self.host_sleep}").exists():
            self.node.run(["kill", str(self.node.node_pid(self.host_sleep))], check=False)
        # Mounts left in the node's namespaces (propagated copies outlive their containers).
        enters: List[List[str]] = [[]]
        if self.prefix:
            enters.append(self.prefix)
        for enter in enters:
            for mount in MOUNTS:
                self.node.run([*enter, "umount", "-R", f"{SRC}/{mount}"], check=False)


def show(seen: Dict[str, Set[str]]) -> str:
    return "\n".join(f"  {m}: {sorted(ctx)}" for m, ctx in seen.items())


# ----------------------------------------------------------------------------------------------------
# tests


def test_before_encapsulation(node: testnode.Node) -> None:
    """One namespace for systemd, host processes, kubelet and the runtime; propagation decides the rest."""
    picture = Picture(node, prefix=[])
    try:
        picture.build()
        ns = picture.namespaces()
        shared = {ns[ctx] for ctx in NODE_SIDE}
        assert len(shared) == 1 and picture.conmon_namespaces() == shared, ns
        assert not {ns[c] for c in CONTAINERS} & shared, "each container has a namespace of its own"
        seen = picture.seen_by()
        assert seen == BEFORE, "who sees what, before:\n" + show(seen)
    finally:
        picture.clean()
    assert not any(p.startswith(f"{SRC}/") for p in node.mount_points()), "the node is left clean"


def test_after_encapsulation(node_factory: Factory) -> None:
    """After install + reboot: container 1's mount leaves systemd's and host processes' view, nothing else
    changes; host mounts still propagate into the Kubernetes namespace and containers 1 and 2."""
    node = node_factory()
    out = node.kubensctl("install").stdout
    assert "kubelet.service: wrapped" in out and "containerd.service: wrapped" in out, out
    node.reboot()
    picture = Picture(node, prefix=["kubensenter"])
    try:
        picture.build()
        ns = picture.namespaces()
        kube = {ns[ctx] for ctx in KUBE_SIDE}
        assert len(kube) == 1 and picture.conmon_namespaces() == kube, ns
        assert ns["systemd"] == ns["host"] and ns["systemd"] not in kube, ns
        # ...and that namespace is the one pinned at /run/kubens/mnt.
        inode = node.run(["stat", "-c", "%i", "/run/kubens/mnt"]).stdout.strip()
        assert kube == {f"mnt:[{inode}]"}, (kube, inode)
        seen = picture.seen_by()
        assert seen == AFTER, "who sees what, after:\n" + show(seen)
        # podman through kubensenter leaked nothing into PID 1's namespace: status is clean.
        r = node.run(["kubensctl", "status"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        picture.clean()

    # The control: the same picture with podman run plainly. kubensenter is what makes the difference.
    outside = Picture(node, prefix=[])
    try:
        outside.build()
        assert outside.conmon_namespaces() == {node.mnt_ns(node.pid1)}
        seen = outside.seen_by()
        assert seen == OUTSIDE, "who sees what, podman outside the namespace:\n" + show(seen)
        r = node.run(["kubensctl", "status"], check=False)
        assert r.returncode == 1 and "leaked into PID 1's namespace" in r.stdout, r.stdout + r.stderr
    finally:
        outside.clean()
