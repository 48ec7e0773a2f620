"""kubensctl bench on this machine: the mount table is left exactly as found (also after SIGINT, SIGTERM,
SIGKILL of the bench, SIGKILL of everything + --cleanup), and a mount-table watcher only pays in the
shared leg.

Each scenario runs in a private mount namespace of its own (``unshare -m --propagation private``), so
other tests mounting at the same time cannot change the table being compared; the bench's ``--host-pid``
is the scenario's driver process, which lives in that namespace.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from nstest import SRC, run

pytestmark = pytest.mark.requires_root

DRIVER = r"""
import json, os, signal, subprocess, sys, time

cfg = json.loads(sys.argv[1])
base = cfg["base"]

def table():
    with open("/proc/self/mountinfo") as f:
        return f.read()

def ours():
    return [l for l in table().splitlines() if "kubensctl-bench-" in l]

def children(pid):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(e))
    return out

def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen

# Other tests and benchmarks on this machine make scratch trees under /tmp. Removing such a directory
# detaches the mounts on it in every namespace, ours included, which would change the table under us:
# drop them from this private namespace first (nothing here propagates anywhere).
for _ in range(5):
    foreign = [l.split()[4] for l in table().splitlines() if l.split()[4].startswith("/tmp/")]
    if not foreign:
        break
    for mp in sorted(foreign, key=len):
        subprocess.run(["umount", "-l", mp], capture_output=True)

host = os.getpid()
watcher = None
if cfg.get("watcher"):
    watcher = subprocess.Popen([sys.executable, "-c", cfg["watcher"]], stdout=subprocess.PIPE, text=True)
    assert watcher.stdout.readline() == "ready\n"
    host = watcher.pid

before = table()
cmd = [sys.executable, "-m", "kubensctl", "bench", "--host-pid", str(host), "--scratch-base", base] + cfg["args"]
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
err_lines = []
mid_ours = None
if cfg.get("signal"):
    for line in p.stderr:
        err_lines.append(line)
        if cfg["wait_for"] in line:
            break
    time.sleep(0.2)
    if cfg["signal"] == "KILLALL":
        pids = tree(p.pid)
        for pid in reversed(pids):  # deepest first: the guardian must not get to clean up
            os.kill(pid, signal.SIGKILL)
    else:
        os.kill(p.pid, getattr(signal, cfg["signal"]))
out, err = p.communicate(timeout=120)
err = "".join(err_lines) + err
if cfg.get("signal") == "SIGKILL":
    deadline = time.time() + 20
    while ours() and time.time() < deadline:
        time.sleep(0.05)
mid_ours = ours()
left_dirs = sorted(os.listdir(base))
cleanup = None
if cfg.get("cleanup"):
    time.sleep(0.3)
    c = subprocess.run([sys.executable, "-m", "kubensctl", "bench", "--cleanup", "--scratch-base", base],
                       capture_output=True, text=True)
    cleanup = {"rc": c.returncode, "out": c.stdout, "err": c.stderr}
after = table()
if watcher:
    watcher.kill()
print(json.dumps({"before": before, "after": after, "rc": p.returncode, "out": out, "err": err,
                  "mid_ours": mid_ours, "left_dirs": left_dirs, "after_dirs": sorted(os.listdir(base)),
                  "cleanup": cleanup, "host": host}))
"""

# A stand-in for systemd's mount-table watching: wake on every change of /proc/self/mountinfo, re-read it.
WATCHER = r"""
import select
f = open("/proc/self/mountinfo")
p = select.poll()
p.register(f, select.POLLPRI | select.POLLERR)
print("ready", flush=True)
while True:
    p.poll()
    for _ in range(20):
        f.seek(0)
        rows = [line.split() for line in f.read().splitlines()]
