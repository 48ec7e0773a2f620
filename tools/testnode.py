"""A real systemd test node for kubensctl: a Debian bookworm rootfs booted with systemd-nspawn.

Standard library only, Python >= 3.9. Used by ``tests/system`` and ``make demo``. See
``tools/TESTNODE.md`` for measured times and the quirks this works around.

Typical use::

    rootfs = ensure_rootfs()                # builds once (about a minute), then cached
    with Node(rootfs) as node:              # boots a throw-away copy (overlay) in about 5 s
        node.run(["systemctl", "is-system-running"])
        node.start_containerd()
        task = node.ctr_run("c1")           # host pid of a real runc container
        node.reboot()                       # power off, boot the same disk again

Layout under the cache directory (default ``/var/tmp/kubensctl``)::

    base-<hash>/         debootstrap output (the slow part), keyed by suite and package list
    rootfs-<version>/    base + our configuration; read-only lower layer of every node
    nodes/<name>/        one booted node: upper/ work/ (overlay), state/ (runtime storage), lock
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

__all__ = [
    "CTR_NAMESPACE",
    "DEFAULT_CACHE_DIR",
    "IMAGE",
    "KUBELET_POD_COUNT",
    "NODE_USER",
    "Mount",
    "Node",
    "NodeCommandError",
    "NodeError",
    "ensure_rootfs",
    "host_tools_ready",
    "kubelet_volume_paths",
    "read_mountinfo",
    "sweep_leftovers",
]

Progress = Callable[[str], None]
Command = Union[str, Sequence[str]]

DEFAULT_CACHE_DIR = "/var/tmp/kubensctl"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd,systemd-sysv,dbus,util-linux,mount,procps,iproute2,python3,python3-venv,containerd,runc,"
    "podman,conmon,busybox-static,containernetworking-plugins,uidmap"
)
#: Bump when the configuration recipe changes in a way the content hash below cannot see.
RECIPE = "testnode-recipe-3"

IMAGE = "localhost/busybox:latest"
CTR_NAMESPACE = "k8s.io"
NODE_USER = "kubeuser"
NODE_USER_UID = 1000
KUBELET_POD_COUNT = 2
IMAGE_DIR = "/opt/testnode"
ROOTFS_TAR = f"{IMAGE_DIR}/busybox-rootfs.tar"
OCI_TAR = f"{IMAGE_DIR}/busybox-oci.tar"
SRC_MOUNT = "/opt/kubensctl/src"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Container command that stops at once on SIGTERM (a bare busybox ``sleep`` as PID 1 ignores it, and
#: systemd then waits a full stop timeout at poweroff).
SLEEPER = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; sleep 1000000 & wait']

_PROPAGATE_DIR = "/run/systemd/nspawn/propagate"
_NAME_PREFIX = "kubens-"
_NODE_ENV = "KUBENSCTL_TESTNODE"  # set in each node's PID 1 environment: finds leftovers for sure

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent
KUBELET_STANDIN = TOOLS_DIR / "kubelet-standin"

_BUSYBOX_APPLETS = (
    "sh", "ash", "cat", "echo", "ls", "mkdir", "mount", "umount", "sleep", "true", "false", "touch",
    "rm", "grep", "ps", "test", "[", "env", "id", "stat", "df", "sync", "hostname", "readlink",
)


class NodeError(RuntimeError):
    """The test node could not be built, booted or reached."""


class NodeCommandError(subprocess.CalledProcessError):
    """A command run on the node failed; ``str()`` includes its output."""

    def __str__(self) -> str:
        return (
            f"node command {shlex.join(str(a) for a in self.cmd)} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout or ''}--- stderr ---\n{self.stderr or ''}"
        )


# ----------------------------------------------------------------------------------------------------
# host helpers


def _sh(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def host_tools_ready() -> Optional[str]:
    """Return why the host cannot run nodes (not root, no nspawn), or None when it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mounts)"
    for tool in ("systemd-nspawn", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install systemd-container util-linux)"
    return None


def _ensure_host_packages(progress: Progress) -> None:
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"))
               if shutil.which(tool) is None]
    if not missing:
        return
    progress(f"testnode: installing host packages {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _sh(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    _sh(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# ----------------------------------------------------------------------------------------------------
# rootfs build


def _base_key() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} minbase {PACKAGES}".encode()).hexdigest()[:12]


