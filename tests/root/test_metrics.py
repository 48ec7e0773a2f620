"""kubensctl metrics on real namespaces, parsed with the official Prometheus parser (prometheus_client).

The stand-in kubelet has a name of its own (KUBELET): other tests and benchmarks on this machine start
processes called kubelet, which would count here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nstest import Scratch, kubensctl, run

pytestmark = pytest.mark.requires_root

KUBELET = "kmtest-kubelet"


def scrape(s: Scratch, *extra: str) -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    r = kubensctl(
        "metrics", "--runtime-dir", s.runtime_dir, "--host-pid", str(os.getpid()), "--process", KUBELET, *extra
    )
    assert r.returncode == 0, r.stderr
    return parse(r.stdout)


def parse(text: str) -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    out: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in out, f"family {fam.name} twice"
        assert fam.type == "gauge" and fam.documentation
        out[fam.name] = {tuple(sorted(smp.labels.items())): smp.value for smp in fam.samples}
    return out


def one(m: Dict[str, Any], name: str, **labels: str) -> float:
    value: float = m[name][tuple(sorted(labels.items()))]
    return value


def test_not_encapsulated(scratch: Scratch, tmp_path: Path) -> None:
    scratch.start_in(None, KUBELET)
    m = scrape(scratch, "--bench-file", str(tmp_path / "none.json"))
    assert one(m, "kubensctl_encapsulated") == 0
    assert one(m, "kubensctl_verdict", verdict="not-encapsulated") == 1
    assert one(m, "kubensctl_verdict", verdict="encapsulated") == 0
    assert one(m, "kubensctl_kubernetes_processes", mount_namespace="host") == 1
    assert one(m, "kubensctl_mounts", mount_namespace="host") > 0
    assert ("mount_namespace", "pinned") not in {k[0] for k in m["kubensctl_mounts"]}
    assert "kubensctl_hidden_mounts" not in m and "kubensctl_bench_pid1_cpu_seconds" not in m
    assert one(m, "kubensctl_collector_success", collector="status") == 1


def test_encapsulated_with_hidden_mounts_and_bench(scratch: Scratch, tmp_path: Path) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    scratch.start_in(scratch.pin, KUBELET)
    # Two "container" mounts made inside the pinned namespace: hidden from the host.
    for i, fstype in enumerate(("tmpfs", "tmpfs")):
        d = scratch.path("pods", f"vol{i}")
        os.makedirs(d)
        run(["nsenter", f"--mount={scratch.pin}", "mount", "-t", fstype, fstype, d])
    d = scratch.path("pods", "ro")
    os.makedirs(d)
    run(["nsenter", f"--mount={scratch.pin}", "mount", "--bind", scratch.path("bin"), d])
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "timestamp": 1700000000,
                "mounts": 1000,
                "cycles": 300,
                "shared": {"pid1_cpu_seconds": 0.45, "wall_seconds": 3.09},
                "encapsulated": {"pid1_cpu_seconds": 0.0, "wall_seconds": 3.45},
                "ratio": 0.0,
            }
        )
    )
    m = scrape(scratch, "--bench-file", str(bench))
    assert one(m, "kubensctl_encapsulated") == 1
    assert one(m, "kubensctl_verdict", verdict="encapsulated") == 1
    assert one(m, "kubensctl_pin_healthy") == 1 and one(m, "kubensctl_problems") == 0
    assert one(m, "kubensctl_kubernetes_processes", mount_namespace="pinned") == 1
    assert one(m, "kubensctl_kubernetes_processes", mount_namespace="host") == 0
    assert one(m, "kubensctl_hidden_mounts", fstype="tmpfs") == 2
    hidden_total = sum(m["kubensctl_hidden_mounts"].values())
    assert hidden_total == 3
    pinned = one(m, "kubensctl_mounts", mount_namespace="pinned")
    host = one(m, "kubensctl_mounts", mount_namespace="host")
    assert pinned >= 3 and host > 0
    assert one(m, "kubensctl_bench_pid1_cpu_seconds", leg="shared") == 0.45
    assert one(m, "kubensctl_bench_pid1_cpu_ratio") == 0.0
    assert one(m, "kubensctl_bench_held_mounts") == 1000
    assert all(v == 1 for v in m["kubensctl_collector_success"].values())


def test_textfile_atomic_and_parseable(scratch: Scratch, tmp_path: Path) -> None:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    out = tmp_path / "collector" / "kubensctl.prom"
    out.parent.mkdir()
    out.write_text("stale\n")
    r = kubensctl(
        "metrics",
        "--runtime-dir",
        scratch.runtime_dir,
        "--host-pid",
        str(os.getpid()),
        "--process",
        KUBELET,
        "--textfile",
        str(out),
    )
    assert r.returncode == 0 and r.stdout == "", r.stderr
    m = parse(out.read_text())
    assert one(m, "kubensctl_verdict", verdict="encapsulated") == 1  # pinned, no Kubernetes process yet
    assert [p.name for p in out.parent.iterdir()] == ["kubensctl.prom"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"
