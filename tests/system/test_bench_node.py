"""kubensctl bench, watchers and metrics on the booted systemd test node (issue 5; issue 3's test 7).

With 1000 held mounts and 300 mount/umount cycles, PID 1 (systemd) must spend at most 1% of the shared
leg's CPU in the encapsulated leg, and PID 1's mount table must be exactly as before.

The ``node`` fixture comes from tests/system/conftest.py: ``node.run(cmd, check=True, input=None)`` runs a
command inside the node and returns a ``CompletedProcess[str]``; the repository's src is at
/opt/kubensctl/src in the node.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict

import pytest

pytestmark = pytest.mark.requires_node

SRC = "/opt/kubensctl/src"


def kubensctl(node: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp: subprocess.CompletedProcess[str] = node.run(
        ["env", f"PYTHONPATH={SRC}", "python3", "-m", "kubensctl", *args], check=check
    )
    return cp


def pid1_table(node: Any) -> str:
    out: str = node.run(["cat", "/proc/1/mountinfo"]).stdout
    return out


def test_encapsulated_pid1_cpu_at_most_one_percent(node: Any) -> None:
    before = pid1_table(node)
    r = kubensctl(node, "bench", "--mounts", "1000", "--cycles", "300", "--json", "--result-file", "/run/kb.json")
    doc: Dict[str, Any] = json.loads(r.stdout)
    after = pid1_table(node)
    print(json.dumps(doc, indent=2))  # the real numbers, for the record (pytest -s)
    assert doc["pid1"]["systemd"] is True and doc["pid1"]["version"], doc["pid1"]
    shared = doc["shared"]["pid1_cpu_seconds"]
    enc = doc["encapsulated"]["pid1_cpu_seconds"]
    # The shared leg must cost PID 1 something real, or the ratio means nothing.
    assert shared >= 0.1, doc
    assert enc <= 0.01 * shared, doc
    assert doc["ratio"] is not None and doc["ratio"] <= 0.01
    assert before == after
    assert kubensctl(node, "bench", "--cleanup").stdout.startswith("no leftovers")


def test_pid1_is_a_watcher_and_would_be_spared(node: Any) -> None:
    doc = json.loads(kubensctl(node, "watchers", "--json").stdout)
    pid1 = [w for w in doc["watchers"] if w["pid"] == 1]
    assert pid1, doc
    assert pid1[0]["name"] == "systemd" and "/proc/1/mountinfo" in pid1[0]["files"]
    assert pid1[0]["encapsulation_hides_container_mounts"] == "yes"


def test_metrics_on_the_node(node: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    kubensctl(node, "bench", "--mounts", "50", "--cycles", "20", "--result-file", "/run/kb-small.json")
    text = kubensctl(node, "metrics", "--bench-file", "/run/kb-small.json").stdout
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["leg"] for s in fams["kubensctl_bench_pid1_cpu_seconds"].samples} == {"shared", "encapsulated"}
    assert [s.value for s in fams["kubensctl_collector_success"].samples if s.labels["collector"] == "status"] == [1]
    assert fams["kubensctl_mounts"].samples[0].value > 0
