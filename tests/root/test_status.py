"""status verdicts and the mounts inventory, with fake kubelet/crio processes (copies of sleep)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import pytest

from nstest import Scratch, kubensctl, ns_of, run

pytestmark = pytest.mark.requires_root

NAMES = ("--process", "kubelet", "--process", "crio")


def status(s: Scratch, *extra: str) -> Tuple[int, Dict[str, Any]]:
    r = kubensctl("status", "--runtime-dir", s.runtime_dir, "--host-pid", str(os.getpid()), *NAMES, "--json", *extra)
    assert r.stderr == "", r.stderr
    return r.returncode, json.loads(r.stdout)


def human(s: Scratch) -> str:
    return kubensctl("status", "--runtime-dir", s.runtime_dir, "--host-pid", str(os.getpid()), *NAMES).stdout


def test_not_encapsulated(scratch: Scratch) -> None:
    scratch.start_in(None, "kubelet")
    scratch.start_in(None, "crio")
    code, doc = status(scratch)
    assert code == 3 and doc["verdict"] == "not-encapsulated"
    assert {p["name"] for p in doc["processes"]} == {"kubelet", "crio"}
    assert all(p["namespace"] == ns_of("self") for p in doc["processes"])
    assert doc["pinned"]["namespace"] is None
    assert human(scratch).splitlines()[0].endswith(f"Kubernetes shares PID {os.getpid()}'s mount namespace")


def test_encapsulated(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    k = scratch.start_in(scratch.pin, "kubelet")
    c = scratch.start_in(scratch.pin, "crio")
    code, doc = status(scratch)
    assert code == 0 and doc["verdict"] == "encapsulated", doc["problems"]
    pinned = doc["pinned"]["namespace"]
    assert pinned == ns_of(k.pid) == ns_of(c.pid) != doc["host"]["namespace"]
    assert {(p["pid"], p["where"]) for p in doc["processes"]} == {(k.pid, "pinned"), (c.pid, "pinned")}
    text = human(scratch)
    assert "encapsulated" in text.splitlines()[0] and "Problems" not in text


def test_degraded_split(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    scratch.start_in(scratch.pin, "kubelet")
    scratch.start_in(None, "crio")
    code, doc = status(scratch)
    assert code == 1 and doc["verdict"] == "degraded"
    assert any("split" in p["message"] for p in doc["problems"])
    text = human(scratch)
    assert "Problems:" in text and "fix:" in text


def test_degraded_unused_pin(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    scratch.start_in(None, "kubelet")
    code, doc = status(scratch)
    assert code == 1 and any("unused" in p["message"] for p in doc["problems"])


def test_degraded_stale_pin(scratch: Scratch) -> None:
    os.makedirs(scratch.runtime_dir)
    open(scratch.pin, "w").close()
    scratch.start_in(None, "kubelet")
    code, doc = status(scratch)
    assert code == 1 and doc["pinned"]["state"] == "file"
    assert any("stale" in p["message"] for p in doc["problems"])


def test_host_pid_unreadable_is_one_line_error() -> None:
    r = kubensctl("status", "--host-pid", "999999999")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--host-pid" in r.stderr


def test_mounts_inventory(scratch: Scratch) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    vol = scratch.path("pods", "uid 1", "volumes")
    os.makedirs(vol)
    for i in range(3):
        os.makedirs(os.path.join(vol, f"v{i}"))
        run(["nsenter", f"--mount={scratch.pin}", "mount", "-t", "tmpfs", "kubelet-tmpfs", os.path.join(vol, f"v{i}")])
    host = scratch.path("host-only")
    os.makedirs(host)
    run(["mount", "-t", "tmpfs", "hostfs", host])
    r = kubensctl("mounts", "--runtime-dir", scratch.runtime_dir, "--host-pid", str(os.getpid()), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    hidden = {m["mount_point"] for m in doc["hidden"]}
    assert hidden == {os.path.join(vol, f"v{i}") for i in range(3)}, "space in 'uid 1' must survive \\040"
    assert doc["hidden_by_type"] == {"tmpfs": 3}
    text = kubensctl("mounts", "--runtime-dir", scratch.runtime_dir, "--host-pid", str(os.getpid())).stdout
    assert text.startswith("3 mount(s)") and "tmpfs" in text
    full = json.loads(
        kubensctl(
            "mounts", "--runtime-dir", scratch.runtime_dir, "--host-pid", str(os.getpid()), "--json", "--all"
        ).stdout
    )
    assert host in {m["mount_point"] for m in full["all"] if not m["hidden"]}


def test_mounts_without_pin_exits_3(scratch: Scratch) -> None:
    r = kubensctl("mounts", "--runtime-dir", scratch.runtime_dir, "--host-pid", str(os.getpid()))
    assert r.returncode == 3 and r.stderr.count("\n") == 1


def test_degraded_processes_in_an_old_pin(scratch: Scratch) -> None:
    """A pin torn down under running processes (stop --force) and made again: they are left behind."""
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    scratch.start_in(scratch.pin, "kubelet")
    scratch.start_in(scratch.pin, "crio")
    kubensctl("stop", "--runtime-dir", scratch.runtime_dir, "--force", check=True)
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    code, doc = status(scratch)
    assert code == 1 and doc["verdict"] == "degraded"
    assert any("not in the pinned namespace" in p["message"] for p in doc["problems"])
    assert {p["where"] for p in doc["processes"]} == {"other"}
