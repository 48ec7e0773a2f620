"""`kubensctl cluster status|verify` against a fake `oc`/`kubectl` (tests/fakes/oc) replaying real outputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from clitest import one_line, run
from kubensctl import cluster

FAKES = Path(__file__).resolve().parents[1] / "fakes"
RECORDED = FAKES / "cluster"

HOST_NS = "mnt:[4026531840]"
KUBE_NS = "mnt:[4026532953]"
UNREACHABLE = "worker-3.ocp.example.com"


class FakeCluster:
    """A scenario directory for tests/fakes/oc, and the PATH that puts the fake first."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "cluster"
        (self.dir / "debug").mkdir(parents=True)
        self.nodes(unreachable=False)

    def nodes(self, unreachable: bool) -> None:
        """The recorded nodes; worker-3 (kubelet stopped posting status) only when asked for."""
        data = json.loads((RECORDED / "nodes.json").read_text())
        if not unreachable:
            data["items"] = [i for i in data["items"] if i["metadata"]["name"] != UNREACHABLE]
        (self.dir / "nodes.json").write_text(json.dumps(data, indent=4))

    def pools(self, *names: str) -> None:
        for i, name in enumerate(names, 1):
            shutil.copy(RECORDED / f"mcp-{name}.json", self.dir / f"mcp-{i}.json")

    def debug(self, node: str, **spec: Any) -> None:
        (self.dir / "debug" / f"{node}.json").write_text(json.dumps(spec))

    def encapsulated(self, node: str, runtime: str = "crio") -> None:
        self.debug(node, namespaces={"pid1": HOST_NS, "kubelet": [2301, KUBE_NS], runtime: [1877, KUBE_NS]})

    def all_encapsulated(self) -> None:
        for item in json.loads((self.dir / "nodes.json").read_text())["items"]:
            self.encapsulated(item["metadata"]["name"])

    def logout(self) -> None:
        (self.dir / "unauthorized").write_text("")

    def calls(self) -> List[List[str]]:
        log = self.dir / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fc = FakeCluster(tmp_path)
    monkeypatch.setenv("FAKE_CLUSTER_DIR", str(fc.dir))
    # The fake first; the interpreter's directory so its `#!/usr/bin/env python3` resolves; nothing else.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{bindir}")
    return fc


