#!/usr/bin/env python3
"""PID 1's CPU against the number of container mounts, shared vs encapsulated, on a real systemd node.

For each count N of held mounts (default 0, 250, 500, 1000, 2000, 4000) it runs ``kubensctl bench
--mounts N --cycles C --json`` inside the booted systemd test node: the same churn once in PID 1's
namespace (shared, the baseline) and once in a namespace pinned like kubens.service (encapsulated), in
the same run, back to back. systemd re-reads the whole mount table on every mount event, so the shared
leg grows with N; the encapsulated leg should stay at zero.

Writes docs/benchmarks/pid1_cpu.md (latest run), appends to docs/benchmarks/pid1_cpu.csv (history), and
draws docs/benchmarks/pid1_cpu.png with matplotlib (the ``plots`` extra) with the date and machine in
the title. Exit 77 (skipped) when no systemd node can be reached.

The node: ``--node-pid PID`` names the PID (as the host sees it) of a booted node's systemd, entered with
``nsenter -t PID -m -p -u -i``, with this repository's src at /opt/kubensctl/src inside (``--bind-ro``).
Without it, tools/testnode.py boots one (and removes it afterwards).

Usage: python3 benchmarks/pid1_cpu.py [--node-pid PID] [--counts 0,250,...] [--cycles 300]
                                      [--repeat 1] [--summary FILE] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as C  # noqa: E402

NODE_SRC = "/opt/kubensctl/src"
DEFAULT_COUNTS = (0, 250, 500, 1000, 2000, 4000)
NAME = "pid1_cpu"


class Node(Protocol):
    def run(
        self, cmd: Sequence[str], check: bool = True, input: Optional[str] = None
    ) -> subprocess.CompletedProcess[str]: ...


class NsenterNode:
    """A booted node reached with nsenter (its systemd's PID as the host sees it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def run(
        self, cmd: Sequence[str], check: bool = True, input: Optional[str] = None
    ) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", *cmd]
        return subprocess.run(argv, check=check, input=input, text=True, capture_output=True)


@contextlib.contextmanager
def acquire(node_pid: Optional[int]) -> Iterator[Node]:
    if node_pid is not None:
        yield NsenterNode(node_pid)
        return
    sys.path.insert(0, os.path.join(C.REPO, "tools"))
    try:
        import testnode
    except ImportError:
        print(f"{NAME}: skipped: no systemd node (tools/testnode.py missing; pass --node-pid PID)", file=sys.stderr)
        raise SystemExit(C.EXIT_SKIPPED) from None
    problem = testnode.host_tools_ready()
    if problem:
        print(f"{NAME}: skipped: cannot boot a systemd node here: {problem}", file=sys.stderr)
        raise SystemExit(C.EXIT_SKIPPED)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with testnode.Node(progress=progress) as node:
        yield node


def bench(node: Node, mounts: int, cycles: int) -> Dict[str, Any]:
    r = node.run(
        ["env", f"PYTHONPATH={NODE_SRC}", "python3", "-m", "kubensctl", "bench", "--mounts", str(mounts),
         "--cycles", str(cycles), "--json", "--no-save", "--quiet"],
        check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"{NAME}: kubensctl bench --mounts {mounts} failed: {r.stderr.strip()}")
    doc: Dict[str, Any] = json.loads(r.stdout)
    return doc


