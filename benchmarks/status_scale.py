#!/usr/bin/env python3
"""`kubensctl status` and `kubensctl mounts` on a big node: 10,000 hidden mounts, 2,000 processes.

The fixture, built here and always removed (also on errors and Ctrl-C):

  * a shared scratch tree (as `/` is on a systemd node) and a namespace pinned in it (kubensctl.namespace);
  * --hidden mounts (default 10,000) made inside the pinned namespace, under pod-like paths
    (a quarter tmpfs, the rest bind mounts): invisible to the host, so `mounts` lists every one;
  * --host-mounts (default 1,000) made in the host namespace: they propagate into the pinned one,
    so both tables carry them and they are not hidden;
  * --procs (default 2,000) copies of sleep: in the pinned namespace kubelet-bench, crio-bench (the
    names status is told to look for) and conmon; in the host namespace "other" (so the verdict is
    `encapsulated`).

This process joins the pin for a moment (setns) to mount and spawn there, then goes back.
PID 1's namespace is unreadable on development machines, so `--host-pid` is this process.

Timed, interleaved round by round: status and mounts as in-process calls (status.evaluate /
status.inventory plus the JSON the CLI prints) and as the CLI in a subprocess (`python -m kubensctl
... --json`); baselines from the same run: `findmnt -J` and `cat /proc/self/mountinfo` over the pinned
table (through nsenter), and `ps -e -o pid=,comm=` over the process table. Target: <= 100 ms wall each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

TARGET_MS = 100.0
# The Kubernetes process names status looks for (--process): not the default kubelet/crio, so that other
# people's fakes or a real kubelet on the machine cannot change the verdict mid-run.
NAMES = ("kubelet-bench", "crio-bench")
PODS_PER_MOUNT_DIR = 5  # mounts per pod directory


def _in_namespace(pin: str, action: Callable[[], None]) -> None:
    """Run ``action`` with this (single-threaded) process inside the namespace at ``pin``, then come back."""
    from kubensctl import syscalls

    cwd = os.getcwd()
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(target, syscalls.CLONE_NEWNS, pin)
        try:
            action()
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNS, "/proc/self/ns/mnt")
            os.chdir(cwd)
    finally:
        os.close(home)
        os.close(target)


def _mount_many(scratch: C.Scratch, where: str, count: int, source: str) -> None:
    """``count`` mounts under scratch/WHERE: every fourth a tmpfs, the others bind mounts of ``source``."""
    from kubensctl import syscalls

    for i in range(count):
        pod, vol = divmod(i, PODS_PER_MOUNT_DIR)
        target = scratch.path(where, f"pod-{pod:05d}", "volumes", f"vol-{vol}")
        if i % 4 == 0:
            syscalls.mount("tmpfs", target, "tmpfs", 0, "size=64k")
        else:
            syscalls.mount(source, target, None, syscalls.MS_BIND)


def _make_dirs(scratch: C.Scratch, where: str, count: int) -> None:
    for i in range(count):
        pod, vol = divmod(i, PODS_PER_MOUNT_DIR)
        os.makedirs(scratch.path(where, f"pod-{pod:05d}", "volumes", f"vol-{vol}"), exist_ok=True)


def _spawn(scratch: C.Scratch, names: List[Tuple[str, int]]) -> None:
    """Start copies of sleep, ``count`` of each name; they are killed by ``scratch.cleanup()``."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name, count in names:
            exe = scratch.fake(name)
            for _ in range(count):
                pid = os.posix_spawn(
                    exe,
                    [exe, "3600"],
                    {"PATH": "/usr/bin:/bin"},
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, devnull, 0),
                        (os.POSIX_SPAWN_DUP2, devnull, 1),
                        (os.POSIX_SPAWN_DUP2, devnull, 2),
                    ],
                )
                scratch.track(pid)
    finally:
        os.close(devnull)


def build(scratch: C.Scratch, hidden: int, host_mounts: int, nprocs: int) -> Dict[str, float]:
    """The fixture; returns how long each part took (seconds)."""
    from kubensctl import namespace

    took: Dict[str, float] = {}
    t = time.perf_counter()
    namespace.start(namespace.Paths(scratch.runtime_dir))
    source = scratch.path("volume-source")
    os.makedirs(source)
    _make_dirs(scratch, "var/lib/kubelet/pods", hidden)
    _make_dirs(scratch, "host", host_mounts)
    took["dirs"] = time.perf_counter() - t

    t = time.perf_counter()
    pinned_procs = nprocs // 2
    kube = pinned_procs * 2 // 5
    pinned_names = [(NAMES[0], kube), (NAMES[1], kube), ("conmon", pinned_procs - 2 * kube)]

    def inside() -> None:
        _mount_many(scratch, "var/lib/kubelet/pods", hidden, source)
        _spawn(scratch, pinned_names)

    _in_namespace(scratch.pin, inside)
    took["pinned mounts and processes"] = time.perf_counter() - t
    t = time.perf_counter()
    _mount_many(scratch, "host", host_mounts, source)
    _spawn(scratch, [("other", nprocs - pinned_procs)])
    took["host mounts and processes"] = time.perf_counter() - t
    return took


