#!/usr/bin/env python3
"""kubensenter latency: how long it takes to start `true` inside the pinned namespace, per entry point.

Cases (each runs `true` found through the same PATH, interleaved round by round in a shuffled order):

  nsenter         nsenter --mount=PIN true                           (the floor: a C program)
  shell-baseline  bash + findmnt x2 + nsenter (the RHCOS shape)      (the baseline; written here)
  pip-script      VENV/bin/kubensenter true, KUBENSMNT=PIN           (pip console script; target <= 2x)
  standalone      ./kubensenter true, KUBENSMNT=PIN                  (enter.py as laid on nodes,
                                                                      #!/usr/bin/python3 -IS; target <= 1x)
  standalone-autodetect  same, no KUBENSMNT, DEFAULT_KUBENSMNT=PIN   (autodetect finds the pin)
  standalone-off  same, no KUBENSMNT, nothing pinned                 (encapsulation off)
  pip-off         pip console script, nothing pinned
  python-floor    /usr/bin/python3 -IS -c pass                       (reference: the interpreter alone)
  python-ctypes   ... -c 'import ctypes'; python-_ctypes: 'import _ctypes'; python-typing: 'import typing'

Ratios are against shell-baseline from the same run. Root only (it pins a real namespace in a shared
scratch tree, always removed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASELINE = "shell-baseline"
TARGETS = {"pip-script": 2.0, "standalone": 1.0}

# Our own script in the RHCOS shape: bash, findmnt twice (is the pin mounted? is it nsfs?), nsenter.
SHELL_BASELINE = """#!/bin/bash
# Benchmark baseline in the shape of RHCOS's kubensenter (written for this benchmark, not copied):
# bash, findmnt twice, then nsenter.
set -eu
pin=${KUBENSMNT:-${DEFAULT_KUBENSMNT:-/run/kubens/mnt}}
# 1. Is anything mounted on the pin?
findmnt --noheadings --mountpoint "$pin" >/dev/null
# 2. Is it a namespace file?
[ "$(findmnt --noheadings --output FSTYPE --mountpoint "$pin")" = nsfs ]
exec nsenter --mount="$pin" "$@"
"""


def make_venv(scratch: C.Scratch, python: str) -> str:
    """A venv with kubensctl installed by `pip install .` from a copy of the repo (keeps the tree clean)."""
    tree = scratch.path("pkg")
    os.makedirs(tree)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(C.REPO, name), tree)
    shutil.copytree(
        C.SRC, os.path.join(tree, "src"), ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    venv = scratch.path("venv")
    subprocess.run([python, "-m", "venv", venv], check=True, capture_output=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Offline and quick when the venv already has setuptools (Python <= 3.11); else the usual isolated build.
    r = subprocess.run([*pip, "--no-build-isolation", "--no-deps", tree], capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run([*pip, tree], check=True, capture_output=True)
    script = os.path.join(venv, "bin", "kubensenter")
    if not os.access(script, os.X_OK):
        raise RuntimeError(f"pip did not install {script}")
    return script


def standalone(scratch: C.Scratch, python: str) -> str:
    """src/kubensctl/enter.py as laid on nodes: one file, `#!/usr/bin/python3 -IS`, mode 755."""
    with open(os.path.join(C.SRC, "kubensctl", "enter.py"), encoding="utf-8") as f:
        body = f.read()
    if body.startswith("#!"):
        body = body.split("\n", 1)[1]
    path = scratch.path("bin", "kubensenter")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"#!{python} -IS\n{body}")
    os.chmod(path, 0o755)
    return path


def check_joins(argv: List[str], env: Dict[str, str], pin: str, expect_pin: bool) -> None:
    """Prove a case really ends up where it should before timing it."""
    want = os.stat(pin).st_ino if expect_pin else os.stat("/proc/self/ns/mnt").st_ino
    probe = [*argv[:-1], "stat", "-L", "-c", "%i", "/proc/self/ns/mnt"]
    out = subprocess.run(probe, env=env, check=True, capture_output=True, text=True).stdout.strip()
    if int(out) != want:
        raise RuntimeError(f"{' '.join(argv)} ran in namespace inode {out}, expected {want}")


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per case (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default 20)")
    ap.add_argument("--summary", help="write a JSON summary here (for run.py)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/")
    args = ap.parse_args(argv)
    C.require_root("kubensenter_latency")
    for tool in ("nsenter", "findmnt", "bash"):
        if shutil.which(tool) is None:
            print(f"kubensenter_latency: skipped: {tool} not found (util-linux, bash)", file=sys.stderr)
            return C.EXIT_SKIPPED

    from kubensctl import namespace

    python = C.system_python()
    with C.cleanup_on_signals():
        scratch = C.Scratch("kubensctl-bench-enter-")
        try:
            namespace.start(namespace.Paths(scratch.runtime_dir))
            pin = scratch.pin
            print(f"pinned {pin}; building the venv (pip install .) ...", flush=True)
            pip_script = make_venv(scratch, python)
            alone = standalone(scratch, python)
            shell = scratch.path("bin", "kubensenter.sh")
            with open(shell, "w", encoding="utf-8") as f:
                f.write(SHELL_BASELINE)
            os.chmod(shell, 0o755)
            nothing = scratch.path("run", "nothing", "mnt")  # never exists: encapsulation off

            base_env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"}
            joined = dict(base_env, KUBENSMNT=pin)
            auto = dict(base_env, DEFAULT_KUBENSMNT=pin)
            off = dict(base_env, DEFAULT_KUBENSMNT=nothing)
            nsenter = shutil.which("nsenter", path=PATH) or "nsenter"
            cases: List[Tuple[str, List[str], Dict[str, str], bool]] = [
                ("nsenter", [nsenter, f"--mount={pin}", "true"], base_env, True),
                (BASELINE, [shell, "true"], joined, True),
                ("pip-script", [pip_script, "true"], joined, True),
                ("standalone", [alone, "true"], joined, True),
                ("standalone-autodetect", [alone, "true"], auto, True),
                ("standalone-off", [alone, "true"], off, False),
                ("pip-off", [pip_script, "true"], off, False),
            ]
            for _, case_argv, env, expect_pin in cases:
                check_joins(case_argv, env, pin, expect_pin)
            refs = [
                ("python-floor", "pass"),
                ("python-ctypes", "import ctypes"),
                ("python-_ctypes", "import _ctypes"),
                ("python-typing", "import typing"),
            ]
            for name, code in refs:
                cases.append((name, [python, "-IS", "-c", code], base_env, False))

            def case(a: List[str], e: Dict[str, str]) -> Callable[[], float]:
                return lambda: C.spawn_wait(a, e)

            funcs = {name: case(a, e) for name, a, e, _ in cases}
            print(f"timing {len(funcs)} cases x {args.runs} runs (+{args.warmup} warm-up), interleaved ...", flush=True)
            with C.Quiet():
                timings = C.interleaved(funcs, args.runs, args.warmup)
        finally:
            scratch.cleanup()

    report(timings, cases, python, args)
    return 0


def report(
    timings: Dict[str, C.Timing],
    cases: List[Tuple[str, List[str], Dict[str, str], bool]],
    python: str,
    args: argparse.Namespace,
) -> None:
    base = timings[BASELINE].median
    when, mach = C.now_utc(), C.machine()
    pyver = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    ).stdout.strip()
    rows = []
    lines = [
        "# kubensenter latency",
        "",
        f"Run {when} on {C.machine_line(mach)}; nodes' interpreter {python} (Python {pyver}).",
        f"{args.runs} timed runs per case after {args.warmup} warm-up rounds, interleaved in shuffled order.",
        "Every case runs `true` (PATH lookup) inside the pinned namespace unless marked *off* or *ref*.",
        "Ratio: median / the shell baseline's median in this same run.",
        "",
        "| case | median ms | p90 ms | min ms | ratio vs shell baseline | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    summary_cases = {}
    for name, _, _, _ in cases:
        t = timings[name]
        ratio = t.median / base
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:g}x: {'met' if ratio <= target else 'MISSED'}"
        lines.append(f"| {name} | {C.ms(t.median)} | {C.ms(t.p90)} | {C.ms(t.minimum)} | {ratio:.2f} | {verdict} |")
        rows.append(
            {
                "date": when,
                "machine": C.machine_line(mach),
                "case": name,
                "median_ms": C.ms(t.median),
                "p90_ms": C.ms(t.p90),
                "min_ms": C.ms(t.minimum),
                "ratio_vs_shell_baseline": f"{ratio:.3f}",
                "runs": str(len(t.samples)),
            }
        )
        summary_cases[name] = {
            "median_ms": round(t.median * 1000, 3),
            "p90_ms": round(t.p90 * 1000, 3),
            "ratio": round(ratio, 3),
            "target": target,
        }
    lines += [
        "",
        "Cases: `nsenter` = `nsenter --mount=PIN true`; `shell-baseline` = bash + `findmnt` x2 + `nsenter`",
        "(the RHCOS shape, our own script); `pip-script` = the console script of `pip install .` in a venv,",
        "`KUBENSMNT=PIN`; `standalone` = `src/kubensctl/enter.py` with `#!/usr/bin/python3 -IS`, executed",
        "directly, `KUBENSMNT=PIN`; `-autodetect` = no `KUBENSMNT`, `DEFAULT_KUBENSMNT=PIN`; `-off` = nothing",
        "pinned (runs in the current namespace); `python-*` = the interpreter alone, and with one import.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        for p in C.write_results("kubensenter_latency", text, rows):
            print(f"wrote {os.path.relpath(p, C.REPO)}")
    misses = [n for n, c in summary_cases.items() if c["target"] is not None and c["ratio"] > c["target"]]
    C.write_summary(
        args.summary,
        {
            "benchmark": "kubensenter_latency",
            "date": when,
            "machine": C.machine_line(mach),
            "baseline": BASELINE,
            "cases": summary_cases,
            "missed": misses,
        },
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