def node_facts(node: Node) -> Dict[str, str]:
    version = node.run(["systemctl", "--version"], check=False).stdout.splitlines()
    distro = node.run(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"], check=False).stdout.strip()
    return {"systemd": version[0] if version else "?", "node_distro": distro or "?"}


def plot(rows: List[Dict[str, str]], title: str, path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install '.[plots]')"
    xs = sorted({int(r["mounts"]) for r in rows})

    def series(leg: str) -> List[float]:
        out = []
        for x in xs:
            vals = [float(r[f"{leg}_pid1_cpu_s"]) for r in rows if int(r["mounts"]) == x]
            out.append(sum(vals) / len(vals))
        return out

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(xs, series("shared"), "o-", color="#c0392b", label="shared: kubelet/runtime in PID 1's namespace")
    ax.plot(xs, series("encapsulated"), "s-", color="#2471a3", label="encapsulated: pinned namespace (kubens)")
    ax.set_xlabel("container mounts held (tmpfs)")
    ax.set_ylabel("PID 1 (systemd) CPU seconds per leg")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node-pid", type=int, help="PID (host view) of a booted node's systemd")
    ap.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)), help="held-mount counts, comma-separated")
    ap.add_argument("--cycles", type=int, default=300, help="mount/umount cycles per leg (default 300)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per count (default 1)")
    ap.add_argument("--summary", help="write a JSON summary here (for benchmarks/run.py)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/")
    args = ap.parse_args(argv)
    C.require_root(NAME)
    counts = [int(x) for x in args.counts.split(",") if x.strip()]
    date = C.now_utc()
    mach = C.machine()
    rows: List[Dict[str, str]] = []
    t0 = time.monotonic()
    with acquire(args.node_pid) as node:
        facts = node_facts(node)
        print(f"{NAME}: node runs {facts['systemd']} on {facts['node_distro']}", flush=True)
        for rep in range(args.repeat):
            for n in counts:
                doc = bench(node, n, args.cycles)
                s, e = doc["shared"], doc["encapsulated"]
                ratio = doc["ratio"]
                print(
                    f"{NAME}: {n:>5} mounts: PID 1 CPU shared {s['pid1_cpu_seconds']:.2f} s, "
                    f"encapsulated {e['pid1_cpu_seconds']:.2f} s"
                    + (f" ({100 * ratio:.1f}%)" if ratio is not None else ""),
                    flush=True,
                )
                rows.append(
                    {
                        "date": date,
                        "run": str(rep + 1),
                        "mounts": str(n),
                        "cycles": str(args.cycles),
                        "interval_s": str(doc.get("interval_seconds", "")),
                        "shared_pid1_cpu_s": f"{s['pid1_cpu_seconds']:.2f}",
                        "encapsulated_pid1_cpu_s": f"{e['pid1_cpu_seconds']:.2f}",
                        "ratio": "" if ratio is None else f"{ratio:.4f}",
                        "shared_churn_wall_s": f"{s['wall_seconds']:.3f}",
                        "encapsulated_churn_wall_s": f"{e['wall_seconds']:.3f}",
                        "systemd": doc["pid1"]["description"],
                        "machine": C.machine_line(mach),
                    }
                )
    took = time.monotonic() - t0
    title = (
        f"PID 1 CPU under a mount churn ({args.cycles} cycles), shared vs encapsulated\n"
        f"{date} - {facts['systemd'].split(' (')[0]} ({facts['node_distro']}) in systemd-nspawn\n"
        f"{mach['cpu']} x{mach['cpus']}, Linux {mach['kernel']}"
    )
    table = [
        "| held mounts | PID 1 CPU shared (s) | PID 1 CPU encapsulated (s) | encapsulated / shared |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio_txt = f"{100 * float(r['ratio']):.1f}%" if r["ratio"] else "-"
        table.append(f"| {r['mounts']} | {r['shared_pid1_cpu_s']} | {r['encapsulated_pid1_cpu_s']} | {ratio_txt} |")
    md = "\n".join(
        [
            "# PID 1 CPU against container mounts",
            "",
            f"Run {date} on {C.machine_line(mach)}; node: {facts['systemd']} ({facts['node_distro']}) booted with",
            "systemd-nspawn. Each row is one `kubensctl bench --mounts N --cycles "
            f"{args.cycles}`: the shared leg (baseline: the churn in PID 1's namespace) and the encapsulated leg",
            "(the same churn in a namespace pinned like kubens.service), measured back to back in the same run.",
            "",
            *table,
            "",
            "![PID 1 CPU against container mounts](pid1_cpu.png)",
            "",
            f"Benchmark time: {took:.0f} s. Reproduce: `make bench` (or `python3 benchmarks/pid1_cpu.py`).",
            "",
        ]
    )
    print(md)
    if not args.no_write:
        for p in C.write_results(NAME, md, rows):
            print(f"{NAME}: wrote {os.path.relpath(p, C.REPO)}")
        png = os.path.join(C.RESULTS_DIR, f"{NAME}.png")
        note = plot(rows, title, png)
        print(f"{NAME}: {note}" if note else f"{NAME}: wrote {os.path.relpath(png, C.REPO)}")
    biggest = max(rows, key=lambda r: int(r["mounts"]))
    C.write_summary(
        args.summary,
        {
            "mounts": int(biggest["mounts"]),
            "shared_pid1_cpu_s": float(biggest["shared_pid1_cpu_s"]),
            "encapsulated_pid1_cpu_s": float(biggest["encapsulated_pid1_cpu_s"]),
            "ratio": float(biggest["ratio"]) if biggest["ratio"] else None,
            "seconds": round(took, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
