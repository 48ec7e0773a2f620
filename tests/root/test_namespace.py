"""Pinning, propagation, idempotence, repair and teardown with real mount namespaces."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nstest import Scratch, env_with_src, kubensctl, mountinfo_in, mounts_under, ns_of, run

pytestmark = pytest.mark.requires_root


def _nsfs_mounts(path: str) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == path and " - nsfs " in line)


def test_start_pins_slave_rshared_namespace(scratch: Scratch) -> None:
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    pin_ns = run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout.strip()
    assert pin_ns.startswith("mnt:[") and pin_ns != ns_of("self")
    with open(os.path.join(scratch.runtime_dir, "env")) as f:
        assert f.read() == f"KUBENSMNT={scratch.pin}\n"
    # runtime dir: bind-mounted onto itself, unbindable
    line = next(line for line in open("/proc/self/mountinfo") if line.split()[4] == scratch.runtime_dir)
    assert "unbindable" in line.split(" - ")[0]
    # inside: the scratch tree is shared (own peer group) and a slave of the host's
    inside = run(["nsenter", f"--mount={scratch.pin}", "findmnt", "-n", "-o", "PROPAGATION", scratch.dir]).stdout
    assert "shared" in inside and "slave" in inside


def test_propagation_host_in_container_not_out(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    host_mp = scratch.path("host-mount")
    os.makedirs(host_mp)
    run(["mount", "-t", "tmpfs", "hostfs", host_mp])
    assert host_mp in mountinfo_in(scratch.pin), "a host mount must propagate into the pinned namespace"

    inner_mp = scratch.path("container-mount")
    os.makedirs(inner_mp)
    run(["nsenter", f"--mount={scratch.pin}", "mount", "-t", "tmpfs", "ctr", inner_mp])
    assert inner_mp in mountinfo_in(scratch.pin)
    assert inner_mp not in mounts_under(scratch.dir), "a mount made inside must not reach the host"


def test_bidirectional_child_propagates_to_pin_not_host(scratch: Scratch) -> None:
    """A container with Bidirectional propagation: a child namespace that keeps shared propagation."""
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    vol = scratch.path("vol")
    os.makedirs(vol)
    mp = os.path.join(vol, "a")
    os.makedirs(mp)
    # nsenter into the pin, then unshare a child mount namespace keeping shared propagation.
    run(
        [
            "nsenter",
            f"--mount={scratch.pin}",
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "mount",
            "-t",
            "tmpfs",
            "bidir",
            mp,
        ]
    )
    assert mp in mountinfo_in(scratch.pin), "bidirectional mount must reach the pinned namespace"
    assert mp not in mounts_under(scratch.dir), "bidirectional mount must not reach the host"


def test_start_is_idempotent(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    before = run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout
    table_before = mounts_under(scratch.dir)
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0
    assert "nothing changed" in r.stdout
    assert run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout == before
    assert mounts_under(scratch.dir) == table_before


def test_concurrent_starts_end_with_one_namespace(scratch: Scratch) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kubensctl", "start", "--runtime-dir", scratch.runtime_dir],
            env=env_with_src(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    codes = [p.wait() for p in procs]
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
    assert codes == [0] * 6
    assert _nsfs_mounts(scratch.pin) == 1
    runtime_mounts = [m for m in mounts_under(scratch.dir) if m == scratch.runtime_dir]
    assert len(runtime_mounts) == 1


def test_repair_plain_file_pin(scratch: Scratch) -> None:
    os.makedirs(scratch.runtime_dir)
    open(scratch.pin, "w").close()
    with open(os.path.join(scratch.runtime_dir, "env"), "w") as f:
        f.write(f"KUBENSMNT={scratch.pin}\n")
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert "pinned a new mount namespace" in r.stdout
    assert _nsfs_mounts(scratch.pin) == 1


def test_repair_unmounted_dir(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    # Lose every mount under the runtime dir, keep the files: what a crash plus lazy unmount leaves.
    run(["umount", "-l", scratch.runtime_dir])
    assert scratch.runtime_dir not in mounts_under(scratch.dir)
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert "bind-mounted" in r.stdout and "unbindable" in r.stdout
    assert _nsfs_mounts(scratch.pin) == 1


def test_repair_bindable_dir(scratch: Scratch) -> None:
    os.makedirs(scratch.runtime_dir)
    run(["mount", "--bind", scratch.runtime_dir, scratch.runtime_dir])
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert "bind-mounted" not in r.stdout and "made" in r.stdout and "unbindable" in r.stdout
    assert [m for m in mounts_under(scratch.dir) if m == scratch.runtime_dir] == [scratch.runtime_dir]


def test_repair_missing_env_file(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    ns = run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout
    os.unlink(os.path.join(scratch.runtime_dir, "env"))
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].startswith("wrote ")
    assert run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout == ns


def test_repair_wrong_namespace_type(scratch: Scratch) -> None:
    os.makedirs(scratch.runtime_dir)
    run(["mount", "--bind", scratch.runtime_dir, scratch.runtime_dir])
    run(["mount", "--make-unbindable", scratch.runtime_dir])
    open(scratch.pin, "w").close()
    run(["mount", "--bind", "/proc/self/ns/net", scratch.pin])
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert "wrong pin" in r.stdout
    out = run(["nsenter", f"--mount={scratch.pin}", "true"], check=False)
    assert out.returncode == 0
    assert _nsfs_mounts(scratch.pin) == 1


def test_start_after_kill_midway(scratch: Scratch) -> None:
    """A start killed after binding the runtime dir but before pinning: the next start completes it."""
    os.makedirs(scratch.runtime_dir)
    run(["mount", "--bind", scratch.runtime_dir, scratch.runtime_dir])
    open(scratch.pin, "w").close()
    r = kubensctl("start", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert _nsfs_mounts(scratch.pin) == 1


def test_stop_refuses_while_inside_then_force(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    p = scratch.start_in(scratch.pin, "kubelet")
    r = kubensctl("stop", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 1
    assert f"{p.pid} kubelet" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _nsfs_mounts(scratch.pin) == 1, "a refused stop must change nothing"
    r = kubensctl("stop", "--runtime-dir", scratch.runtime_dir, "--force")
    assert r.returncode == 0, r.stderr
    assert not [m for m in mounts_under(scratch.dir) if m.startswith(scratch.runtime_dir)]
    assert not os.path.exists(os.path.join(scratch.runtime_dir, "env"))


def test_stop_clean_and_idempotent(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    r = kubensctl("stop", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0, r.stderr
    assert not [m for m in mounts_under(scratch.dir) if m.startswith(scratch.runtime_dir)]
    assert not os.path.exists(scratch.pin)
    r = kubensctl("stop", "--runtime-dir", scratch.runtime_dir)
    assert r.returncode == 0 and "nothing changed" in r.stdout


def test_join_library(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    code = "import os, kubensctl\nprint(kubensctl.join())\nprint(os.readlink('/proc/self/ns/mnt'))\n"
    r = run([sys.executable, "-c", code], env=env_with_src({"KUBENSMNT": scratch.pin}))
    joined, ns = r.stdout.split()
    assert joined == scratch.pin
    assert ns == run(["nsenter", f"--mount={scratch.pin}", "readlink", "/proc/self/ns/mnt"]).stdout.strip()
    r = run([sys.executable, "-c", "import kubensctl; print(kubensctl.join())"], env=env_with_src())
    assert r.stdout.strip() == "None"


def test_join_refuses_with_threads(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    code = (
        "import threading, time, kubensctl\n"
        "from kubensctl.errors import NamespaceError\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
        "try:\n    kubensctl.join()\nexcept NamespaceError as e:\n    print('refused:', e.line())\n"
    )
    r = run([sys.executable, "-c", code], env=env_with_src({"KUBENSMNT": scratch.pin}))
    assert r.stdout.startswith("refused:") and "threads" in r.stdout
