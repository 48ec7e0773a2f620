"""Unprivileged tests for measure.py and metrics.py: /proc/PID/stat parsing, bounds, leftovers, watchers,
and the Prometheus exposition format checked with the official parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubensctl import measure, metrics, procs
from kubensctl.errors import UsageError
from nstest import env_with_src

# ---- /proc/PID/stat ------------------------------------------------------------------------------

TAIL = "S 1 100 100 0 -1 4194560 39291 2118945 0 379 103 390 4362 1645 20 0 1 0 24 46096384 3642"


def stat_line(comm: str, pid: int = 42) -> str:
    return f"{pid} ({comm}) {TAIL} 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 1 0 0 0 0 0\n"


@pytest.mark.parametrize(
    "comm",
    ["systemd", "process_api", "a b c", "x) S 9 9 (y", "((", "))", ") (", "tmux: server", ""],
)
def test_parse_stat_comm_with_spaces_and_parens(comm: str) -> None:
    st = measure.parse_stat(stat_line(comm))
    assert st.pid == 42 and st.comm == comm and st.state == "S" and st.ppid == 1
    assert (st.utime, st.stime, st.starttime) == (103, 390, 24)
    assert st.cpu_ticks == 493
    assert st.cpu_seconds == pytest.approx(493 / os.sysconf("SC_CLK_TCK"))


@pytest.mark.parametrize("bad", ["", "42", "42 (x", "42 x) S", "42 (x) S 1 2", "abc (x) " + TAIL])
def test_parse_stat_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        measure.parse_stat(bad)


def test_read_stat_of_this_process() -> None:
    st = measure.read_stat(os.getpid())
    assert st.pid == os.getpid() and st.comm == procs.comm(os.getpid())
    assert st.ppid == os.getppid()
    t0 = st.cpu_ticks
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    assert measure.read_stat(os.getpid()).cpu_ticks > t0


def test_alive_checks_start_time() -> None:
    me = measure.read_stat(os.getpid())
    assert measure.alive(me.pid, me.starttime)
    assert not measure.alive(me.pid, me.starttime + 1)
    p = subprocess.Popen(["true"])
    p.wait()
    assert not measure.alive(p.pid, 0)


def test_cpu_seconds_missing_process() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(Exception, match=f"no process with PID {p.pid}"):
        measure.cpu_seconds(p.pid)


@pytest.mark.parametrize(
    "out,want",
    [
        ("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT ...\n", "252 (252.39-1~deb12u2)"),
        ("systemd 255 (255.4-1ubuntu8)\n", "255 (255.4-1ubuntu8)"),
        ("", None),
        ("busybox v1.36\n", None),
    ],
)
def test_parse_systemd_version(out: str, want: object) -> None:
    assert measure.parse_systemd_version(out) == want


def test_identify_non_systemd() -> None:
    me = measure.identify(os.getpid())
    assert not me.systemd and me.describe().endswith("not systemd")
    assert me.as_dict()["name"] == procs.comm(os.getpid())


# ---- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mounts,cycles,interval,msg",
    [
        (-1, 10, 0.0, "--mounts must be between 0 and 10000, not -1"),
        (10001, 10, 0.0, "--mounts must be between 0 and 10000, not 10001"),
        (10, -5, 0.0, "--cycles must be between 0 and 100000, not -5"),
        (10, 100001, 0.0, "--cycles must be between 0 and 100000"),
        (0, 0, 0.0, "measures nothing"),
        (10, 10, -1.0, "--interval must be between 0 and 10"),
        (10, 10, 11.0, "--interval must be between 0 and 10"),
    ],
)
def test_bounds(mounts: int, cycles: int, interval: float, msg: str) -> None:
    with pytest.raises(UsageError) as e:
        measure.check_bounds(mounts, cycles, interval)
    assert msg in str(e.value) and e.value.exit_code == 2 and e.value.hint


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubensctl", *args], text=True, capture_output=True, env=env_with_src(), timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--mounts", "20000"],
        ["bench", "--cycles", "-1"],
        ["bench", "--mounts", "0", "--cycles", "0"],
        ["bench", "--mounts", "many"],
        ["bench", "--interval", "99"],
        ["watchers", "--measure", "--mounts", "99999"],
    ],
)
def test_bench_usage_errors_are_one_line_exit_2(args: List[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("cmd", ["bench", "watchers", "metrics"])
def test_help(cmd: str) -> None:
    r = run_cli(cmd, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


# ---- leftovers (no mounts involved, so no root needed) -------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_cleanup_removes_only_dead_owners(tmp_path: Path) -> None:
    dead = dead_pid()
    me = measure.read_stat(os.getpid())
    (tmp_path / f"kubensctl-bench-{dead}" / "shared" / "held" / "0").mkdir(parents=True)
    (tmp_path / f"kubensctl-bench-{dead}" / "owner").write_text(f"{dead} 12345\n")
    (tmp_path / f"kubensctl-bench-{me.pid}").mkdir()
    (tmp_path / f"kubensctl-bench-{me.pid}" / "owner").write_text(f"{me.pid} {me.starttime}\n")
    (tmp_path / "kubensctl-bench-notapid").mkdir()
    (tmp_path / "unrelated").mkdir()
    found = {left.pid: left.owner_alive for left in measure.find_leftovers(str(tmp_path))}
    assert found == {dead: False, me.pid: True}
    said: List[str] = []
    removed = measure.cleanup_leftovers(str(tmp_path), said.append)
    assert [r.pid for r in removed] == [dead] and len(said) == 1 and str(dead) in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"kubensctl-bench-{me.pid}", "kubensctl-bench-notapid", "unrelated"]
    )


def test_cleanup_cli_reports_nothing(tmp_path: Path) -> None:
    r = run_cli("bench", "--cleanup", "--scratch-base", str(tmp_path))
    assert r.returncode == 0 and "no leftovers" in r.stdout


# ---- watchers ------------------------------------------------------------------------------------


def test_watchers_finds_a_process_holding_mountinfo() -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open('/proc/self/mountinfo'); g=open('/proc/self/mounts'); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        mine = procs.mntns("self")
        ws, _ = measure.find_watchers(mine, None)
        by_pid = {w.pid: w for w in ws}
        assert holder.pid in by_pid
        w = by_pid[holder.pid]
        assert w.files == [f"/proc/{holder.pid}/mountinfo", f"/proc/{holder.pid}/mounts"]
        assert w.mntns == mine and w.watched_ns == mine and w.hidden == "yes"
        ws, _ = measure.find_watchers(None, mine)
        assert {w.pid: w.hidden for w in ws}[holder.pid] == "no"
        r = run_cli("watchers", "--json", "--host-pid", str(os.getpid()))
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        rows = [x for x in doc["watchers"] if x["pid"] == holder.pid]
        assert rows and rows[0]["encapsulation_hides_container_mounts"] == "yes"
        text = run_cli("watchers", "--host-pid", str(os.getpid())).stdout
        assert str(holder.pid) in text and "watch the mount table" in text
    finally:
        holder.kill()
        holder.wait()


# ---- Prometheus exposition -----------------------------------------------------------------------


def parse(text: str) -> dict:  # type: ignore[type-arg]
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_escaping_round_trips_through_the_official_parser() -> None:
    nasty = 'a "quoted" \\ back\\slash\nnew line'
    fam = metrics.Family("kubensctl_test_mounts", 'help with \\ and\nnewline and "quotes"')
    fam.add(3, {"fstype": nasty}).add(1.5, {"fstype": "overlay"})
    text = metrics.render([fam])
    assert text.splitlines()[0] == '# HELP kubensctl_test_mounts help with \\\\ and\\nnewline and "quotes"'
    assert text.splitlines()[1] == "# TYPE kubensctl_test_mounts gauge"
    assert 'fstype="a \\"quoted\\" \\\\ back\\\\slash\\nnew line"' in text
    assert text.endswith("\n")
    fams = parse(text)
    f = fams["kubensctl_test_mounts"]
    assert f.type == "gauge" and f.documentation == 'help with \\ and\nnewline and "quotes"'
    assert [(s.labels["fstype"], s.value) for s in f.samples] == [(nasty, 3.0), ("overlay", 1.5)]


@pytest.mark.parametrize(
    "value,text",
    [
        (0, "0"),
        (7, "7"),
        (True, "1"),
        (2.0, "2"),
        (0.25, "0.25"),
        (1e-05, "1e-05"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
        (1795639998.069, "1795639998.069"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert metrics.format_value(value) == text
    fam = metrics.Family("kubensctl_v", "v").add(value)
    parsed = parse(metrics.render([fam]))["kubensctl_v"].samples[0].value
    assert parsed == pytest.approx(float(value), nan_ok=True)


def test_render_rejects_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError):
        metrics.render([metrics.Family("kubensctl_a", "a").add(1), metrics.Family("kubensctl_a", "a").add(2)])
    with pytest.raises(ValueError):
        metrics.Family("1bad", "x")
    with pytest.raises(ValueError):
        metrics.Family("kubensctl_b", "b").add(1, {"__reserved": "x"})
    with pytest.raises(ValueError):
        metrics.Family("kubensctl_b", "b").add(1, {"bad-label": "x"})
    # Families without samples are left out entirely.
    assert metrics.render([metrics.Family("kubensctl_empty", "e")]) == ""


def test_collect_without_root_still_exposes(tmp_path: Path) -> None:
    bench = {
        "timestamp": 1700000000.5,
        "mounts": 1000,
        "cycles": 300,
        "shared": {"pid1_cpu_seconds": 0.45, "wall_seconds": 3.1},
        "encapsulated": {"pid1_cpu_seconds": 0.0, "wall_seconds": 3.2},
        "ratio": 0.0,
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    text = metrics.exposition(
        metrics.namespace.Paths(str(tmp_path / "kubens")), os.getpid(), ["kmtest-none"], str(tmp_path / "bench.json")
    )
    fams = parse(text)
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    assert all(n.startswith("kubensctl_") for n in names)
    cpu = {s.labels["leg"]: s.value for s in fams["kubensctl_bench_pid1_cpu_seconds"].samples}
    assert cpu == {"shared": 0.45, "encapsulated": 0.0}
    assert fams["kubensctl_bench_pid1_cpu_ratio"].samples[0].value == 0.0
    assert fams["kubensctl_bench_held_mounts"].samples[0].value == 1000
    assert fams["kubensctl_bench_last_run_timestamp_seconds"].samples[0].value == 1700000000.5
    verdicts = {s.labels["verdict"]: s.value for s in fams["kubensctl_verdict"].samples}
    assert verdicts["not-encapsulated"] == 1 and sum(verdicts.values()) == 1
    assert fams["kubensctl_encapsulated"].samples[0].value == 0
    ok = {s.labels["collector"]: s.value for s in fams["kubensctl_collector_success"].samples}
    assert ok["status"] == 1 and ok["bench"] == 1 and ok["host_mounts"] == 1
    for line in text.splitlines():  # no timestamps: the textfile collector refuses them
        if not line.startswith("#"):
            assert len(line.rsplit("} ", 1)[-1].split()) == 1 or len(line.split()) == 2


def test_textfile_is_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "kubensctl.prom"
    r = run_cli("metrics", "--host-pid", str(os.getpid()), "--textfile", str(out), "--bench-file", "/nonexistent")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "kubensctl_info" in parse(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["kubensctl.prom"]  # no temp file left behind
    r = run_cli("metrics", "--textfile", str(tmp_path / "missing" / "k.prom"))
    assert r.returncode == 1 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("metrics", "--textfile", str(tmp_path / "k.txt"))
    assert r.returncode == 2 and ".prom" in r.stderr


def test_metrics_units() -> None:
    units = metrics.metrics_units()
    assert set(units) == {"kubensctl-metrics.service", "kubensctl-metrics.timer"}
    svc = units["kubensctl-metrics.service"]
    assert "Type=oneshot\n" in svc
    assert (
        "ExecStart=/usr/local/bin/kubensctl metrics --textfile "
        "/var/lib/node_exporter/textfile_collector/kubensctl.prom\n" in svc
    )
    timer = units["kubensctl-metrics.timer"]
    assert "Unit=kubensctl-metrics.service\n" in timer and "WantedBy=timers.target\n" in timer
    assert "OnUnitActiveSec=1min\n" in timer