def _rootfs_version() -> str:
    h = hashlib.sha256(RECIPE.encode())
    h.update(_base_key().encode())
    h.update(KUBELET_STANDIN.read_bytes())
    # Configuration code below is part of the recipe: hash this module's config section too.
    src = Path(__file__).read_text(encoding="utf-8")
    marker = " node configuration (hashed"  # split so this line does not match itself
    start, end = src.index("# >>>" + marker), src.index("# <<<" + marker)
    h.update(src[start:end].encode())
    return h.hexdigest()[:12]


def _run_debootstrap(target: Path, progress: Progress) -> None:
    # Its own private mount namespace: debootstrap mounts /proc and /sys in the target, and a killed
    # build must not leave those mounts behind on the host. Its own PID namespace, tied to us by
    # PDEATHSIG: if this process is killed, debootstrap and everything it started die too (its PID 1
    # gets SIGKILL), instead of writing on into a temp dir that the next build removes.
    cmd = [
        "setpriv", "--pdeathsig", "KILL", "unshare", "-m", "--propagation", "private", "--pid", "--fork",
        "--kill-child=KILL", "debootstrap", "--variant=minbase",
        f"--include={PACKAGES}", SUITE, str(target), MIRROR,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: set[str] = set()
    tail: List[str] = []
    for line in proc.stdout:
        tail = [*tail[-30:], line.rstrip()]
        m = re.match(r"I: (Retrieving|Validating|Checking|Extracting|Installing|Unpacking|Configuring|Base)"
                     r"\S*", line)
        if m and m.group(1) not in seen:  # first line of each stage only
            seen.add(m.group(1))
            progress(f"testnode: debootstrap: {line.strip()}")
    if proc.wait() != 0:
        raise NodeError("debootstrap failed:\n" + "\n".join(tail))


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


# >>> node configuration (hashed into the rootfs version: edits here rebuild the rootfs)

CONTAINERS_CONF = """\
# kubensctl test node: podman inside systemd-nspawn on a VM without CAP_SYS_RESOURCE.
[containers]
default_sysctls = []
pids_limit = 0
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""

SYSTEM_CONF = """\
# kubensctl test node: short stop timeouts so poweroff/reboot never waits 90 s on a stuck unit.
[Manager]
DefaultTimeoutStopSec=5s
DefaultTimeoutStartSec=30s
"""

KUBELET_UNIT = """\
[Unit]
Description=kubelet (kubensctl test-node stand-in)
After=containerd.service
Wants=containerd.service

[Service]
# notify: READY=1 once the volume mounts exist, so "boot finished" means the mount table is settled.
# NotifyAccess=all: still accepted when a wrapper (kubensenter, nsenter) forks before running it.
Type=notify
NotifyAccess=all
ExecStart=/usr/local/bin/kubelet
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

# Shaped like kubeadm's drop-in: an ExecStart reset, $VARS, an EnvironmentFile.
KUBELET_DROPIN = """\
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--kubeconfig=/etc/kubernetes/kubelet.conf"
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_EXTRA_ARGS
"""

MASKED_UNITS = (
    "e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "podman-auto-update.timer",
    "podman-auto-update.service", "podman-restart.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer", "console-getty.service",
    # podman.socket starts the API service at boot; it mounts its storage, idles 5 s and unmounts:
    # the mount table would still be changing after boot.
    "podman.socket", "podman.service",
)


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x"}.get(machine, machine)


def _busybox_layer(busybox: bytes) -> bytes:
    """A tiny rootfs tar: busybox-static plus applet links, deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                        ("root", 0o700), ("tmp", 0o1777), ("var", 0o755), ("vol", 0o755)):
            add(d, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox)
        for applet in _BUSYBOX_APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    return buf.getvalue()


def _oci_archive(layer: bytes, name: str) -> bytes:
    """An OCI image layout tarball (``ctr images import``, ``podman load``) holding one layer."""
    def blob(data: bytes) -> Tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_digest, _ = blob(layer)
    config = json.dumps({
        "created": "1970-01-01T00:00:00Z", "architecture": _oci_arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kubensctl testnode"}],
    }, sort_keys=True).encode()
    config_digest, _ = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest, _ = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for digest, data in (blob(layer), blob(config), blob(manifest)):
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    return buf.getvalue()


def _configure_rootfs(root: Path, progress: Progress) -> None:
    progress("testnode: configuring rootfs (podman, systemd, images, user, stand-in kubelet)")
    _write(root, "/etc/containers/containers.conf.d/50-testnode.conf", CONTAINERS_CONF)
    _write(root, "/etc/systemd/system.conf.d/50-testnode.conf", SYSTEM_CONF)
    # No /etc/hostname: the node takes nspawn's --machine name, so each node names itself.
    (root / "etc/hostname").unlink(missing_ok=True)
    _write(root, "/etc/motd", "kubensctl test node\n")
    # Stand-in kubelet + units (kubeadm-shaped), enabled like a real node's.
    shutil.copyfile(KUBELET_STANDIN, root / "usr/local/bin/kubelet")
    (root / "usr/local/bin/kubelet").chmod(0o755)
    _write(root, "/etc/systemd/system/kubelet.service", KUBELET_UNIT)
    _write(root, "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", KUBELET_DROPIN)
    _write(root, "/etc/default/kubelet", f'KUBELET_EXTRA_ARGS="--pods={KUBELET_POD_COUNT}"\n')
    _write(root, "/etc/kubernetes/kubelet.conf", "# stand-in kubelet: not read\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit, target in (("kubelet.service", "/etc/systemd/system/kubelet.service"),
                         ("containerd.service", "/lib/systemd/system/containerd.service")):
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(target)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Busybox image, two shapes: a plain rootfs tar (podman import) and an OCI archive (ctr import).
    layer = _busybox_layer((root / "bin/busybox").read_bytes())
    (root / IMAGE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / ROOTFS_TAR.lstrip("/")).write_bytes(layer)
    (root / OCI_TAR.lstrip("/")).write_bytes(_oci_archive(layer, IMAGE))
    # A non-root user (permission tests).
    _sh(["chroot", str(root), "useradd", "--create-home", "--uid", str(NODE_USER_UID), "--user-group",
         "--shell", "/bin/bash", NODE_USER], stdout=subprocess.DEVNULL)
    (root / SRC_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)

# <<< node configuration (hashed into the rootfs version)


def ensure_rootfs(cache_dir: str = DEFAULT_CACHE_DIR, progress: Progress = print) -> str:
    """Return the path of the configured, cached node rootfs, building it when missing or stale.

    The debootstrap output is cached separately (``base-<hash>``, about a minute to build), so a changed
    configuration only costs a copy. Builds go to a temp directory that is renamed into place, so a
    killed build never leaves a half rootfs. Concurrent callers serialize on a lock file.
    """
    cache = Path(cache_dir)
    version = _rootfs_version()
    rootfs = cache / f"rootfs-{version}"
    stamp = rootfs / ".kubensctl-testnode"
    if stamp.is_file() and stamp.read_text().strip() == version:
        return str(rootfs)
    with _flock(cache / ".build.lock"):
        if stamp.is_file() and stamp.read_text().strip() == version:
            return str(rootfs)
        for stale in cache.glob(".tmp-*"):  # left by a killed build; we hold the build lock
            progress(f"testnode: removing unfinished build {stale}")
            _rmtree(stale)
        _ensure_host_packages(progress)
        base = cache / f"base-{_base_key()}"
        if not (base / ".kubensctl-base").is_file():
            t0 = time.monotonic()
            progress(f"testnode: debootstrap {SUITE} into {base} (takes about a minute, once)")
            tmp = cache / f".tmp-base-{secrets.token_hex(4)}"
            _run_debootstrap(tmp, progress)
            (tmp / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
            for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            (tmp / ".kubensctl-base").write_text(_base_key() + "\n")
            _rmtree(base)
            tmp.rename(base)
            progress(f"testnode: debootstrap done in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        progress(f"testnode: copying base rootfs to rootfs-{version}")
        tmp = cache / f".tmp-rootfs-{secrets.token_hex(4)}"
        _sh(["cp", "-a", "--reflink=auto", str(base), str(tmp)])
        (tmp / ".kubensctl-base").unlink()
        _configure_rootfs(tmp, progress)
        (tmp / ".kubensctl-testnode").write_text(version + "\n")
        _rmtree(rootfs)
        tmp.rename(rootfs)
        progress(f"testnode: rootfs ready in {time.monotonic() - t0:.1f} s: {rootfs}")
        _prune_old(cache, keep={rootfs.name, base.name}, progress=progress)
    return str(rootfs)


def _prune_old(cache: Path, keep: set[str], progress: Progress) -> None:
    """Remove rootfs/base versions other than ``keep`` when no node is running (any could use them)."""
    nodes = cache / "nodes"
    if nodes.is_dir() and any(nodes.iterdir()):
        return
    for old in [*cache.glob("rootfs-*"), *cache.glob("base-*")]:
        if old.name not in keep:
            progress(f"testnode: removing old {old}")
            _rmtree(old)


# ----------------------------------------------------------------------------------------------------
# /proc helpers


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo (paths are as that process sees them)."""

    mount_id: int
    parent_id: int
    dev: str
    root: str
    mount_point: str
    options: str
    propagation: Tuple[str, ...]
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo(host_pid: Union[int, str]) -> List[Mount]:
    """Parse /proc/HOST_PID/mountinfo as read from the host (paths relative to that process's root)."""
    mounts: List[Mount] = []
    with open(f"/proc/{host_pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            sep = fields.index("-", 6)
            mounts.append(Mount(
                mount_id=int(fields[0]), parent_id=int(fields[1]), dev=fields[2],
                root=_unescape(fields[3]), mount_point=_unescape(fields[4]), options=fields[5],
                propagation=tuple(fields[6:sep]), fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]), super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            ))
    return mounts


