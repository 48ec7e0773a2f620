"""``kubensctl metrics``: Prometheus text exposition (format 0.0.4) for node_exporter's textfile collector.

Every family is a gauge, written once with its ``# HELP`` and ``# TYPE`` lines before its samples; names
carry their unit (``_seconds``) where there is one; label values escape backslash, double quote and
newline; samples carry no timestamps (the textfile collector refuses them). With ``--textfile PATH`` the
text is written atomically (a temp file in the same directory, renamed), so node_exporter never reads
half a file; its temp name does not end in ``.prom``, so the collector ignores it.

A collector that fails (PID 1's namespace unreadable, no pin to inspect) does not stop the others:
``kubensctl_collector_success{collector=...}`` says which ones worked.

``metrics_service_unit()`` and ``metrics_timer_unit()`` give the systemd units that ``kubensctl install
--metrics`` lays to refresh the textfile every minute.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kubensctl import __version__, measure, mountinfo, namespace, procs, status
from kubensctl.errors import KubensError
from kubensctl.fsutil import atomic_write

DEFAULT_TEXTFILE = "/var/lib/node_exporter/textfile_collector/kubensctl.prom"
DEFAULT_KUBENSCTL = "/usr/local/bin/kubensctl"
SERVICE_NAME = "kubensctl-metrics.service"
TIMER_NAME = "kubensctl-metrics.timer"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = Mapping[str, str]


# ---- exposition format ---------------------------------------------------------------------------


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed are escaped (``\\\\``, ``\\n``)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """Label values: backslash, double quote and line feed are escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Go's ParseFloat reads it: integers plainly, ``+Inf``/``-Inf``/``NaN`` spelled so."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Family:
    """One metric family: a name, a help line and its samples (labels, value)."""

    name: str
    help: str
    type: str = "gauge"
    samples: List[Tuple[Dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in ("gauge", "counter", "untyped"):
            raise ValueError(f"unsupported metric type {self.type!r}")

    def add(self, value: float, labels: Optional[Labels] = None) -> Family:
        lab = dict(labels or {})
        for k in lab:
            if not _LABEL_RE.match(k) or k.startswith("__"):
                raise ValueError(f"invalid label name {k!r} in {self.name}")
        self.samples.append((lab, value))
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for labels, value in self.samples:
            if labels:
                body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
                lines.append(f"{self.name}{{{body}}} {format_value(value)}")
            else:
                lines.append(f"{self.name} {format_value(value)}")
        return "\n".join(lines) + "\n"


def render(families: Sequence[Family]) -> str:
    """The exposition text: each family once, families without samples left out."""
    seen = set()
    parts = []
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name} appears twice")
        seen.add(fam.name)
        if fam.samples:
            parts.append(fam.render())
    return "".join(parts)


# ---- collection ----------------------------------------------------------------------------------

WHERE = ("pinned", "host", "other", "unknown")


def collect(
    paths: namespace.Paths,
    host_pid: int = 1,
    names: Sequence[str] = procs.DEFAULT_NAMES,
    bench_file: str = measure.DEFAULT_RESULT_FILE,
) -> List[Family]:
    ok: Dict[str, bool] = {}
    fams: List[Family] = []

    fams.append(
        Family("kubensctl_info", "kubensctl's version (always 1)").add(1, {"version": __version__}),
    )

    # -- status: verdict, pin, processes
    report: Optional[status.Report] = None
    try:
        report = status.evaluate(paths, names, host_pid)
        ok["status"] = True
    except (KubensError, OSError):
        ok["status"] = False
    verdict = Family(
        "kubensctl_verdict",
        "1 for the node's current encapsulation verdict (encapsulated, not-encapsulated, degraded), 0 for the others",
    )
    encapsulated = Family("kubensctl_encapsulated", "1 when Kubernetes runs in the pinned mount namespace, else 0")
    pin_healthy = Family("kubensctl_pin_healthy", "1 when a mount namespace is pinned and its runtime dir is sound")
    problems = Family("kubensctl_problems", "problems kubensctl status reports (each names its fix)")
    leaked = Family("kubensctl_leaked_mounts", "container mounts found in PID 1's namespace while encapsulation is on")
    kprocs = Family(
        "kubensctl_kubernetes_processes",
        "Kubernetes processes (kubelet, container runtime) by the mount namespace they run in",
    )
    if report is not None:
        for v in (status.ENCAPSULATED, status.NOT_ENCAPSULATED, status.DEGRADED):
            verdict.add(1 if report.verdict == v else 0, {"verdict": v})
        encapsulated.add(1 if report.verdict == status.ENCAPSULATED else 0)
        pin_healthy.add(1 if report.pin.healthy else 0)
        problems.add(len(report.problems))
        leaked.add(len(report.leaked))
        where = Counter(report.where(p) for p in report.processes)
        for w in WHERE:
            kprocs.add(where.get(w, 0), {"mount_namespace": w})
    fams += [verdict, encapsulated, pin_healthy, problems, leaked, kprocs]

    # -- mount counts and what encapsulation hides
    mounts = Family("kubensctl_mounts", "mounts in PID 1's mount namespace (host) and in the pinned one (pinned)")
    hidden = Family("kubensctl_hidden_mounts", "mounts visible in the pinned namespace but hidden from PID 1, by type")
    try:
        host_count = len(mountinfo.read(host_pid))
        mounts.add(host_count, {"mount_namespace": "host"})
        ok["host_mounts"] = True
    except OSError:
        ok["host_mounts"] = False
    if namespace.probe_pin(paths.mnt)[0] == namespace.PIN_MNT:
        try:
            inv = status.inventory(paths, host_pid)
            mounts.add(inv.pinned_total, {"mount_namespace": "pinned"})
            for fstype, n in sorted(inv.by_type()):
                hidden.add(n, {"fstype": fstype})
            ok["pinned_mounts"] = True
        except (KubensError, OSError):
            ok["pinned_mounts"] = False
    fams += [mounts, hidden]

    # -- the last bench
    bench = measure.load_result(bench_file)
    bench_fams = _bench_families(bench) if bench is not None else []
    if os.path.exists(bench_file):
        ok["bench"] = bool(bench_fams)
    fams += bench_fams

    success = Family("kubensctl_collector_success", "1 when this part of the metrics could be collected, else 0")
    for name in sorted(ok):
        success.add(1 if ok[name] else 0, {"collector": name})
    fams.append(success)
    return fams


def _num(doc: Mapping[str, Any], *keys: str) -> Optional[float]:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)):
        return None
    return float(cur)


