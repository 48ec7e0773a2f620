"""`kubensctl install --metrics --now` on the booted systemd test node (issue 5).

The timer, not install, must run kubensctl-metrics.service; what it writes must parse with the official
Prometheus parser; `kubensctl uninstall` must stop the timer and remove the units, the enablement link,
the textfile and the directories install made for it.
"""

from __future__ import annotations

import json
import time
from typing import Dict

import pytest
import testnode

pytestmark = pytest.mark.requires_node

TIMER = "kubensctl-metrics.timer"
SERVICE = "kubensctl-metrics.service"
TEXTFILE = "/var/lib/node_exporter/textfile_collector/kubensctl.prom"
WANTS = f"/etc/systemd/system/timers.target.wants/{TIMER}"


def show(node: testnode.Node, unit: str, *props: str) -> Dict[str, str]:
    out = node.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_install_metrics_timer_writes_the_textfile_and_uninstall_removes_it(node: testnode.Node) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    node.wait_for_kubelet()
    assert not node.path("/var/lib/node_exporter").exists(), "the test node has no node_exporter directory"

    out = node.kubensctl("install", "--metrics", "--now").stdout
    assert f"wrote /etc/systemd/system/{SERVICE}" in out and f"wrote /etc/systemd/system/{TIMER}" in out
    assert f"enabled {TIMER}" in out and f"started {TIMER}" in out
    assert node.run(["systemctl", "is-enabled", TIMER]).stdout.strip() == "enabled"
    assert node.run(["systemctl", "is-active", TIMER]).stdout.strip() == "active"
    again = node.kubensctl("install", "--metrics")
    assert again.stdout.startswith("nothing changed") and TIMER not in again.stdout, again.stdout

    # The timer fires 30 s after boot (at once when the node booted earlier), then every minute.
    textfile = node.path(TEXTFILE)
    deadline = time.monotonic() + 120
    while not textfile.exists():
        assert time.monotonic() < deadline, f"no {TEXTFILE} after 120 s: {show(node, TIMER, 'NextElapseUSecMonotonic')}"
        time.sleep(0.5)
    time.sleep(0.2)  # written atomically (renamed into place): complete once it exists
    timer = show(node, TIMER, "LastTriggerUSec", "ActiveState")
    assert timer["ActiveState"] == "active" and timer["LastTriggerUSec"] not in ("", "0", "n/a"), timer
    deadline = time.monotonic() + 30
    while (svc := show(node, SERVICE, "Result", "ActiveState"))["ActiveState"] == "activating":
        assert time.monotonic() < deadline, svc
        time.sleep(0.2)
    assert svc["Result"] == "success", svc

    fams = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    assert fams and all(name.startswith("kubensctl_") for name in fams), sorted(fams)
    success = {s.labels["collector"]: s.value for s in fams["kubensctl_collector_success"].samples}
    assert success.get("status") == 1 and success.get("host_mounts") == 1 and success.get("pinned_mounts") == 1
    # --now started kubens.service and restarted the wrapped kubelet and containerd before the timer.
    assert [s.value for s in fams["kubensctl_encapsulated"].samples] == [1], textfile.read_text()
    pinned = [s.value for s in fams["kubensctl_mounts"].samples if s.labels["mount_namespace"] == "pinned"]
    assert pinned and pinned[0] > 0

    record = json.loads(node.path("/var/lib/kubensctl/install.json").read_text())
    assert WANTS in record["links"] and TEXTFILE in record["generated"]

    out = node.run(["/usr/local/bin/kubensctl", "uninstall"]).stdout
    assert f"disabled {TIMER}" in out and f"stopped {TIMER}" in out, out
    assert f"removed {TEXTFILE}" in out and "removed /var/lib/node_exporter" in out, out
    assert node.run(["systemctl", "is-active", TIMER], check=False).stdout.strip() == "inactive"
    assert show(node, TIMER, "LoadState")["LoadState"] == "not-found"
    for path in (f"/etc/systemd/system/{SERVICE}", f"/etc/systemd/system/{TIMER}", WANTS, "/var/lib/node_exporter"):
        assert not node.path(path).exists() and not node.path(path).is_symlink(), path
    listed = node.run(["systemctl", "list-timers", "--all", "--no-legend"]).stdout
    assert TIMER not in listed