def _wait_named(scratch: C.Scratch) -> None:
    """posix_spawn returns once exec is under way; wait until every child shows its new name."""
    deadline = time.time() + 30
    pending = list(scratch.pids)
    while pending and time.time() < deadline:
        still = []
        for pid in pending:
            try:
                with open(f"/proc/{pid}/comm", "rb") as f:
                    if f.read().strip() in (b"python3", b"python"):
                        still.append(pid)
            except OSError:
                pass
        pending = still
        if pending:
            time.sleep(0.05)


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=10_000, help="mounts made in the pinned namespace")
    ap.add_argument("--host-mounts", type=int, default=1_000, help="mounts made in the host namespace")
    ap.add_argument("--procs", type=int, default=2_000, help="fake processes, half pinned, half host")
    ap.add_argument("--runs", type=int, default=15, help="timed runs per case (default 15)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--summary", help="write a JSON summary here (for run.py)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/")
    args = ap.parse_args(argv)
    C.require_root("status_scale")
    for tool in ("nsenter", "findmnt", "ps"):
        if shutil.which(tool) is None:
            print(f"status_scale: skipped: {tool} not found (util-linux, procps)", file=sys.stderr)
            return C.EXIT_SKIPPED

    from kubensctl import namespace, procs, status

    me = os.getpid()
    with C.cleanup_on_signals():
        scratch = C.Scratch("kubensctl-bench-scale-")
        try:
            print(
                f"building: {args.hidden} hidden mounts, {args.host_mounts} host mounts, {args.procs} processes ...",
                flush=True,
            )
            took = build(scratch, args.hidden, args.host_mounts, args.procs)
            _wait_named(scratch)
            for what, secs in took.items():
                print(f"  {what}: {secs:.2f} s")
            paths = namespace.Paths(scratch.runtime_dir)

            # Check the fixture before timing anything: the verdict, and every hidden mount found.
            report = status.evaluate(paths, NAMES, me)
            inv = status.inventory(paths, me)
            fixture = {
                "verdict": report.verdict,
                "kubernetes_processes": len(report.processes),
                "pinned_mounts": inv.pinned_total,
                "host_mounts": inv.host_total,
                "hidden_mounts": len(inv.hidden),
                "processes_on_machine": sum(1 for _ in procs.pids()),
            }
            print(f"  fixture: {fixture}", flush=True)
            if report.verdict != status.ENCAPSULATED or len(inv.hidden) < args.hidden:
                raise RuntimeError(f"fixture is not what it should be: {fixture}, {report.problems}")

            env = dict(os.environ, PYTHONPATH=C.SRC)
            env.pop("KUBENSMNT", None)
            common = ["--runtime-dir", scratch.runtime_dir, "--host-pid", str(me), "--json"]
            wanted = [a for n in NAMES for a in ("--process", n)]
            python = C.system_python()
            cli = [python, "-m", "kubensctl"]
            nsenter = shutil.which("nsenter") or "nsenter"
            findmnt = shutil.which("findmnt") or "findmnt"
            ps = shutil.which("ps") or "ps"
            cat = shutil.which("cat") or "cat"

            def status_inproc() -> float:
                t0 = time.perf_counter()
                r = status.evaluate(paths, NAMES, me)
                json.dumps(r.as_dict(), indent=2)
                return time.perf_counter() - t0

            def mounts_inproc() -> float:
                t0 = time.perf_counter()
                i = status.inventory(paths, me)
                json.dumps(i.as_dict(False), indent=2)
                return time.perf_counter() - t0

            def spawn(a: List[str]) -> Callable[[], float]:
                return lambda: C.spawn_wait(a, env)

            cases: Dict[str, Callable[[], float]] = {
                "status (in-process)": status_inproc,
                "mounts (in-process)": mounts_inproc,
                "status --json (CLI)": spawn([*cli, "status", *common, *wanted]),
                "mounts --json (CLI)": spawn([*cli, "mounts", *common]),
                FINDMNT: spawn([nsenter, f"--mount={scratch.pin}", findmnt, "-J"]),
                CAT: spawn([nsenter, f"--mount={scratch.pin}", cat, "/proc/self/mountinfo"]),
                "baseline: ps -e -o pid=,comm=": spawn([ps, "-e", "-o", "pid=,comm="]),
                "ref: python -c pass": spawn([python, "-c", "pass"]),
                "ref: python -c 'import kubensctl.status'": spawn([python, "-c", "import kubensctl.status"]),
                "ref: kubensctl --version (CLI start-up)": spawn([*cli, "--version"]),
            }
            print(f"timing {len(cases)} cases x {args.runs} runs (+{args.warmup} warm-up), interleaved ...", flush=True)
            with C.Quiet():
                timings = C.interleaved(cases, args.runs, args.warmup)
        finally:
            scratch.cleanup()

    report_results(timings, fixture, took, args)
    return 0