def _bench_families(doc: Mapping[str, Any]) -> List[Family]:
    cpu = Family("kubensctl_bench_pid1_cpu_seconds", "PID 1's CPU time during the last kubensctl bench, by leg")
    wall = Family("kubensctl_bench_churn_wall_seconds", "wall time of the last bench's mount/umount cycles, by leg")
    for leg in ("shared", "encapsulated"):
        c = _num(doc, leg, "pid1_cpu_seconds")
        w = _num(doc, leg, "wall_seconds")
        if c is not None:
            cpu.add(c, {"leg": leg})
        if w is not None:
            wall.add(w, {"leg": leg})
    if not cpu.samples:
        return []
    out = [cpu, wall]
    ratio = _num(doc, "ratio")
    if ratio is not None:
        out.append(
            Family(
                "kubensctl_bench_pid1_cpu_ratio",
                "PID 1's CPU in the last bench's encapsulated leg divided by the shared leg's",
            ).add(ratio)
        )
    for key, name, text in (
        ("mounts", "kubensctl_bench_held_mounts", "tmpfs mounts held during the last bench"),
        ("cycles", "kubensctl_bench_cycles", "mount/umount cycles per leg in the last bench"),
        ("timestamp", "kubensctl_bench_last_run_timestamp_seconds", "when the last bench ran (Unix time)"),
    ):
        v = _num(doc, key)
        if v is not None:
            out.append(Family(name, text).add(v))
    return out