def _status(pid: Union[int, str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _pids() -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        return _status(pid).get("State", "").split(" ")[0] != "Z"
    except OSError:
        return False


def kubelet_volume_paths(pods: int = KUBELET_POD_COUNT, root_dir: str = "/var/lib/kubelet") -> List[str]:
    """The mount points the stand-in kubelet makes (same rule as tools/kubelet-standin)."""
    paths: List[str] = []
    for i in range(1, pods + 1):
        base = f"{root_dir}/pods/00000000-0000-0000-0000-{i:012d}/volumes"
        paths += [f"{base}/kubernetes.io~empty-dir/cache", f"{base}/kubernetes.io~secret/token"]
    return paths


# ----------------------------------------------------------------------------------------------------
# leftovers


def _node_pid1s() -> Dict[str, int]:
    """Host pids of every test node's systemd, by node name (nspawn --setenv marks them)."""
    found: Dict[str, int] = {}
    for pid in _pids():
        if _comm(pid) != "systemd":
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(_NODE_ENV.encode() + b"="):
                found[item.split(b"=", 1)[1].decode(errors="replace")] = pid
    return found


def _kill_node_processes(node_dir: Path) -> List[int]:
    """SIGKILL a node's PID 1 (which takes its whole PID namespace) and its nspawn; return the pids."""
    victims: List[int] = []
    pid1 = _node_pid1s().get(node_dir.name)
    if pid1:
        victims.append(pid1)
    marker = str(node_dir / "root")
    victims += [p for p in _pids() if _comm(p) in ("systemd-nspawn", "unshare", "sh") and marker in _cmdline(p)]
    for pid in victims:  # PID 1 first: killing nspawn first would orphan it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


def _remove_propagate_dir(name: str) -> None:
    """nspawn makes /run/systemd/nspawn/propagate/NAME on the host and only removes it when /run is a
    tmpfs; on hosts whose /run is on disk it stays behind. Remove ours (empty once nspawn is gone)."""
    with contextlib.suppress(OSError):
        (Path(_PROPAGATE_DIR) / name).rmdir()


def sweep_leftovers(cache_dir: str = DEFAULT_CACHE_DIR, progress: Progress = print) -> int:
    """Kill and remove nodes whose owning process is gone (killed test runs). Returns how many."""
    nodes = Path(cache_dir) / "nodes"
    if not nodes.is_dir():
        return 0
    swept = 0
    for node_dir in sorted(nodes.iterdir()):
        lock = node_dir / "lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            # Created but never locked (killed within microseconds) or half removed.
            if time.time() - node_dir.stat().st_mtime < 60:
                continue
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # owner alive
            progress(f"testnode: sweeping leftover node {node_dir.name}")
            pids = _kill_node_processes(node_dir)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            _rmtree(node_dir)
            _remove_propagate_dir(node_dir.name)
            swept += 1
        finally:
            if fd >= 0:
                os.close(fd)
    # Nodes whose directory is already gone (removed by hand, or a half-finished sweep).
    for name, pid in _node_pid1s().items():
        if not (nodes / name).exists():
            progress(f"testnode: killing orphaned node {name} (systemd pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            swept += 1
    # Empty propagate directories of nodes that no longer exist.
    with contextlib.suppress(OSError):
        for entry in Path(_PROPAGATE_DIR).glob(_NAME_PREFIX + "*"):
            if not (nodes / entry.name).exists():
                _remove_propagate_dir(entry.name)
    return swept


# ----------------------------------------------------------------------------------------------------
# the node


_LIVE_NODES: set[Node] = set()


@atexit.register
def _close_live_nodes() -> None:
    for node in list(_LIVE_NODES):
        with contextlib.suppress(Exception):
            node.close()


class Node:
    """A booted systemd node (systemd-nspawn) on a private writable copy of the cached rootfs.

    The node's root is an overlay: the cached rootfs is the read-only lower layer and ``upper/`` under
    the node directory holds its writes, so ``reboot()`` boots the same disk. Runtime storage
    (``/var/lib/containerd``, ``/var/lib/containers``) is bind-mounted from plain host directories,
    because overlay snapshotters cannot keep their storage on overlayfs. The overlay is mounted in a
    private mount namespace that lives exactly as long as nspawn, so no mount ever leaks to the host.
    """

    def __init__(
        self,
        rootfs: Optional[str] = None,
        *,
        cache_dir: str = DEFAULT_CACHE_DIR,
        name: Optional[str] = None,
        src_dir: Optional[str] = str(REPO_DIR / "src"),
        progress: Progress = print,
        boot_timeout: float = 90.0,
        keep: bool = False,
        extra_nspawn_args: Sequence[str] = (),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.rootfs = Path(rootfs) if rootfs else Path(ensure_rootfs(cache_dir, progress))
        self.name = name or f"{_NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = self.cache_dir / "nodes" / self.name
        self.src_dir = src_dir
        self.progress = progress
        self.boot_timeout = boot_timeout
        self.keep = keep or os.environ.get("KUBENSCTL_KEEP_NODE") == "1"
        self.extra_nspawn_args = list(extra_nspawn_args)
        self.boot_seconds: List[float] = []
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._pid1: Optional[int] = None
        self._lock: Optional[IO[str]] = None
        self._console: Optional[IO[bytes]] = None
        self._closed = False
        self._boots = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> Node:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _prepare(self) -> None:
        if self._lock is not None:
            return
        sweep_leftovers(str(self.cache_dir), self.progress)
        self.dir.mkdir(parents=True)
        self._lock = open(self.dir / "lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for sub in ("upper", "work", "root", "state/containerd", "state/containers"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _LIVE_NODES.add(self)

    def nspawn_command(self) -> List[str]:
        """The full host command that mounts the overlay and boots the node (for docs and debugging)."""
        d = self.dir
        nspawn = [
            "systemd-nspawn", "-q", "-D", str(d / "root"), "--boot", "--register=no", "--keep-unit",
            "--capability=all", "--system-call-filter=bpf @keyring", f"--machine={self.name[:64]}",
            f"--setenv={_NODE_ENV}={self.name}",
            f"--bind={d / 'state/containerd'}:/var/lib/containerd",
            f"--bind={d / 'state/containers'}:/var/lib/containers",
            *([f"--bind-ro={self.src_dir}:{SRC_MOUNT}"] if self.src_dir else []),
            *self.extra_nspawn_args,
        ]
        mount = ["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={self.rootfs},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "root")]
        script = f"{shlex.join(mount)} && exec {shlex.join(nspawn)}"
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]

    def boot(self) -> None:
        """Boot the node's disk and wait until ``systemctl is-system-running`` says running/degraded."""
        if self._closed:
            raise NodeError("node was closed")
        if self.running:
            raise NodeError("node is already running")
        self._prepare()
        t0 = time.monotonic()
        self._boots += 1
        self.progress(f"testnode: booting {self.name} (boot #{self._boots})")
        if self._console is None:
            self._console = open(self.dir / "console.log", "ab")
        self._console.write(f"\n===== boot #{self._boots} =====\n".encode())
        self._console.flush()
        # UNIFIED_HIERARCHY: the host's cgroup layout is hybrid. LOCK=0: every node has its own root
        # directory, and a killed nspawn would leave its lock file in /run/systemd/nspawn/locks.
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1", SYSTEMD_NSPAWN_LOCK="0")
        self._proc = subprocess.Popen(
            self.nspawn_command(), stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        self._pid1 = None
        deadline = t0 + self.boot_timeout
        self._pid1 = self._wait_for_pid1(deadline)
        (self.dir / "pids").write_text(f"{self._proc.pid} {self._pid1}\n")
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        else:
            raise NodeError(f"node did not finish booting in {self.boot_timeout:.0f} s (state {state!r})"
                            + self._console_tail())
        took = time.monotonic() - t0
        self.boot_seconds.append(took)
        self.progress(f"testnode: {self.name} up in {took:.1f} s (host pid of its systemd: {self._pid1}, "
                      f"state {state})")

    def _console_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "console.log").read_bytes().decode(errors="replace")
        except OSError:
            return ""
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
        return "\n--- console (last lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise NodeError(f"systemd-nspawn exited (status {code})" + self._console_tail())

    def _wait_for_pid1(self, deadline: float) -> int:
        assert self._proc is not None
        own_pidns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            self._check_alive()
            for pid in self._descendants(self._proc.pid):
                try:
                    if _comm(pid) == "systemd" and os.readlink(f"/proc/{pid}/ns/pid") != own_pidns:
                        nspid = _status(pid).get("NSpid", "").split()
                        if nspid and nspid[-1] == "1":
                            return pid
                except OSError:
                    continue
            time.sleep(0.02)
        raise NodeError("no systemd appeared in the node's PID namespace" + self._console_tail())

    @staticmethod
    def _descendants(root: int) -> List[int]:
        children: Dict[int, List[int]] = {}
        for pid in _pids():
            try:
                ppid = int(_status(pid).get("PPid", "0"))
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(pid)
        out: List[int] = []
        todo = [root]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid1(self) -> int:
        """Host pid of the node's systemd (PID 1 inside)."""
        if self._pid1 is None or not self.running:
            raise NodeError("node is not running")
        return self._pid1

    def poweroff(self, timeout: float = 60.0) -> float:
        """``systemctl poweroff`` inside and wait for nspawn to exit. Returns the seconds it took."""
        if not self.running:
            return 0.0
        assert self._proc is not None
        t0 = time.monotonic()
        self.progress(f"testnode: powering off {self.name}")
        self.run(["systemctl", "poweroff"], check=False, timeout=30)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self._kill()
            raise NodeError(f"node did not power off in {timeout:.0f} s; killed" + self._console_tail()) from e
        self._pid1 = None
        took = time.monotonic() - t0
        self.progress(f"testnode: {self.name} powered off in {took:.1f} s")
        return took

    def reboot(self, timeout: float = 60.0) -> float:
        """Power off and boot the same disk again (a fresh PID 1, the same files). Returns seconds."""
        t0 = time.monotonic()
        self.poweroff(timeout)
        self.boot()
        return time.monotonic() - t0

    def _kill(self) -> None:
        pids = [p for p in (self._pid1, self._proc.pid if self._proc else None) if p]
        # SIGKILL of the node's PID 1 kills every process in its PID namespace (containers included).
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_node_processes(self.dir)
                self._proc.wait(timeout=15)
        self._pid1 = None

    def close(self) -> None:
        """Kill the node (if running) and remove its directory. Safe to call repeatedly."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.running:
                self._kill()
        finally:
            if self._console is not None:
                self._console.close()
            _remove_propagate_dir(self.name[:64])
            if self.keep:
                self.progress(f"testnode: keeping {self.dir} (KUBENSCTL_KEEP_NODE=1)")
            else:
                with contextlib.suppress(FileNotFoundError):
                    _rmtree(self.dir)
            if self._lock is not None:
                self._lock.close()
            _LIVE_NODES.discard(self)

    # -- running things ------------------------------------------------------------------------------

    def run(
        self,
        cmd: Command,
        check: bool = True,
        input: Optional[str] = None,
        user: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (argv list, or a string for ``sh -c``) in the node's namespaces as root or ``user``.

        The environment is a clean node one (PATH, HOME, LANG) plus ``env``.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        enter = ["nsenter", "-t", str(self.pid1), "-m", "-p", "-u", "-i", "-C", "-r", "-w"]
        home = "/root"
        if user is not None:
            uid, gid, home = self._lookup_user(user)
            enter += ["-S", str(uid), "-G", str(gid)]
        full_env = {"PATH": NODE_PATH, "HOME": home, "LANG": "C.UTF-8", "USER": user or "root"}
        full_env.update(env or {})
        try:
            r = subprocess.run([*enter, "--", *argv], input=input, text=True, capture_output=True,
                               env=full_env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise NodeError(f"node command {argv} timed out after {timeout:.0f} s") from e
        if check and r.returncode != 0:
            raise NodeCommandError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def _lookup_user(self, user: str) -> Tuple[int, int, str]:
        passwd = Path(f"/proc/{self.pid1}/root/etc/passwd").read_text()
        for line in passwd.splitlines():
            f = line.split(":")
            if len(f) >= 7 and (f[0] == user or f[2] == user):
                return int(f[2]), int(f[3]), f[5]
        raise NodeError(f"no user {user!r} on the node")

    def kubensctl(self, *args: str, check: bool = True, user: Optional[str] = None,
                  timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``python3 -m kubensctl ARGS`` on the node, from the repo's src/ (bound read-only)."""
        return self.run(["python3", "-m", "kubensctl", *args], check=check, user=user, timeout=timeout,
                        env={"PYTHONPATH": SRC_MOUNT})

    def path(self, node_path: str) -> Path:
        """Host path of a file in the node's root (through /proc/PID1/root)."""
        return Path(f"/proc/{self.pid1}/root") / node_path.lstrip("/")

    def write_file(self, node_path: str, text: str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "-",
                  node_path, f"{mode:o}"], input=text)

    # -- pids and mounts -----------------------------------------------------------------------------

    def _level(self) -> int:
        return len(_status(self.pid1)["NSpid"].split()) - 1

    def host_pid(self, node_pid: int) -> int:
        """Host pid of the process that is ``node_pid`` in the node's PID namespace."""
        if node_pid == 1:
            return self.pid1
        level = self._level()
        for pid in _pids():
            try:
                nspid = _status(pid).get("NSpid", "").split()
            except OSError:
                continue
            if len(nspid) > level and nspid[level] == str(node_pid) and self._in_node(pid):
                return pid
        raise NodeError(f"no process with pid {node_pid} in the node")

    def node_pid(self, host_pid: int) -> int:
        """Pid inside the node of host process ``host_pid``."""
        nspid = _status(host_pid)["NSpid"].split()
        level = self._level()
        if len(nspid) <= level or not self._in_node(host_pid):
            raise NodeError(f"host pid {host_pid} is not in the node")
        return int(nspid[level])

    def _in_node(self, host_pid: int) -> bool:
        pid = host_pid
        for _ in range(64):
            if pid == self.pid1:
                return True
            if pid <= 1:
                return False
            try:
                pid = int(_status(pid)["PPid"])
            except (OSError, KeyError, ValueError):
                return False
        return False

    def pids_named(self, comm: str) -> List[int]:
        """Host pids of node processes whose comm is ``comm`` (e.g. ``kubelet``, ``containerd``)."""
        return sorted(p for p in _pids() if _comm(p) == comm and self._in_node(p))

    def service_pid(self, unit: str) -> int:
        """Host pid of a unit's main process (0 when the unit has none)."""
        r = self.run(["systemctl", "show", "-p", "MainPID", "--value", unit])
        main = int(r.stdout.strip() or 0)
        return self.host_pid(main) if main else 0

    def mounts(self, host_pid: Optional[int] = None, node_pid: Optional[int] = None) -> List[Mount]:
        """Mounts a process sees (its /proc/PID/mountinfo); default: the node's PID 1."""
        if node_pid is not None:
            host_pid = self.host_pid(node_pid)
        return read_mountinfo(host_pid if host_pid is not None else self.pid1)

    def mount_points(self, host_pid: Optional[int] = None, node_pid: Optional[int] = None) -> List[str]:
        return [m.mount_point for m in self.mounts(host_pid, node_pid)]

    def mnt_ns(self, host_pid: int) -> str:
        """``mnt:[INODE]`` of a host pid (readable from the host even when PID 1's are not)."""
        return os.readlink(f"/proc/{host_pid}/ns/mnt")

    # -- runtimes ------------------------------------------------------------------------------------

    def start_containerd(self) -> int:
        """``systemctl start containerd``, wait for its socket; return its host pid."""
        self.run(["systemctl", "start", "containerd.service"])
        deadline = time.monotonic() + 30
        while self.run(["ctr", "version"], check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise NodeError("containerd did not answer in 30 s")
            time.sleep(0.1)
        return self.service_pid("containerd.service")

    def ctr_import(self) -> None:
        """Import the busybox OCI archive into containerd (namespace k8s.io) unless already there."""
        have = self.run(["ctr", "-n", CTR_NAMESPACE, "images", "ls", "-q"]).stdout.split()
        if IMAGE not in have:
            self.run(["ctr", "-n", CTR_NAMESPACE, "images", "import", OCI_TAR])

    def ctr_run(self, name: str, mounts: Sequence[str] = (), *, privileged: bool = False,
                args: Sequence[str] = ()) -> int:
        """Start a detached containerd container (runc) running a sleeper; return its host pid.

        ``mounts`` are ctr ``--mount`` specs (``type=bind,src=S,dst=D,options=rbind:rshared``);
        ``privileged`` lets it mount things itself.
        """
        self.ctr_import()
        cmd = ["ctr", "-n", CTR_NAMESPACE, "run", "-d", "--cpu-shares", "0"]
        if privileged:
            cmd.append("--privileged")
        for spec in mounts:
            cmd += ["--mount", spec]
        self.run([*cmd, *args, IMAGE, name, *SLEEPER])
        return self.ctr_pid(name)

    def ctr_pid(self, name: str) -> int:
        out = self.run(["ctr", "-n", CTR_NAMESPACE, "tasks", "ls"]).stdout
        for line in out.splitlines()[1:]:
            f = line.split()
            if f and f[0] == name:
                return self.host_pid(int(f[1]))
        raise NodeError(f"no ctr task {name}:\n{out}")

    def ctr_rm(self, name: str) -> None:
        """Kill and delete a containerd container (no error if missing)."""
        self.run(["ctr", "-n", CTR_NAMESPACE, "tasks", "kill", "-s", "SIGKILL", name], check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = self.run(["ctr", "-n", CTR_NAMESPACE, "tasks", "delete", name], check=False)
            if r.returncode == 0 or "not found" in r.stderr:
                break
            time.sleep(0.1)
        self.run(["ctr", "-n", CTR_NAMESPACE, "containers", "delete", name], check=False)

    def podman_import(self) -> None:
        """``podman import`` the busybox rootfs tar as localhost/busybox:latest unless present."""
        if self.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
            self.run(["podman", "import", ROOTFS_TAR, IMAGE])

    def podman_run(
        self,
        name: str,
        volume: Optional[Tuple[str, str, str]] = None,
        *,
        privileged: bool = False,
        args: Sequence[str] = (),
    ) -> int:
        """Start a detached podman container with a sleeper; return its host pid.

        ``volume`` is ``(node_src, container_dst, propagation)`` where propagation is ``rshared``
        (Kubernetes Bidirectional), ``rslave`` (HostToContainer) or ``private`` (None). The source is
        created when missing. The container gets CAP_SYS_ADMIN so it can mount under the volume.
        """
        self.podman_import()
        cmd = ["podman", "run", "-d", "--name", name, "--network", "none"]
        cmd += ["--privileged"] if privileged else ["--cap-add", "SYS_ADMIN"]
        if volume is not None:
            src, dst, prop = volume
            self.run(["mkdir", "-p", src])
            cmd += ["--mount", f"type=bind,src={src},dst={dst},bind-propagation={prop}"]
        self.run([*cmd, *args, IMAGE, *SLEEPER])
        return self.podman_pid(name)

    def podman_pid(self, name: str) -> int:
        pid = int(self.run(["podman", "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip())
        if pid <= 0:
            raise NodeError(f"podman container {name} is not running")
        return self.host_pid(pid)

    def podman_exec(self, name: str, cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["podman", "exec", name, *cmd], check=check)

    def podman_rm(self, name: str) -> None:
        """Remove a podman container at once (no error if missing)."""
        self.run(["podman", "rm", "-f", "-t", "0", name], check=False)

    def container_mount(self, runtime: str, name: str, target: str, source: Optional[str] = None) -> None:
        """Mount a tmpfs at ``target`` inside container ``name`` (runtime ``podman`` or ``ctr``)."""
        src = source or f"tmpfs-{name}"
        inner = ["sh", "-c", 'mkdir -p "$1" && mount -t tmpfs "$2" "$1"', "-", target, src]
        if runtime == "podman":
            self.podman_exec(name, inner)
        elif runtime == "ctr":
            self.run(["ctr", "-n", CTR_NAMESPACE, "tasks", "exec", "--exec-id",
                      f"mnt-{secrets.token_hex(3)}", name, *inner])
        else:
            raise ValueError(f"unknown runtime {runtime!r}")

    def wait_for_kubelet(self, timeout: float = 30.0) -> int:
        """Wait until the stand-in kubelet has made its mounts; return its host pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(["test", "-s", "/run/kubelet-standin/mounts"], check=False).returncode == 0:
                pid = self.service_pid("kubelet.service")
                if pid:
                    return pid
            time.sleep(0.1)
        status = self.run(["systemctl", "status", "--no-pager", "kubelet.service"], check=False).stdout
        raise NodeError(f"stand-in kubelet did not make its mounts in {timeout:.0f} s\n{status}")


def main() -> int:
    """``python3 tools/testnode.py [build|shell|sweep]``: build the rootfs, boot a node and stay, sweep."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "boot", "sweep"], nargs="?", default="build")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    a = parser.parse_args()
    if a.action == "sweep":
        print(f"swept {sweep_leftovers(a.cache_dir)} node(s)")
        return 0
    rootfs = ensure_rootfs(a.cache_dir)
    if a.action == "boot":
        with Node(rootfs, cache_dir=a.cache_dir) as node:
            print(f"node {node.name}: nsenter -t {node.pid1} -m -p -u -i -C -r -w bash   (Ctrl-C ends it)")
            with contextlib.suppress(KeyboardInterrupt):
                while node.running:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