"""


def scenario(base: Path, args: List[str], **cfg: Any) -> Dict[str, Any]:
    cfg.update(base=str(base), args=args)
    r = run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", DRIVER, json.dumps(cfg)],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        timeout=300,
    )
    doc: Dict[str, Any] = json.loads(r.stdout)
    return doc


SMALL = ["--mounts", "40", "--cycles", "30", "--interval", "0", "--settle", "0.2", "--no-save"]
SLOW = ["--mounts", "40", "--cycles", "5000", "--interval", "0.005", "--settle", "0.2", "--no-save"]


def test_bench_json_and_table_identical(tmp_path: Path) -> None:
    result = tmp_path / "state" / "bench.json"
    base = tmp_path / "base"
    base.mkdir()
    doc = scenario(
        base,
        [
            "--mounts",
            "40",
            "--cycles",
            "30",
            "--interval",
            "0",
            "--settle",
            "0.2",
            "--json",
            "--result-file",
            str(result),
        ],
    )
    assert doc["rc"] == 0, doc["err"]
    assert doc["before"] == doc["after"]
    assert doc["after_dirs"] == []
    out = json.loads(doc["out"])
    assert out["mounts"] == 40 and out["cycles"] == 30
    for leg in ("shared", "encapsulated"):
        assert out[leg]["pid1_cpu_seconds"] >= 0 and out[leg]["wall_seconds"] > 0
    assert "ratio" in out
    assert out["pid1"]["pid"] == doc["host"] and out["pid1"]["systemd"] is False
    assert json.loads(result.read_text()) == out  # saved for `kubensctl metrics`
    assert [p.name for p in result.parent.iterdir()] == ["bench.json"]
    assert "shared leg" in doc["err"] and "encapsulated leg" in doc["err"]  # progress on stderr


def test_bench_human_output(tmp_path: Path) -> None:
    doc = scenario(tmp_path, SMALL)
    assert doc["rc"] == 0, doc["err"]
    lines = doc["out"].splitlines()
    assert "not systemd" in lines[0] and "40 held tmpfs mounts" in lines[0]
    assert any(line.strip().startswith("shared") for line in lines)
    assert any(line.strip().startswith("encapsulated") for line in lines)
    assert "no measurable CPU" in lines[-1]
    assert doc["before"] == doc["after"]


def test_watcher_pays_only_in_the_shared_leg(tmp_path: Path) -> None:
    doc = scenario(
        tmp_path,
        ["--mounts", "300", "--cycles", "200", "--interval", "0.002", "--settle", "0.5", "--json", "--no-save"],
        watcher=WATCHER,
    )
    assert doc["rc"] == 0, doc["err"]
    out = json.loads(doc["out"])
    shared, enc = out["shared"]["pid1_cpu_seconds"], out["encapsulated"]["pid1_cpu_seconds"]
    assert shared >= 0.1, out
    assert enc <= 0.02 and out["ratio"] <= 0.1, out
    assert doc["before"] == doc["after"]


@pytest.mark.parametrize(
    "sig,code,wait_for",
    [
        ("SIGINT", 130, "shared leg: mount/umount cycles"),
        ("SIGTERM", 143, "shared leg: mount/umount cycles"),
        ("SIGINT", 130, "encapsulated leg: mount/umount cycles"),
        ("SIGHUP", 129, "encapsulated leg: mount/umount cycles"),
    ],
)
def test_interrupted_bench_restores_the_table(tmp_path: Path, sig: str, code: int, wait_for: str) -> None:
    doc = scenario(tmp_path, SLOW, signal=sig, wait_for=wait_for)
    assert doc["rc"] == code, doc["err"]
    last = doc["err"].strip().splitlines()[-1]
    assert last.startswith("kubensctl: interrupted by") and "mount table is as it was" in last
    assert doc["before"] == doc["after"]
    assert doc["after_dirs"] == []


@pytest.mark.parametrize("wait_for", ["shared leg: mount/umount cycles", "encapsulated leg: mount/umount cycles"])
def test_sigkill_of_the_bench_is_cleaned_by_its_guardian(tmp_path: Path, wait_for: str) -> None:
    doc = scenario(tmp_path, SLOW, signal="SIGKILL", wait_for=wait_for)
    assert doc["rc"] == -9
    assert doc["mid_ours"] == []
    assert doc["before"] == doc["after"]
    assert doc["after_dirs"] == []
    assert "removed its scratch tree" in doc["err"]


@pytest.mark.parametrize("wait_for", ["shared leg: mount/umount cycles", "encapsulated leg: mount/umount cycles"])
def test_sigkill_of_everything_then_cleanup(tmp_path: Path, wait_for: str) -> None:
    doc = scenario(tmp_path, SLOW, signal="KILLALL", wait_for=wait_for, cleanup=True)
    assert doc["rc"] == -9
    assert doc["mid_ours"], "killing everything should leave mounts behind for --cleanup"
    assert len(doc["left_dirs"]) == 1 and doc["left_dirs"][0].startswith("kubensctl-bench-")
    assert doc["cleanup"]["rc"] == 0, doc["cleanup"]
    assert "removed the leftover scratch tree" in doc["cleanup"]["out"]
    assert doc["before"] == doc["after"]
    assert doc["after_dirs"] == []


def test_next_run_removes_leftovers(tmp_path: Path) -> None:
    """A leftover of a dead run (directory only; its mounts died with its namespace) goes on the next run."""
    dead = tmp_path / "kubensctl-bench-999999999"
    (dead / "shared" / "held" / "0").mkdir(parents=True)
    (dead / "owner").write_text("999999999 1\n")
    doc = scenario(tmp_path, SMALL)
    assert doc["rc"] == 0, doc["err"]
    assert "removed the leftover scratch tree" in doc["err"]
    assert doc["after_dirs"] == []


WATCHERS_DRIVER = r"""
import json, subprocess, sys
w = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
assert w.stdout.readline() == "ready\n"
with open("/proc/self/mountinfo") as f:
    before = f.read()
r = subprocess.run([sys.executable, "-m", "kubensctl", "watchers", "--json", "--measure", "--host-pid", str(w.pid),
                    "--mounts", "200", "--cycles", "100", "--scratch-base", sys.argv[2]], capture_output=True, text=True)
with open("/proc/self/mountinfo") as f:
    after = f.read()
w.kill()
print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr, "pid": w.pid, "same": before == after}))
"""


def test_watchers_measure(tmp_path: Path) -> None:
    r = run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", WATCHERS_DRIVER, WATCHER, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        timeout=300,
    )
    doc = json.loads(r.stdout)
    assert doc["rc"] == 0, doc["err"]
    assert doc["same"] and os.listdir(tmp_path) == []
    out = json.loads(doc["out"])
    mine = [w for w in out["watchers"] if w["pid"] == doc["pid"]]
    assert mine and mine[0]["encapsulation_hides_container_mounts"] == "yes"
    assert mine[0]["cpu_seconds"] > 0
    assert out["churn"] == {"mounts": 200, "cycles": 100}