def exposition(
    paths: namespace.Paths,
    host_pid: int = 1,
    names: Sequence[str] = procs.DEFAULT_NAMES,
    bench_file: str = measure.DEFAULT_RESULT_FILE,
) -> str:
    return render(collect(paths, host_pid, names, bench_file))


def write_textfile(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise KubensError(
            f"{directory} does not exist",
            "create it, or point --textfile at node_exporter's --collector.textfile.directory",
        )
    if not path.endswith(".prom"):
        raise KubensError(
            f"{path} does not end in .prom, so node_exporter's textfile collector would ignore it",
            "name the file kubensctl.prom",
            exit_code=2,
        )
    try:
        atomic_write(path, text)
    except OSError as e:
        raise KubensError(f"cannot write {path}: {e.strerror}", "run as root, or choose another --textfile") from None


# ---- systemd units for `kubensctl install --metrics` ---------------------------------------------


def metrics_service_unit(kubensctl: str = DEFAULT_KUBENSCTL, textfile: str = DEFAULT_TEXTFILE) -> str:
    """The contents of kubensctl-metrics.service: one refresh of the textfile."""
    directory = os.path.dirname(textfile)
    return (
        "[Unit]\n"
        "Description=Refresh kubensctl's Prometheus metrics for node_exporter's textfile collector\n"
        "Documentation=man:kubensctl(8)\n"
        "After=kubens.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStartPre=/bin/mkdir -p {directory}\n"
        f"ExecStart={kubensctl} metrics --textfile {textfile}\n"
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )


def metrics_timer_unit(interval: str = "1min") -> str:
    """The contents of kubensctl-metrics.timer: refresh every ``interval`` (a systemd time span)."""
    return (
        "[Unit]\n"
        "Description=Refresh kubensctl's Prometheus metrics periodically\n"
        "\n"
        "[Timer]\n"
        "OnBootSec=30s\n"
        f"OnUnitActiveSec={interval}\n"
        "AccuracySec=10s\n"
        f"Unit={SERVICE_NAME}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def metrics_units(kubensctl: str = DEFAULT_KUBENSCTL, textfile: str = DEFAULT_TEXTFILE) -> Dict[str, str]:
    """{unit file name: contents} for both units; enable the timer."""
    return {SERVICE_NAME: metrics_service_unit(kubensctl, textfile), TIMER_NAME: metrics_timer_unit()}


# ---- CLI -----------------------------------------------------------------------------------------


def _cmd_metrics(args: argparse.Namespace) -> int:
    names = args.process or list(procs.DEFAULT_NAMES)
    text = exposition(namespace.Paths(args.runtime_dir), args.host_pid, names, args.bench_file)
    if args.textfile:
        write_textfile(args.textfile, text)
    else:
        print(text, end="")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "metrics",
        help="Prometheus metrics (text format; node_exporter textfile collector)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    namespace.add_runtime_dir(p)
    p.add_argument(
        "--host-pid",
        type=int,
        default=1,
        metavar="PID",
        help="a process in the host mount namespace (default: 1, systemd)",
    )
    p.add_argument(
        "--process",
        action="append",
        metavar="NAME",
        help="Kubernetes process name (repeatable; replaces kubelet, crio, containerd, k3s, rke2)",
    )
    p.add_argument(
        "--textfile",
        metavar="PATH",
        help=f"write atomically to PATH instead of stdout (e.g. {DEFAULT_TEXTFILE})",
    )
    p.add_argument(
        "--bench-file",
        default=measure.DEFAULT_RESULT_FILE,
        metavar="PATH",
        help=f"the last 'kubensctl bench' result (default: {measure.DEFAULT_RESULT_FILE})",
    )
    p.set_defaults(func=_cmd_metrics)
