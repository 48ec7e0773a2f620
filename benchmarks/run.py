#!/usr/bin/env python3
"""`make bench`: run every benchmark, each in its own process, then print one summary.

Runs benchmarks/kubensenter_latency.py and benchmarks/status_scale.py (and pid1_cpu.py when that file
exists). Each writes its full results to docs/benchmarks/. A benchmark that cannot run here (not root,
a tool missing) is reported as skipped; one that fails is reported as failed and makes the exit status 1.
A missed target is reported, not a failure: benchmarks measure, tests judge.

Usage: python3 benchmarks/run.py [--quick] [--only NAME]... [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, file, extra arguments for --quick). Ours understand --summary FILE and --no-write.
OURS = [
    ("kubensenter_latency", "kubensenter_latency.py", ["--runs", "40", "--warmup", "5"]),
    ("status_scale", "status_scale.py", ["--runs", "5", "--warmup", "1"]),
]
# Maintained separately: run when the file is there (same --summary/--no-write flags), fine when absent.
OPTIONAL = [("pid1_cpu", "pid1_cpu.py", ["--counts", "0,1000", "--cycles", "100"])]


def run_one(name: str, argv: List[str], summary: Optional[str]) -> Dict[str, Any]:
    print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    # On Ctrl-C the child gets the SIGINT too and cleans up after itself (its finally: blocks).
    code = subprocess.run(argv, cwd=C.REPO).returncode
    took = time.monotonic() - t0
    result: Dict[str, Any] = {"name": name, "exit": code, "seconds": round(took, 1)}
    if code == C.EXIT_SKIPPED:
        result["status"] = "skipped"
    elif code != 0:
        result["status"] = "failed"
    else:
        result["status"] = "ok"
        if summary and os.path.exists(summary) and os.path.getsize(summary) > 0:
            with open(summary, encoding="utf-8") as f:
                result["summary"] = json.load(f)
    return result


def print_summary(results: List[Dict[str, Any]]) -> None:
    print("\n=== summary")
    print(f"machine: {C.machine_line(C.machine())}")
    for r in results:
        print(f"\n{r['name']}: {r['status']} ({r['seconds']} s)")
        s = r.get("summary")
        if not isinstance(s, dict):
            continue
        kind = s.get("benchmark")
        if kind not in ("kubensenter_latency", "status_scale"):
            for key, value in s.items():
                print(f"  {key}: {value}")
            continue
        if kind == "kubensenter_latency":
            base = s["cases"][s["baseline"]]["median_ms"]
            print(f"  baseline {s['baseline']}: {base:.2f} ms median")
            for case, c in s["cases"].items():
                target = ""
                if c["target"] is not None:
                    target = f"  target <= {c['target']:g}x: {'met' if c['ratio'] <= c['target'] else 'MISSED'}"
                print(f"  {case:<24} {c['median_ms']:8.2f} ms  p90 {c['p90_ms']:8.2f}  {c['ratio']:5.2f}x{target}")
        else:
            fx = s["fixture"]
            print(
                f"  fixture: {fx['pinned_mounts']} pinned mounts ({fx['hidden_mounts']} hidden), "
                f"{fx['processes_on_machine']} processes, verdict {fx['verdict']}"
            )
            for case, c in s["cases"].items():
                target = ""
                if c["target_ms"] is not None:
                    target = (
                        f"  target <= {c['target_ms']:g} ms: {'met' if c['median_ms'] <= c['target_ms'] else 'MISSED'}"
                    )
                print(
                    f"  {case:<42} {c['median_ms']:9.2f} ms  {c['ratio']:7.4f}x findmnt -J  "
                    f"{c['ratio_vs_cat']:5.2f}x cat{target}"
                )
        if s.get("missed"):
            print(f"  missed targets: {', '.join(s['missed'])}")


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke run; numbers are noisier)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/")
    args = ap.parse_args(argv)

    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kubensctl-bench-run-") as tmp:
        for name, filename, quick in OURS:
            if args.only and name not in args.only:
                continue
            summary = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, os.path.join(HERE, filename), "--summary", summary]
            if args.quick:
                cmd += quick
            if args.no_write:
                cmd.append("--no-write")
            results.append(run_one(name, cmd, summary))
        for name, filename, quick in OPTIONAL:
            if args.only and name not in args.only:
                continue
            path = os.path.join(HERE, filename)
            if not os.path.exists(path):
                results.append({"name": name, "status": "absent", "exit": None, "seconds": 0})
                continue
            summary = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, path, "--summary", summary]
            if args.quick:
                cmd += quick
            if args.no_write:
                cmd.append("--no-write")
            results.append(run_one(name, cmd, summary))
    print_summary(results)
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        sys.exit(130)