FINDMNT = "baseline: findmnt -J (pinned table)"
CAT = "baseline: cat mountinfo (pinned table)"
TARGETED = ("status (in-process)", "mounts (in-process)", "status --json (CLI)", "mounts --json (CLI)")


def report_results(
    timings: Dict[str, C.Timing],
    fixture: Dict[str, object],
    took: Dict[str, float],
    args: argparse.Namespace,
) -> None:
    when, mach = C.now_utc(), C.machine()
    findmnt = timings[FINDMNT].median
    cat = timings[CAT].median
    lines = [
        "# status and mounts at scale",
        "",
        f"Run {when} on {C.machine_line(mach)}.",
        f"Fixture: {fixture['pinned_mounts']} mounts in the pinned namespace ({fixture['hidden_mounts']} hidden "
        f"from the host), {fixture['host_mounts']} in the host's; {fixture['processes_on_machine']} processes on "
        f"the machine, {fixture['kubernetes_processes']} of them named kubelet-bench/crio-bench (in the pin); "
        f"verdict `{fixture['verdict']}`.",
        f"Built in {sum(took.values()):.1f} s. {args.runs} timed runs per case after {args.warmup} warm-up rounds, "
        "interleaved in shuffled order. Ratios: median / the baseline's median in the same run: `findmnt -J`",
        "over the pinned table, and `cat` of the pinned table (the kernel printing 11,000 lines: the floor).",
        "",
        "| case | median ms | p90 ms | min ms | vs findmnt -J | vs cat mountinfo | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    summary_cases = {}
    for name, t in timings.items():
        ratio = t.median / findmnt
        ratio_cat = t.median / cat
        target: Optional[float] = TARGET_MS if name in TARGETED else None
        verdict = f"<= {TARGET_MS:g} ms: {'met' if t.median * 1000 <= TARGET_MS else 'MISSED'}" if target else ""
        lines.append(
            f"| {name} | {C.ms(t.median)} | {C.ms(t.p90)} | {C.ms(t.minimum)} | {ratio:.3f} | {ratio_cat:.2f} "
            f"| {verdict} |"
        )
        rows.append(
            {
                "date": when,
                "machine": C.machine_line(mach),
                "case": name,
                "median_ms": C.ms(t.median),
                "p90_ms": C.ms(t.p90),
                "min_ms": C.ms(t.minimum),
                "ratio_vs_findmnt_json": f"{ratio:.4f}",
                "ratio_vs_cat_mountinfo": f"{ratio_cat:.3f}",
                "pinned_mounts": str(fixture["pinned_mounts"]),
                "hidden_mounts": str(fixture["hidden_mounts"]),
                "processes": str(fixture["processes_on_machine"]),
                "runs": str(len(t.samples)),
            }
        )
        summary_cases[name] = {
            "median_ms": round(t.median * 1000, 3),
            "p90_ms": round(t.p90 * 1000, 3),
            "ratio": round(ratio, 4),
            "ratio_vs_cat": round(ratio_cat, 3),
            "target_ms": target,
        }
    lines += [
        "",
        "In-process: `status.evaluate()` / `status.inventory()` plus `json.dumps(..., indent=2)` of what the",
        "CLI prints. CLI: `python -m kubensctl status|mounts --json --host-pid PID` in a subprocess (interpreter",
        "start and imports included). `--host-pid` is the benchmark's own process (PID 1's namespace is",
        "unreadable on development machines).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        for p in C.write_results("status_scale", text, rows):
            print(f"wrote {os.path.relpath(p, C.REPO)}")
    misses = [n for n, c in summary_cases.items() if c["target_ms"] is not None and c["median_ms"] > TARGET_MS]
    C.write_summary(
        args.summary,
        {
            "benchmark": "status_scale",
            "date": when,
            "machine": C.machine_line(mach),
            "baseline": FINDMNT,
            "fixture": fixture,
            "cases": summary_cases,
            "missed": misses,
        },
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
