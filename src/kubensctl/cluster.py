"""Cluster-wide checks over ``oc`` or ``kubectl``: MachineConfigPool rollout and per-node verification.

``kubensctl cluster status`` shows the seed's ``oc get mcp`` columns and, with ``--wait``, does what
``oc wait --for=condition=Updated mcp --all --timeout=30m`` does, failing early on a Degraded pool.

``kubensctl cluster verify`` runs the seed's verification (7.4.2 "验证") on every node through a debug pod:
``readlink /proc/1/ns/mnt`` against the kubelet's and the container runtime's namespaces, with plain
``readlink``/``pgrep`` in ``chroot /host`` so it works on nodes where kubensctl is not installed.

This runs on an administrator's machine, not on nodes; it is still standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from kubensctl.errors import (
    EXIT_ERROR,
    EXIT_NOT_ENCAPSULATED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    ClusterError,
    UsageError,
)

# How long one `get` may take, and one node's debug pod (image pull + scheduling included).
GET_TIMEOUT = 60.0
DEFAULT_NODE_TIMEOUT = 180.0
DEFAULT_WAIT_TIMEOUT = "30m"
DEFAULT_INTERVAL = 10.0
# kubectl needs an image for node debugging; it only has to provide `chroot`.
DEFAULT_DEBUG_IMAGE = "docker.io/library/busybox:stable"
MARK = "KUBENSCTL-VERIFY"

# --------------------------------------------------------------------------------------------------
# Running oc / kubectl
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """The command-line client found on PATH."""

    path: str
    name: str  # "oc" or "kubectl"


def find_client(only: Optional[str] = None) -> Client:
    """``oc`` if it is on PATH, else ``kubectl`` (or just ``only``, when the user chose)."""
    for name in (only,) if only else ("oc", "kubectl"):
        path = shutil.which(name)
        if path:
            return Client(path, name)
    if only:
        raise ClusterError(f"{only} was not found on PATH", f"install {only} or drop --client", EXIT_NOT_FOUND)
    raise ClusterError(
        "neither oc nor kubectl was found on PATH",
        "install the OpenShift CLI (oc) or kubectl and log in to the cluster",
        exit_code=EXIT_NOT_FOUND,
    )


def _permanent(e: ClusterError) -> ClusterError:
    """Mark an error that retrying cannot fix (credentials, permissions, wrong kind of cluster)."""
    e.permanent = True  # type: ignore[attr-defined]
    return e


def is_permanent(e: ClusterError) -> bool:
    return bool(getattr(e, "permanent", False))


def _client_error(client: Client, stderr: str, what: str) -> ClusterError:
    """A one-line error from a failed oc/kubectl call, naming the usual fixes."""
    text = stderr.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.lower().startswith(("error", "unable", "the connection"))), "")
    first = first or (lines[-1] if lines else f"{client.name} failed with no message")
    login = "oc login" if client.name == "oc" else "set KUBECONFIG or kubectl config use-context"
    if "must be logged in" in text or "Unauthorized" in text or "provide credentials" in text:
        return _permanent(ClusterError(f"not logged in to the cluster: {first}", f"run '{login}' first"))
    if "doesn't have a resource type" in text and "machineconfigpool" in text:
        return _permanent(
            ClusterError(
                "this cluster has no MachineConfigPools (not OpenShift)",
                "on plain Kubernetes roll out with 'kubensctl daemonset' and check with 'kubensctl cluster verify'",
            )
        )
    if "Forbidden" in text or "forbidden" in text:
        return _permanent(ClusterError(f"{what}: permission denied: {first}", "log in as a user with cluster-admin"))
    if "connection to the server" in text or "no such host" in text or "dial tcp" in text:
        return ClusterError(f"{what}: cannot reach the API server: {first}", f"check the cluster and '{login}'")
    return ClusterError(f"{what}: {first}", f"run the same {client.name} command by hand to see more")


def get_json(client: Client, args: Sequence[str], what: str) -> Dict[str, Any]:
    """``CLIENT get ARGS -o json``, parsed."""
    argv = [client.path, "get", *args, "-o", "json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=GET_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"{what}: {client.name} did not answer in {GET_TIMEOUT:.0f}s", "check the API server") from e
    if proc.returncode != 0:
        raise _client_error(client, proc.stderr, what)
    try:
        data = json.loads(proc.stdout)
    except ValueError as e:
        raise ClusterError(f"{what}: {client.name} printed something that is not JSON", "check its version") from e
    if not isinstance(data, dict):
        raise ClusterError(f"{what}: unexpected output from {client.name}", "check its version")
    return data


# --------------------------------------------------------------------------------------------------
# Durations and small formatting helpers
# --------------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """'30m', '90s', '1h30m', '45' (seconds) -> seconds. Go-style like ``oc wait --timeout``."""
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    elif t and _DURATION_RE.sub("", t) == "":
        units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        seconds = sum(float(n) * units[u] for n, u in _DURATION_RE.findall(t))
    else:
        raise UsageError(f"invalid duration {text!r}", "use a number of seconds or e.g. 90s, 30m, 1h30m")
    if seconds <= 0:
        raise UsageError(f"invalid duration {text!r}", "the duration must be positive")
    return seconds


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m" + (f"{s % 60}s" if s % 60 and s < 600 else "")
    if s < 48 * 3600:
        return f"{s // 3600}h" + (f"{(s % 3600) // 60}m" if (s % 3600) // 60 else "")
    return f"{s // 86400}d"


def _age(timestamp: str, now: Optional[float] = None) -> str:
    try:
        t = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return "<unknown>"
    return _fmt_duration(max(0.0, (time.time() if now is None else now) - t))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by three spaces, like ``oc get``."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        lines.append("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# cluster status: MachineConfigPools
# --------------------------------------------------------------------------------------------------


@dataclass
class Pool:
    name: str
    config: str
    updated: str  # condition status: "True" / "False" / "Unknown" / ""
    updating: str
    degraded: str
    machines: int
    ready: int
    updated_machines: int
    degraded_machines: int
    created: str
    paused: bool = False
    generation_seen: bool = True
    degraded_message: str = ""

    @property
    def done(self) -> bool:
        return (
            self.updated == "True"
            and self.generation_seen
            and self.updated_machines == self.machines
            and self.degraded != "True"
        )

    @property
    def is_degraded(self) -> bool:
        return self.degraded == "True"


def _int(v: Any) -> int:
    return v if isinstance(v, int) else 0


def parse_pools(data: Dict[str, Any]) -> List[Pool]:
    pools = []
    for item in data.get("items") or []:
        meta = item.get("metadata") or {}
        status = item.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}

        def cond(name: str, conds: Dict[Any, Any] = conds) -> str:
            return str((conds.get(name) or {}).get("status", ""))

        message = ""
        for name in ("NodeDegraded", "RenderDegraded", "Degraded"):
            c = conds.get(name) or {}
            if c.get("status") == "True" and (c.get("message") or c.get("reason")):
                message = str(c.get("message") or c.get("reason"))
                break
        gen, seen = meta.get("generation"), status.get("observedGeneration")
        pools.append(
            Pool(
                name=str(meta.get("name", "?")),
                config=str((status.get("configuration") or {}).get("name", "")),
                updated=cond("Updated"),
                updating=cond("Updating"),
                degraded=cond("Degraded"),
                machines=_int(status.get("machineCount")),
                ready=_int(status.get("readyMachineCount")),
                updated_machines=_int(status.get("updatedMachineCount")),
                degraded_machines=_int(status.get("degradedMachineCount")),
                created=str(meta.get("creationTimestamp", "")),
                paused=bool((item.get("spec") or {}).get("paused")),
                generation_seen=not (isinstance(gen, int) and isinstance(seen, int) and seen < gen),
                degraded_message=message,
            )
        )
    return pools


POOL_HEADER = (
    "NAME", "CONFIG", "UPDATED", "UPDATING", "DEGRADED", "MACHINECOUNT", "READYMACHINECOUNT",
    "UPDATEDMACHINECOUNT", "DEGRADEDMACHINECOUNT", "AGE",
)  # fmt: skip


def pool_table(pools: Sequence[Pool], now: Optional[float] = None) -> str:
    rows = [
        (
            p.name + (" (paused)" if p.paused else ""),
            p.config,
            p.updated,
            p.updating,
            p.degraded,
            str(p.machines),
            str(p.ready),
            str(p.updated_machines),
            str(p.degraded_machines),
            _age(p.created, now),
        )
        for p in pools
    ]
    return table(POOL_HEADER, rows)


def get_pools(client: Client) -> List[Pool]:
    pools = parse_pools(get_json(client, ["machineconfigpools"], "listing MachineConfigPools"))
    if not pools:
        raise ClusterError("the cluster has no MachineConfigPools", "is this an OpenShift cluster?")
    return pools


def _progress(pools: Sequence[Pool], elapsed: float) -> str:
    parts = [f"{p.name} {p.updated_machines}/{p.machines}" + ("" if p.done else "*") for p in pools]
    return f"waiting for pools to update ({_fmt_duration(elapsed)}): " + ", ".join(parts)


def _degraded_error(pools: Sequence[Pool]) -> ClusterError:
    bad = [p for p in pools if p.is_degraded]
    detail = "; ".join(f"{p.name}: {p.degraded_message or 'Degraded=True'}" for p in bad)
    return ClusterError(
        f"MachineConfigPool degraded: {detail}",
        "see 'oc describe mcp' and the machine-config-daemon logs on the degraded nodes",
    )


def wait_for_pools(
    client: Client,
    timeout: float,
    interval: float,
    out: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> List[Pool]:
    """Poll until every pool is updated; raise on Degraded, on a paused pool that needs work, on timeout."""
    out = out if out is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    start = clock()
    last = ""
    pools: List[Pool] = []
    while True:
        try:
            pools = get_pools(client)
        except ClusterError as e:
            # Control-plane nodes reboot during a rollout, so the API server can be briefly unreachable:
            # keep polling until the timeout unless retrying cannot help.
            elapsed = clock() - start
            if is_permanent(e) or not pools or elapsed >= timeout:
                if tty and last:
                    out.write("\n")
                raise
            line = f"{_progress(pools, elapsed)} (API server: {e.message})"
            out.write(("\r\033[K" + line) if tty else line + "\n")
            out.flush()
            last = line
            sleep(min(interval, max(0.0, timeout - elapsed)) or interval)
            continue
        elapsed = clock() - start
        if any(p.is_degraded for p in pools):
            if tty and last:
                out.write("\n")
            raise _degraded_error(pools)
        if all(p.done for p in pools):
            if tty and last:
                out.write("\n")
            return pools
        paused = [p.name for p in pools if p.paused and not p.done]
        if paused:
            raise ClusterError(
                f"MachineConfigPool paused while not updated: {', '.join(paused)}",
                'unpause it: oc patch mcp NAME --type merge -p \'{"spec":{"paused":false}}\'',
            )
        line = _progress(pools, elapsed)
        if tty:
            out.write("\r\033[K" + line)
            out.flush()
        elif line.split(": ", 1)[1] != last.split(": ", 1)[-1]:
            out.write(line + "\n")
            out.flush()
        last = line
        if elapsed >= timeout:
            if tty:
                out.write("\n")
            waiting = ", ".join(f"{p.name} ({p.updated_machines}/{p.machines} updated)" for p in pools if not p.done)
            raise ClusterError(
                f"timed out after {_fmt_duration(timeout)} waiting for MachineConfigPools: {waiting}",
                "check progress with 'kubensctl cluster status' or give a longer --timeout",
            )
        sleep(min(interval, max(0.0, timeout - elapsed)) or interval)


def cmd_status(args: argparse.Namespace) -> int:
    timeout = parse_duration(args.timeout)
    if args.interval <= 0:
        raise UsageError(f"invalid --interval {args.interval}", "give a positive number of seconds")
    client = find_client(args.client)
    if args.wait:
        pools = wait_for_pools(client, timeout, args.interval)
        sys.stdout.write(pool_table(pools))
        return EXIT_OK
    pools = get_pools(client)
    sys.stdout.write(pool_table(pools))
    if any(p.is_degraded for p in pools):
        print(f"kubensctl: {_degraded_error(pools).line()}", file=sys.stderr)
        return EXIT_ERROR
    if not all(p.done for p in pools):
        return EXIT_NOT_ENCAPSULATED
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# cluster verify: the seed's readlink check on every node
# --------------------------------------------------------------------------------------------------

# Runs under `chroot /host` with the host's own tools: no kubensctl needed. One marked line per fact.
VERIFY_SCRIPT = (
    "m=" + MARK + "; "
    "ns() { readlink /proc/$1/ns/mnt 2>/dev/null || echo -; }; "
    'echo "$m pid1 1 $(ns 1)"; '
    "for p in kubelet crio containerd; do "
    "pid=$(pgrep -o -x $p 2>/dev/null || pidof -s $p 2>/dev/null); "
    'if [ -n "$pid" ]; then echo "$m $p $pid $(ns $pid)"; else echo "$m $p - -"; fi; '
    "done; "
    'echo "$m end"'
)

VERDICT_OK = "encapsulated"


@dataclass
class NodeResult:
    node: str
    roles: str
    pid1: str = "-"
    kubelet: str = "-"
    runtime: str = "-"
    runtime_ns: str = "-"
    verdict: str = "unknown"
    detail: str = ""
    facts: Dict[str, Tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == VERDICT_OK


@dataclass(frozen=True)
class Node:
    name: str
    roles: str
    runtime: str  # from status.nodeInfo.containerRuntimeVersion: "crio", "containerd" or ""
    unreachable: str = ""  # the Ready condition's message when the kubelet stopped reporting (Unknown)


def parse_nodes(data: Dict[str, Any]) -> List[Node]:
    nodes = []
    for item in data.get("items") or []:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
        roles = [r for r in roles if r]
        info = (item.get("status") or {}).get("nodeInfo") or {}
        crv = str(info.get("containerRuntimeVersion", ""))
        runtime = "crio" if crv.startswith("cri-o") else crv.split(":", 1)[0] if "://" in crv else ""
        conditions = (item.get("status") or {}).get("conditions") or []
        ready: Dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        unreachable = ""
        if ready.get("status") == "Unknown":
            unreachable = str(ready.get("message") or ready.get("reason") or "Ready=Unknown")
        nodes.append(Node(str(meta.get("name", "?")), ",".join(roles) or "<none>", runtime, unreachable))
    return sorted(nodes, key=lambda n: n.name)


def parse_verify_output(text: str) -> Tuple[Dict[str, Tuple[str, str]], bool]:
    """The marked lines of VERIFY_SCRIPT's output -> ({process: (pid, ns)}, saw the end marker).

    Anything else (oc debug's 'Starting pod/...', 'Removing debug pod ...', kubectl's notices) is ignored.
    """
    facts: Dict[str, Tuple[str, str]] = {}
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        idx = line.find(MARK + " ")
        if idx < 0:
            continue
        parts = line[idx + len(MARK) + 1 :].split()
        if parts == ["end"]:
            end = True
        elif len(parts) == 3:
            facts[parts[0]] = (parts[1], parts[2])
    return facts, end


def judge(node: Node, facts: Dict[str, Tuple[str, str]]) -> NodeResult:
    """The seed's rule: encapsulated when kubelet and the runtime share a namespace that is not PID 1's."""
    r = NodeResult(node.name, node.roles, facts=facts)
    r.pid1 = facts.get("pid1", ("-", "-"))[1]
    kubelet_pid, r.kubelet = facts.get("kubelet", ("-", "-"))
    order = [node.runtime] if node.runtime in ("crio", "containerd") else []
    order += [p for p in ("crio", "containerd") if p not in order]
    for name in order:
        if facts.get(name, ("-", "-"))[0] != "-":
            r.runtime, r.runtime_ns = name, facts[name][1]
            break
    if r.pid1 == "-":
        r.verdict, r.detail = "error", "cannot read /proc/1/ns/mnt (the debug pod needs privilege)"
    elif kubelet_pid == "-":
        r.verdict, r.detail = "no kubelet", "no kubelet process on the node"
    elif r.kubelet == "-":
        r.verdict, r.detail = "error", "cannot read the kubelet's /proc/PID/ns/mnt"
    elif r.runtime == "-":
        r.verdict, r.detail = "no runtime", "neither crio nor containerd runs on the node"
    elif r.kubelet == r.pid1 and r.runtime_ns == r.pid1:
        r.verdict, r.detail = "not encapsulated", "kubelet, the runtime and systemd share one mount namespace"
    elif r.kubelet != r.runtime_ns:
        r.verdict, r.detail = "split", f"kubelet and {r.runtime} are in different mount namespaces"
    else:
        r.verdict, r.detail = VERDICT_OK, ""
    return r


def _debug_argv(client: Client, node: str, image: str) -> List[str]:
    command = ["chroot", "/host", "sh", "-c", VERIFY_SCRIPT]
    if client.name == "oc":
        return [client.path, "debug", f"node/{node}", "--", *command]
    return [
        client.path, "debug", f"node/{node}", f"--image={image}", "--profile=sysadmin",
        "--attach=true", "--", *command,
    ]  # fmt: skip


_KUBECTL_POD_RE = re.compile(r"Creating debugging pod (\S+) with container")


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    noise = ("Starting pod/", "To use host binaries", "Removing debug pod", "Temporary namespace", "Creating debug")
    useful = [ln for ln in lines if not ln.startswith(noise)]
    return (useful or lines or ["no output"])[-1]


def _stop(proc: subprocess.Popen[str]) -> Tuple[str, str]:
    """Interrupt a hanging debug session (oc then removes its pod), kill it if it does not stop."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def _run_quiet(argv: Sequence[str]) -> Optional[str]:
    """stdout of a best-effort helper call, None when it fails."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=GET_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def verify_node(client: Client, node: Node, timeout: float, image: str) -> NodeResult:
    if node.unreachable:
        # No debug pod can start where the kubelet is gone: say so instead of waiting for the timeout.
        return NodeResult(node.name, node.roles, verdict="no answer", detail=f"node unreachable: {node.unreachable}")
    argv = _debug_argv(client, node.name, image)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as e:
        return NodeResult(node.name, node.roles, verdict="error", detail=f"cannot run {client.name}: {e}")
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stdout, stderr = _stop(proc)
    facts, end = parse_verify_output(stdout + "\n" + stderr)
    if client.name == "kubectl":
        m = _KUBECTL_POD_RE.search(stderr)
        if m:
            if not end and not timed_out:
                # The script can finish before kubectl attaches ("cannot attach to a container in a
                # completed pod"): its output is still in the pod's log.
                logs = _run_quiet([client.path, "logs", f"pod/{m.group(1)}"])
                if logs is not None:
                    facts, end = parse_verify_output(logs)
            # kubectl leaves node debugging pods behind
            _run_quiet([client.path, "delete", "pod", m.group(1), "--wait=false"])
    if timed_out:
        return NodeResult(
            node.name, node.roles, verdict="no answer", detail=f"no answer within {_fmt_duration(timeout)}"
        )
    if not end:
        detail = _last_error(stderr) if proc.returncode else "the debug pod printed no result"
        verdict = "not logged in" if "must be logged in" in stderr else "error"
        return NodeResult(node.name, node.roles, verdict=verdict, detail=f"debug pod failed: {detail}")
    return judge(node, facts)


def verify_nodes(
    client: Client,
    nodes: Sequence[Node],
    parallel: int,
    timeout: float,
    image: str,
    progress: Optional[Callable[[NodeResult], None]] = None,
) -> List[NodeResult]:
    """Run the check on every node, at most ``parallel`` at once; results in node order."""
    lock = threading.Lock()

    def one(node: Node) -> NodeResult:
        result = verify_node(client, node, timeout, image)
        if progress is not None:
            with lock:
                progress(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(nodes)))) as pool:
        return list(pool.map(one, nodes))


VERIFY_HEADER = ("NODE", "ROLES", "PID 1 NS", "KUBELET NS", "RUNTIME", "RUNTIME NS", "VERDICT")


def verify_table(results: Sequence[NodeResult]) -> str:
    rows = []
    for r in results:
        verdict = r.verdict + (f" ({r.detail})" if r.detail and not r.ok else "")
        rows.append((r.node, r.roles, r.pid1, r.kubelet, r.runtime, r.runtime_ns, verdict))
    return table(VERIFY_HEADER, rows)


def verify_exit_code(results: Sequence[NodeResult]) -> int:
    """0 every node encapsulated; 3 every node answered and some are not; 1 some node did not answer."""
    if all(r.ok for r in results):
        return EXIT_OK
    answered = all(r.pid1 != "-" and r.verdict not in ("error", "no answer", "not logged in") for r in results)
    return EXIT_NOT_ENCAPSULATED if answered else EXIT_ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise UsageError(f"invalid --parallel {args.parallel}", "give at least 1")
    node_timeout = parse_duration(args.node_timeout)
    client = find_client(args.client)
    selector = ["-l", args.selector] if args.selector else []
    nodes = parse_nodes(get_json(client, ["nodes", *selector], "listing nodes"))
    if not nodes:
        where = f" match the selector {args.selector!r}" if args.selector else " in the cluster"
        raise ClusterError(f"no nodes{where}", "check the selector with 'oc get nodes -l ...'")
    tty = sys.stderr.isatty() and not args.json
    done = [0]

    def progress(r: NodeResult) -> None:
        done[0] += 1
        if tty:
            sys.stderr.write(f"\r\033[Kverified {done[0]}/{len(nodes)} nodes (last: {r.node}: {r.verdict})")
            sys.stderr.flush()

    results = verify_nodes(client, nodes, args.parallel, node_timeout, args.image, progress)
    if tty:
        sys.stderr.write("\r\033[K")
    code = verify_exit_code(results)
    if args.json:
        payload = {
            "encapsulated": code == EXIT_OK,
            "nodes": [{k: v for k, v in asdict(r).items() if k != "facts"} for r in results],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        sys.stdout.write(verify_table(results))
        silent = sum(r.verdict in ("error", "no answer", "not logged in") for r in results)
        bad = sum(not r.ok for r in results) - silent
        parts = [f"{bad} not encapsulated"] if bad else []
        parts += [f"{silent} did not answer"] if silent else []
        if parts:
            print(f"kubensctl: of {len(results)} nodes, {' and '.join(parts)}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "cluster",
        help="cluster-wide rollout status (MachineConfigPools) and per-node verification",
        description="Check a whole cluster through oc or kubectl (whichever is on PATH, oc first).",
    )
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", parser_class=type(p))
    csub.required = True

    s = csub.add_parser(
        "status",
        help="MachineConfigPool rollout, like 'oc get mcp'",
        description="Show the MachineConfigPools. Exit 0 when every pool is updated, 3 while a rollout is in "
        "progress, 1 when a pool is Degraded. --wait polls until every pool is updated "
        "(like 'oc wait --for=condition=Updated mcp --all') and fails on Degraded or timeout.",
    )
    s.add_argument("--wait", action="store_true", help="wait until every pool is updated")
    s.add_argument(
        "--timeout",
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="DURATION",
        help=f"with --wait: give up after DURATION (e.g. 90s, 30m, 1h; default {DEFAULT_WAIT_TIMEOUT})",
    )
    s.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"with --wait: seconds between polls (default {DEFAULT_INTERVAL:.0f})",
    )
    s.add_argument(
        "--client",
        choices=("oc", "kubectl"),
        help="use this client (default: oc if it is on PATH, else kubectl)",
    )
    s.set_defaults(func=cmd_status)

    v = csub.add_parser(
        "verify",
        help="check every node's mount namespaces through a debug pod",
        description="Run the specification's readlink check on each node (oc debug node/NAME, or kubectl "
        "debug) and print one table. Exit 0 when every node is encapsulated, 3 when some node is not, "
        "1 when some node did not answer.",
    )
    v.add_argument("--selector", "-l", metavar="LABELS", help="only nodes matching this label selector")
    v.add_argument("--parallel", type=int, default=4, metavar="N", help="nodes checked at once (default 4)")
    v.add_argument("--json", action="store_true", help="print JSON instead of the table")
    v.add_argument(
        "--node-timeout",
        default=f"{DEFAULT_NODE_TIMEOUT:.0f}s",
        metavar="DURATION",
        help=f"give up on a node after DURATION (default {DEFAULT_NODE_TIMEOUT:.0f}s)",
    )
    v.add_argument(
        "--image",
        default=os.environ.get("KUBENSCTL_DEBUG_IMAGE", DEFAULT_DEBUG_IMAGE),
        metavar="IMAGE",
        help=f"kubectl only: debug pod image, needs chroot (default {DEFAULT_DEBUG_IMAGE})",
    )
    v.add_argument(
        "--client",
        choices=("oc", "kubectl"),
        help="use this client (default: oc if it is on PATH, else kubectl)",
    )
    v.set_defaults(func=cmd_verify)