@pytest.fixture
def kubectl_only(fake: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    only = tmp_path / "kubectl-only"
    only.mkdir()
    (only / "kubectl").symlink_to(FAKES / "kubectl")
    monkeypatch.setenv("PATH", f"{only}{os.pathsep}{tmp_path / 'bin'}")
    return fake


# ------------------------------------------------------------------------------------------------
# cluster status
# ------------------------------------------------------------------------------------------------


def test_status_prints_the_seed_columns(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updating")
    code, out, _ = run(capsys, "cluster", "status")
    lines = out.splitlines()
    assert lines[0].split() == list(cluster.POOL_HEADER)
    master = lines[1].split()
    assert master[:9] == [
        "master", "rendered-master-03d4bc4befb0f4ed3566a2c8f7636751", "False", "True", "False", "3", "0", "0", "0",
    ]  # fmt: skip
    assert lines[2].split()[:9] == [
        "worker", "rendered-worker-10577f6ab0117ed1825f8af2ac687ddf", "False", "True", "False", "3", "1", "1", "0",
    ]  # fmt: skip
    assert code == 3  # rollout in progress


def test_status_all_updated_exits_zero(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updated")
    code, out, _ = run(capsys, "cluster", "status")
    assert code == 0
    assert all(line.split()[2] == "True" for line in out.splitlines()[1:])


def test_status_degraded_pool_is_an_error(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("degraded")
    code, out, err = run(capsys, "cluster", "status")
    assert code == 1
    assert "worker" in out
    line = one_line(err)
    assert "degraded" in line and "worker" in line and "content mismatch" in line


def test_wait_returns_when_every_pool_is_updated(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updating", "half", "updated")
    code, out, err = run(capsys, "cluster", "status", "--wait", "--timeout", "30s", "--interval", "0.05")
    assert code == 0, err
    assert "rendered-master-8b2f0c1de4a7e6f35a9c0d1b2e3f4a5b" in out
    assert "waiting for pools to update" in err  # progress on stderr
    assert "master 2/3" in err
    assert sum(c[1:3] == ["get", "machineconfigpools"] for c in fake.calls()) == 3


def test_wait_rides_out_an_api_server_restart(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Masters reboot during the rollout: a refused connection mid-wait is retried, not fatal."""
    fake.pools("updating", "half")
    refused = (
        "The connection to the server api.ocp.example.com:6443 was refused - did you specify the right host or port?\n"
    )
    (fake.dir / "mcp-3.json").write_text(json.dumps({"fail": refused}))
    shutil.copy(RECORDED / "mcp-updated.json", fake.dir / "mcp-4.json")
    code, out, err = run(capsys, "cluster", "status", "--wait", "--timeout", "30s", "--interval", "0.05")
    assert code == 0, err
    assert "API server" in err and "was refused" in err
    assert "rendered-worker-5c9e1f2a3b4d5e6f7a8b9c0d1e2f3a4b" in out


def test_wait_gives_up_at_once_when_logged_out(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updating")
    (fake.dir / "mcp-2.json").write_text(
        json.dumps({"fail": "error: You must be logged in to the server (Unauthorized)\n"})
    )
    code, _, err = run(capsys, "cluster", "status", "--wait", "--timeout", "30m", "--interval", "0.05")
    assert code == 1
    assert "not logged in" in err.strip().splitlines()[-1]


def test_wait_timeout(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updating")
    start = time.monotonic()
    code, _, err = run(capsys, "cluster", "status", "--wait", "--timeout", "1s", "--interval", "0.2")
    assert time.monotonic() - start < 15
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert "timed out after 1s" in last and "master (0/3 updated)" in last and "Traceback" not in err


def test_wait_fails_fast_on_degraded(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.pools("updating", "degraded")
    code, _, err = run(capsys, "cluster", "status", "--wait", "--timeout", "30m", "--interval", "0.05")
    assert code == 1
    assert "MachineConfigPool degraded: worker" in err.strip().splitlines()[-1]


def test_wait_uses_an_injected_clock() -> None:
    """The wait loop's timing is the clock's, not the wall's: a 30m timeout costs no real time."""
    now = [0.0]
    client = cluster.Client("oc", "oc")
    pools = cluster.parse_pools(json.loads((RECORDED / "mcp-updating.json").read_text()))
    original = cluster.get_pools
    cluster.get_pools = lambda c: pools  # type: ignore[assignment]
    try:
        with pytest.raises(cluster.ClusterError, match="timed out after 30m"):
            cluster.wait_for_pools(
                client, 1800, 10, out=io.StringIO(), clock=lambda: now[0],
                sleep=lambda s: now.__setitem__(0, now[0] + s),
            )  # fmt: skip
    finally:
        cluster.get_pools = original  # type: ignore[assignment]
    assert now[0] == 1800


def test_status_on_plain_kubernetes(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cluster", "status")
    assert code == 1
    assert "no MachineConfigPools (not OpenShift)" in one_line(err)


def test_paused_pool_is_reported_while_waiting(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((RECORDED / "mcp-updating.json").read_text())
    data["items"][1]["spec"]["paused"] = True
    (fake.dir / "mcp.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "cluster", "status", "--wait", "--interval", "0.05")
    assert code == 1 and "paused" in err.strip().splitlines()[-1]


def test_pool_not_yet_observed_is_not_done() -> None:
    """Right after `oc apply` the controller may not have seen the new generation: not updated yet."""
    data = json.loads((RECORDED / "mcp-updated.json").read_text())
    data["items"][0]["metadata"]["generation"] = 4
    pools = cluster.parse_pools(data)
    assert not pools[0].done and pools[1].done


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45), ("1.5s", 1.5), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert cluster.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "10x", "-5", "0", "m30"])
def test_bad_duration_is_one_usage_line(fake: FakeCluster, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, _, err = run(capsys, "cluster", "status", "--wait", "--timeout", bad)
    assert code == 2
    assert "invalid duration" in one_line(err)


# ------------------------------------------------------------------------------------------------
# bad environments: no client, not logged in
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["verify"]])
def test_no_oc_or_kubectl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: List[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = run(capsys, "cluster", *command)
    assert code == 127
    assert out == ""
    line = one_line(err)
    assert "neither oc nor kubectl" in line and "install" in line


@pytest.mark.parametrize("command", [["status"], ["verify"]])
def test_not_logged_in(fake: FakeCluster, capsys: pytest.CaptureFixture[str], command: List[str]) -> None:
    fake.pools("updated")
    fake.logout()
    code, out, err = run(capsys, "cluster", *command)
    assert code == 1
    assert out == ""
    line = one_line(err)
    assert "not logged in" in line and "Unauthorized" in line and "oc login" in line


def test_not_logged_in_with_kubectl(kubectl_only: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    kubectl_only.logout()
    code, _, err = run(capsys, "cluster", "verify")
    assert code == 1
    assert "KUBECONFIG" in one_line(err)


# ------------------------------------------------------------------------------------------------
# cluster verify
# ------------------------------------------------------------------------------------------------


def rows(out: str) -> Dict[str, List[str]]:
    lines = out.splitlines()
    assert lines[0].split("   ")[0].strip() == "NODE"
    return {ln.split()[0]: ln.split() for ln in lines[1:]}


def test_verify_every_node_encapsulated(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    code, out, _ = run(capsys, "cluster", "verify")
    assert code == 0
    table = rows(out)
    assert len(table) == 5
    row = table["master-0.ocp.example.com"]
    assert row[1:7] == ["control-plane,master", HOST_NS, KUBE_NS, "crio", KUBE_NS, "encapsulated"]
    debug_calls = [c for c in fake.calls() if c[1] == "debug"]
    assert len(debug_calls) == 5
    # The seed's procedure: oc debug node/NAME, chroot /host, plain readlink (no kubensctl on the node).
    assert debug_calls[0][2].startswith("node/")
    assert debug_calls[0][3:7] == ["--", "chroot", "/host", "sh"]
    assert "readlink /proc/$1/ns/mnt" in debug_calls[0][-1] and "kubensctl " not in debug_calls[0][-1]


def test_verify_not_encapsulated_node(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    fake.debug(
        "worker-1.ocp.example.com",
        namespaces={"pid1": HOST_NS, "kubelet": [2301, HOST_NS], "crio": [1877, HOST_NS]},
    )
    code, out, err = run(capsys, "cluster", "verify")
    assert code == 3
    assert "not encapsulated" in " ".join(rows(out)["worker-1.ocp.example.com"])
    assert "of 5 nodes, 1 not encapsulated" in err


def test_verify_split_namespaces(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    fake.debug(
        "worker-0.ocp.example.com",
        namespaces={"pid1": HOST_NS, "kubelet": [2301, KUBE_NS], "crio": [1877, HOST_NS]},
    )
    code, out, _ = run(capsys, "cluster", "verify")
    assert code == 3
    assert rows(out)["worker-0.ocp.example.com"][6] == "split"


def test_verify_debug_pod_fails(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    fake.debug(
        "worker-2.ocp.example.com",
        stdout="",
        rc=1,
        stderr='error: Back-off pulling image "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:9f1c"\n',
    )
    code, out, _ = run(capsys, "cluster", "verify")
    assert code == 1
    row = " ".join(rows(out)["worker-2.ocp.example.com"])
    assert "error (debug pod failed: error: Back-off pulling image" in row


def test_verify_node_that_does_not_answer(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    fake.debug("worker-2.ocp.example.com", hang=600, namespaces={"pid1": HOST_NS})
    start = time.monotonic()
    code, out, _ = run(capsys, "cluster", "verify", "--node-timeout", "2s", "--parallel", "5")
    assert time.monotonic() - start < 20
    assert code == 1
    assert "no answer (no answer within 2s)" in " ".join(rows(out)["worker-2.ocp.example.com"])
    assert rows(out)["worker-0.ocp.example.com"][6] == "encapsulated"


def test_verify_parses_around_oc_noise(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Newer oc announces temporary namespaces; some versions print the hint on stdout. Still parsed."""
    fake.all_encapsulated()
    fake.debug(
        "master-1.ocp.example.com",
        stdout="Temporary namespace openshift-debug-4xq9z is created for debugging node...\n"
        "To use host binaries, run `chroot /host`\r\n"
        f"KUBENSCTL-VERIFY pid1 1 {HOST_NS}\r\nKUBENSCTL-VERIFY kubelet 2301 {KUBE_NS}\n"
        f"KUBENSCTL-VERIFY crio 1877 {KUBE_NS}\nKUBENSCTL-VERIFY containerd - -\nKUBENSCTL-VERIFY end\n",
        stderr="Temporary namespace openshift-debug-4xq9z was removed.\n",
    )
    code, out, _ = run(capsys, "cluster", "verify")
    assert code == 0, out


def test_verify_selector_and_zero_nodes(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    code, out, _ = run(capsys, "cluster", "verify", "--selector", "node-role.kubernetes.io/master")
    assert code == 0
    assert set(rows(out)) == {"master-0.ocp.example.com", "master-1.ocp.example.com"}
    code, out, err = run(capsys, "cluster", "verify", "-l", "node-role.kubernetes.io/infra")
    assert code == 1 and out == ""
    assert "no nodes match the selector 'node-role.kubernetes.io/infra'" in one_line(err)


def test_verify_json(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.all_encapsulated()
    fake.debug("worker-1.ocp.example.com", namespaces={"pid1": HOST_NS, "crio": [1877, HOST_NS]})
    code, out, _ = run(capsys, "cluster", "verify", "--json")
    data = json.loads(out)
    assert code == 3
    assert data["encapsulated"] is False
    by = {n["node"]: n for n in data["nodes"]}
    assert by["worker-1.ocp.example.com"]["verdict"] == "no kubelet"
    assert by["worker-0.ocp.example.com"] == {
        "node": "worker-0.ocp.example.com", "roles": "worker", "pid1": HOST_NS, "kubelet": KUBE_NS,
        "runtime": "crio", "runtime_ns": KUBE_NS, "verdict": "encapsulated", "detail": "",
    }  # fmt: skip


def test_verify_bounded_parallelism(fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    active, peak = [0], [0]
    lock = threading.Lock()

    def slow(client: Any, node: Any, timeout: float, image: str) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return cluster.NodeResult(node.name, node.roles, verdict="encapsulated")

    monkeypatch.setattr(cluster, "verify_node", slow)
    nodes = [cluster.Node(f"n{i}", "worker", "crio") for i in range(7)]
    results = cluster.verify_nodes(cluster.Client("oc", "oc"), nodes, 2, 5, "img")
    assert [r.node for r in results] == [n.name for n in nodes]
    assert peak[0] == 2


def test_verify_with_kubectl(kubectl_only: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    kubectl_only.all_encapsulated()
    data = json.loads((kubectl_only.dir / "nodes.json").read_text())
    for item in data["items"]:
        item["status"]["nodeInfo"]["containerRuntimeVersion"] = "containerd://1.7.13"
    (kubectl_only.dir / "nodes.json").write_text(json.dumps(data))
    for item in data["items"]:
        kubectl_only.encapsulated(item["metadata"]["name"], runtime="containerd")
    code, out, _ = run(capsys, "cluster", "verify", "--image", "busybox:1.36")
    assert code == 0, out
    assert rows(out)["worker-0.ocp.example.com"][4] == "containerd"
    calls = kubectl_only.calls()
    debug = [c for c in calls if c[1] == "debug"]
    assert all(c[0] == "kubectl" for c in calls)
    assert "--image=busybox:1.36" in debug[0] and "--profile=sysadmin" in debug[0]
    deletes = [c for c in calls if c[1] == "delete"]  # kubectl leaves node debug pods behind: removed
    assert len(deletes) == 5 and deletes[0][2] == "pod" and deletes[0][3].startswith("node-debugger-")


@pytest.mark.parametrize("bad", [["--parallel", "0"], ["--node-timeout", "never"]])
def test_verify_bad_options(fake: FakeCluster, capsys: pytest.CaptureFixture[str], bad: List[str]) -> None:
    code, _, err = run(capsys, "cluster", "verify", *bad)
    assert code == 2
    one_line(err)


def test_judge_prefers_the_runtime_the_node_reports() -> None:
    node = cluster.Node("n", "worker", "containerd")
    facts = {"pid1": ("1", HOST_NS), "kubelet": ("5", KUBE_NS), "crio": ("6", HOST_NS), "containerd": ("7", KUBE_NS)}
    assert cluster.judge(node, facts).verdict == "encapsulated"
    assert cluster.judge(cluster.Node("n", "worker", "crio"), facts).verdict == "split"


def test_verify_script_runs_on_this_machine(tmp_path: Path) -> None:
    """The script itself (without chroot) runs under sh and prints the marked lines the parser reads."""
    import subprocess

    if shutil.which("sh") is None:
        pytest.skip("no sh")
    proc = subprocess.run(["sh", "-c", cluster.VERIFY_SCRIPT], capture_output=True, text=True, timeout=30)
    facts, end = cluster.parse_verify_output(proc.stdout)
    assert end
    assert set(facts) == {"pid1", "kubelet", "crio", "containerd"}
    own: Optional[str] = None
    try:
        own = os.readlink("/proc/1/ns/mnt")
    except OSError:
        pass
    assert facts["pid1"][1] == (own or "-")


def test_kubectl_attach_race_falls_back_to_logs(kubectl_only: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    kubectl_only.all_encapsulated()
    kubectl_only.debug(
        "worker-1.ocp.example.com",
        attach_fails=True,
        namespaces={"pid1": HOST_NS, "kubelet": [2301, KUBE_NS], "crio": [1877, KUBE_NS]},
    )
    code, out, _ = run(capsys, "cluster", "verify")
    assert code == 0, out
    calls = kubectl_only.calls()
    assert ["kubectl", "logs", "pod/node-debugger-worker-1.ocp.example.com-x7k2q"] in calls
    assert sum(c[1] == "logs" for c in calls) == 1


def test_verify_unreachable_node_is_not_waited_for(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """A node whose kubelet stopped posting status (Ready=Unknown) cannot start a debug pod: said at once."""
    fake.nodes(unreachable=True)
    fake.all_encapsulated()
    code, out, err = run(capsys, "cluster", "verify")
    assert code == 1
    assert " ".join(rows(out)[UNREACHABLE]).endswith(
        "no answer (node unreachable: Kubelet stopped posting node status.)"
    )
    assert not any(c[1] == "debug" and c[2] == f"node/{UNREACHABLE}" for c in fake.calls())
    assert "of 6 nodes, 1 did not answer" in err
    # worker-2 is Ready=False (CNI not ready) but its kubelet runs host-network pods: it is checked.
    assert rows(out)["worker-2.ocp.example.com"][6] == "encapsulated"


def test_client_choice(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """--client kubectl uses kubectl even with oc first on PATH (e.g. oc's tools image is not reachable)."""
    fake.all_encapsulated()
    code, _, _ = run(capsys, "cluster", "verify", "--client", "kubectl", "-l", "node-role.kubernetes.io/master")
    assert code == 0
    assert {c[0] for c in fake.calls()} == {"kubectl"}


def test_chosen_client_missing(kubectl_only: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cluster", "status", "--client", "oc")
    assert code == 127
    assert "oc was not found on PATH" in one_line(err)


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    seq = [json.loads((RECORDED / f"mcp-{n}.json").read_text()) for n in ("updating", "half", "updated")]
    original = cluster.get_pools
    cluster.get_pools = lambda c: cluster.parse_pools(seq.pop(0))  # type: ignore[assignment]
    out = Tty()
    try:
        pools = cluster.wait_for_pools(
            cluster.Client("oc", "oc"), 60, 5, out=out, clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + s),
        )  # fmt: skip
    finally:
        cluster.get_pools = original  # type: ignore[assignment]
    assert all(p.done for p in pools)
    text = out.getvalue()
    assert text.count("\r\033[K") == 2 and text.endswith("\n")
    assert "master 0/3*, worker 1/3*" in text and "master 2/3*, worker 3/3" in text
