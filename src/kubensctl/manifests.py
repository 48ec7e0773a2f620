"""Cluster rollout manifests: OpenShift MachineConfigs (YAML, JSON, Butane) and a DaemonSet for plain Kubernetes.

``kubensctl machineconfig`` prints, with no options, exactly the two MachineConfigs of the specification
(7.4.2 step 1). ``--embed`` also carries the node files that ``kubensctl install`` lays (units, drop-ins,
kubensenter and the kubensctl single-file build) as Ignition ``storage.files`` and ``systemd.units``, for
OS images that lack kubens.service.

``kubensctl daemonset`` prints the objects that do the same on clusters without the Machine Config
Operator: a privileged ``hostPID`` DaemonSet whose agent (``agent_main`` below, run from the single-file
build carried in a ConfigMap) copies kubensctl to the host, runs ``kubensctl install`` in the host's
namespaces and marks the node for a reboot.

Everything here is standard library only: YAML is written by the small emitter below, which handles the
shapes these manifests use (mappings, sequences, strings, integers, booleans, null).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kubensctl.errors import KubensError, UsageError
from kubensctl.fsutil import atomic_write

# --------------------------------------------------------------------------------------------------
# YAML emitter (block style, like `oc get -o yaml`; sequences are not indented under their key)
# --------------------------------------------------------------------------------------------------

_RESERVED_WORDS = {
    "",
    "~",
    "null",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "=",
    "<<",
    ".inf",
    "+.inf",
    "-.inf",
    ".nan",
}
# Strings that a YAML 1.1 or 1.2 resolver would read as something other than a string.
_NUMBERISH = (
    re.compile(r"^[-+]?(0b[01_]+|0o?[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(:[0-5]?[0-9])*)$"),
    re.compile(r"^[-+]?([0-9][0-9_]*(\.[0-9_]*)?|\.[0-9_]+)([eE][-+]?[0-9]+)?$"),
    re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*$"),
    re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"),
)
# Plain scalars: a conservative character set, no indicator at the start, no ': ' / ' #' inside.
_PLAIN_OK = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:=+@ -]*$")
# Characters a literal block may hold: printable, and no line break but \n (YAML 1.1 also breaks at
# U+0085, U+2028 and U+2029).
_BLOCK_BAD = re.compile("[^\t\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _plain_ok(s: str) -> bool:
    if s.lower() in _RESERVED_WORDS or any(p.match(s) for p in _NUMBERISH):
        return False
    if not _PLAIN_OK.fullmatch(s) or s.endswith((" ", ":")) or s.startswith(("---", "...")):
        return False
    return ": " not in s and " #" not in s


def _double_quoted(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= ord(ch) <= 0x7E:
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value if _plain_ok(value) else _double_quoted(value)
    raise TypeError(f"cannot emit {type(value).__name__} as YAML")


def _literal_block(s: str, indent: int) -> Optional[List[str]]:
    """``s`` as a literal block scalar (header, then lines at ``indent``), or None when one cannot carry it."""
    if "\n" not in s or not s.strip() or _BLOCK_BAD.search(s):
        return None
    if s.endswith("\n\n"):
        chomp = "+"
    elif s.endswith("\n"):
        chomp = ""
    else:
        chomp = "-"
    # A leading space or empty line hides the indentation: say it explicitly (relative to the parent).
    header = "|" + ("2" if s[0] in " \n" else "") + chomp
    body = s[:-1] if s.endswith("\n") else s
    return [header] + [(" " * indent + line) if line else "" for line in body.split("\n")]


def _key(k: Any) -> str:
    key = str(k)
    return key if _plain_ok(key) else _double_quoted(key)


def _emit_mapping(d: Dict[Any, Any], indent: int, out: List[str], first: Optional[str] = None) -> None:
    for i, (k, v) in enumerate(d.items()):
        lead = first if (i == 0 and first is not None) else " " * indent
        head = f"{lead}{_key(k)}:"
        if isinstance(v, dict) and v:
            out.append(head)
            _emit_mapping(v, indent + 2, out)
        elif isinstance(v, list) and v:
            out.append(head)
            _emit_sequence(v, indent, out)
        else:
            block = _literal_block(v, indent + 2) if isinstance(v, str) else None
            if block is not None:
                out.append(f"{head} {block[0]}")
                out.extend(block[1:])
            else:
                out.append(f"{head} {_flow_or_scalar(v)}")


def _emit_sequence(items: List[Any], indent: int, out: List[str]) -> None:
    dash = " " * indent + "- "
    for item in items:
        if isinstance(item, dict) and item:
            _emit_mapping(item, indent + 2, out, first=dash)
        elif isinstance(item, list) and item:
            out.append(dash.rstrip())
            _emit_sequence(item, indent + 2, out)
        else:
            block = _literal_block(item, indent + 2) if isinstance(item, str) and item[:1] not in " \n" else None
            if block is not None:
                out.append(dash + block[0])
                out.extend(block[1:])
            else:
                out.append(dash + _flow_or_scalar(item))


def _flow_or_scalar(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _scalar(v)


def to_yaml(doc: Any) -> str:
    """One YAML document (no '---'), ending in a newline."""
    out: List[str] = []
    if isinstance(doc, dict) and doc:
        _emit_mapping(doc, 0, out)
    elif isinstance(doc, list) and doc:
        _emit_sequence(doc, 0, out)
    else:
        out.append(_flow_or_scalar(doc))
    return "\n".join(out) + "\n"


def to_yaml_stream(docs: Sequence[Any]) -> str:
    """Several documents separated by '---', as ``oc apply -f`` and ``kubectl apply -f`` read them."""
    return "---\n".join(to_yaml(d) for d in docs)


# --------------------------------------------------------------------------------------------------
# MachineConfig
# --------------------------------------------------------------------------------------------------

MC_API_VERSION = "machineconfiguration.openshift.io/v1"
ROLE_LABEL = "machineconfiguration.openshift.io/role"
DEFAULT_ROLES = ("master", "worker")
DEFAULT_IGNITION_VERSION = "3.2.0"
# Ignition spec versions a MachineConfig may carry (OpenShift 4.6 reads 3.1.0; 4.14+ writes 3.4.0).
IGNITION_VERSIONS = ("3.1.0", "3.2.0", "3.3.0", "3.4.0")
# Butane's `openshift` variant: the oldest spec version targeting each Ignition spec (Butane's spec table:
# openshift 4.8.0-4.13.0 -> Ignition 3.2.0, 4.14.0-4.18.0 -> 3.4.0; none targets 3.1.0 or 3.3.0).
BUTANE_OPENSHIFT_VERSIONS = {"3.2.0": "4.8.0", "3.4.0": "4.14.0"}
# What --embed lays on OpenShift nodes: the units the seed names, and a kubensenter outside read-only /usr
# (RHCOS ships its own at /usr/bin/kubensenter; ours does not touch it).
OPENSHIFT_UNITS = ("kubelet.service", "crio.service")
EMBED_KUBENSENTER = "/usr/local/bin/kubensenter"
EMBED_KUBENSCTL = "/usr/local/bin/kubensctl"
SYSTEMD_DIR = "/etc/systemd/system"
KUBENS_UNIT = "kubens.service"
_ROLE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Large MachineConfigs are stored in etcd (1.5 MiB request limit); warn well before that.
_SIZE_WARNING = 1024 * 1024


def _check_roles(roles: Sequence[str]) -> List[str]:
    seen: List[str] = []
    for role in roles:
        if not _ROLE_RE.match(role) or len(role) > 63:  # a label value
            raise UsageError(
                f"invalid pool role {role!r}",
                "a role is a MachineConfigPool name: lower-case letters, digits and '-' (e.g. worker, infra)",
            )
        if role not in seen:
            seen.append(role)
    return seen


def check_ignition_version(version: str) -> str:
    if version not in IGNITION_VERSIONS:
        raise UsageError(
            f"unsupported Ignition version {version!r}",
            f"accepted: {', '.join(IGNITION_VERSIONS)}",
        )
    return version


def data_url(data: bytes) -> str:
    """An RFC 2397 data URL carrying ``data`` exactly (base64; the media type says text or binary)."""
    media = "text/plain;charset=utf-8" if _text(data) is not None else "application/octet-stream"
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_url(url: str) -> bytes:
    """The bytes of a data URL (base64 or percent-encoded); used by tests and ``--format butane``."""
    if not url.startswith("data:") or "," not in url:
        raise ValueError(f"not a data URL: {url[:40]!r}")
    meta, payload = url[5:].split(",", 1)
    if meta.endswith(";base64"):
        return base64.b64decode(payload, validate=True)
    return urllib.parse.unquote_to_bytes(payload)


def embedded_files() -> List[Any]:
    """What ``kubensctl install --env kubelet.service --env crio.service`` lays on a node, record included.

    OpenShift's kubelet and CRI-O join ``$KUBENSMNT`` themselves (the RHCOS design), so they get the
    environment drop-in; wrapper drop-ins are not embedded because they rewrite the node's own ExecStart,
    which is not known off the node. The install record is carried too, so ``kubensctl uninstall`` on the
    node removes exactly these files. Imported lazily: only ``--embed`` needs ``kubensctl.install``.
    """
    import tempfile

    install = _install_module()
    files = list(install.node_files(wrap_units=(), env_units=OPENSHIFT_UNITS, kubensenter_path=EMBED_KUBENSENTER))
    record = install.Record(
        files={f.path: hashlib.sha256(f.data).hexdigest() for f in files},
        links=[f"{SYSTEMD_DIR}/multi-user.target.wants/{KUBENS_UNIT}"],
        wrapped=[],
        env=sorted(OPENSHIFT_UNITS),
    )
    with tempfile.TemporaryDirectory(prefix="kubensctl-embed-") as tmp:
        record.save(tmp)
        with open(os.path.join(tmp, install.RECORD.lstrip("/")), "rb") as f:
            files.append(install.NodeFile(install.RECORD, 0o644, f.read(), "file"))
    return files


def _install_module() -> Any:
    """``kubensctl.install``, imported only by the commands that need the node files."""
    import importlib

    try:
        return importlib.import_module("kubensctl.install")
    except ImportError as e:  # also ModuleNotFoundError
        raise KubensError(f"this kubensctl has no node installer ({e})", "use a complete kubensctl build") from e


def _text(data: bytes) -> Optional[str]:
    """``data`` as text when it is UTF-8 without NUL (what a unit's ``contents`` string can carry)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def ignition_config(version: str, files: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """The Ignition config (MachineConfig ``spec.config``): enable kubens.service, and carry ``files``.

    Units and drop-ins laid under /etc/systemd/system with mode 0644 go to ``systemd.units`` (Ignition
    writes them to exactly those paths); everything else goes to ``storage.files``.
    """
    units: Dict[str, Dict[str, Any]] = {}
    storage: List[Dict[str, Any]] = []
    for f in files or ():
        unit = getattr(f, "unit", None) or os.path.basename(f.path)
        text = _text(f.data) if f.mode == 0o644 else None
        if f.kind == "unit" and f.path == f"{SYSTEMD_DIR}/{unit}" and text is not None:
            units.setdefault(unit, {"name": unit})["contents"] = text
            continue
        dropin = getattr(f, "dropin", None) or os.path.basename(f.path)
        if (
            f.kind == "dropin"
            and f.path == f"{SYSTEMD_DIR}/{unit}.d/{dropin}"
            and dropin.endswith(".conf")
            and text is not None
        ):
            entry = units.setdefault(unit, {"name": unit})
            entry.setdefault("dropins", []).append({"contents": text, "name": dropin})
            continue
        storage.append({"contents": {"source": data_url(f.data)}, "mode": f.mode, "overwrite": True, "path": f.path})
    units.setdefault(KUBENS_UNIT, {"name": KUBENS_UNIT})["enabled"] = True
    unit_list = []
    for name in sorted(units, key=lambda n: (n != KUBENS_UNIT, n)):
        entry = units[name]
        unit_list.append({k: entry[k] for k in ("contents", "dropins", "enabled", "name") if k in entry})
    config: Dict[str, Any] = {"ignition": {"version": version}}
    if storage:
        config["storage"] = {"files": sorted(storage, key=lambda e: e["path"])}
    config["systemd"] = {"units": unit_list}
    return config


def machineconfig(role: str, version: str, files: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """One MachineConfig, keys in the order of the specification (and of ``oc get -o yaml``)."""
    return {
        "apiVersion": MC_API_VERSION,
        "kind": "MachineConfig",
        "metadata": {"labels": {ROLE_LABEL: role}, "name": f"99-kubens-{role}"},
        "spec": {"config": ignition_config(version, files)},
    }


def butane_config(role: str, version: str, files: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """The Butane (variant openshift) source that ``butane`` turns into :func:`machineconfig`."""
    bversion = BUTANE_OPENSHIFT_VERSIONS.get(version)
    if bversion is None:
        raise UsageError(
            f"Butane's openshift variant has no spec version for Ignition {version}",
            f"use --ignition-version {' or '.join(sorted(BUTANE_OPENSHIFT_VERSIONS))} with --format butane",
        )
    ign = ignition_config(version, files)
    doc: Dict[str, Any] = {
        "variant": "openshift",
        "version": bversion,
        "metadata": {"name": f"99-kubens-{role}", "labels": {ROLE_LABEL: role}},
    }
    if "storage" in ign:
        bfiles = []
        for entry in ign["storage"]["files"]:
            text = _text(decode_data_url(entry["contents"]["source"]))
            contents = {"inline": text} if text is not None else entry["contents"]
            bfiles.append({"path": entry["path"], "mode": entry["mode"], "overwrite": True, "contents": contents})
        doc["storage"] = {"files": bfiles}
    units = []
    for u in ign["systemd"]["units"]:
        bu: Dict[str, Any] = {"name": u["name"]}
        for k in ("enabled", "contents", "dropins"):
            if k in u:
                bu[k] = u[k]
        units.append(bu)
    doc["systemd"] = {"units": units}
    return doc


def render_machineconfigs(roles: Sequence[str], version: str, fmt: str, files: Optional[Sequence[Any]] = None) -> str:
    roles = _check_roles(roles)
    check_ignition_version(version)
    if fmt == "butane":
        return to_yaml_stream([butane_config(r, version, files) for r in roles])
    docs = [machineconfig(r, version, files) for r in roles]
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2) + "\n"
    return to_yaml_stream(docs)


def _emit_output(text: str, output: Optional[str]) -> None:
    if output and output != "-":
        atomic_write(output, text, 0o644)
    else:
        sys.stdout.write(text)


def cmd_machineconfig(args: argparse.Namespace) -> int:
    roles = args.role or list(DEFAULT_ROLES)
    version = check_ignition_version(args.ignition_version)
    files = embedded_files() if args.embed else None
    text = render_machineconfigs(roles, version, args.format, files)
    if files is not None:
        print(
            "kubensctl: note: the embedded kubensctl and kubensenter run with /usr/bin/python3 (>= 3.9); "
            "Fedora CoreOS and RHCOS do not ship it: layer it into the OS image first (docs/rollout.md)",
            file=sys.stderr,
        )
    if len(text.encode()) > _SIZE_WARNING * len(_check_roles(roles)):
        print("kubensctl: warning: the MachineConfigs are large (over 1 MiB each)", file=sys.stderr)
    _emit_output(text, args.output)
    return 0


# --------------------------------------------------------------------------------------------------
# DaemonSet for plain Kubernetes
# --------------------------------------------------------------------------------------------------

DEFAULT_NAMESPACE = "kubensctl"
# The agent needs python3 (>= 3.9) and nsenter (util-linux) in the image; Debian-based python:slim has both.
DEFAULT_IMAGE = "docker.io/library/python:3.12-slim"
APP = "kubensctl"
BUILD_KEY = "kubensctl.pyz"
BUILD_DIR = "/opt/kubensctl"
REBOOT_LABEL = "kubensctl.io/reboot-required"
# kured's default --reboot-sentinel; Debian/Ubuntu's update-notifier reads it too.
REBOOT_SENTINEL = "/var/run/reboot-required"
HOST_KUBENSCTL = "/usr/local/bin/kubensctl"
HOST_AGENT_COPY = "/run/kubensctl-daemonset/kubensctl.pyz"
DONE_FILE = "/tmp/kubensctl-done"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIGMAP_LIMIT = 1024 * 1024

# The container's command: import the agent from the single-file build (zipimport), nothing else needed.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from kubensctl.manifests import agent_main; sys.exit(agent_main(sys.argv[2:]))"
)


def build_zipapp() -> bytes:
    """The kubensctl single-file build (``kubensctl.install.build_zipapp``)."""
    data: bytes = _install_module().build_zipapp()
    return data


def daemonset_manifests(namespace: str, image: str, build: bytes, uninstall: bool = False) -> List[Dict[str, Any]]:
    """Namespace, ServiceAccount, ClusterRole(+Binding), ConfigMap with the build, and the DaemonSet."""
    if not _DNS1123.match(namespace) or len(namespace) > 63:
        raise UsageError(f"invalid namespace {namespace!r}", "use lower-case letters, digits and '-'")
    if not image or any(c.isspace() for c in image):
        raise UsageError(f"invalid image {image!r}", "give an image reference such as python:3.12-slim")
    if len(build) * 4 // 3 > _CONFIGMAP_LIMIT:
        raise KubensError("the kubensctl build does not fit in a ConfigMap (1 MiB)", "report this as a bug")
    mode = "uninstall" if uninstall else "install"
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "node-agent"}
    digest = hashlib.sha256(build).hexdigest()
    role_name = f"kubensctl-{namespace}-node-agent"
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {
                    # The agent is privileged and uses hostPID: Pod Security admission must allow it here.
                    "pod-security.kubernetes.io/enforce": "privileged",
                    "app.kubernetes.io/name": APP,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": APP, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role_name, "labels": labels},
            # Nodes are cluster-scoped: the agent labels the node it runs on (a merge patch, nothing else).
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role_name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": APP, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "kubensctl-build",
                "namespace": namespace,
                "labels": labels,
                "annotations": {"kubensctl.io/build-sha256": digest},
            },
            "binaryData": {BUILD_KEY: base64.b64encode(build).decode("ascii")},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": APP, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {
                        "labels": labels,
                        # A new build or mode changes the template, so the DaemonSet rolls out again.
                        "annotations": {"kubensctl.io/build-sha256": digest, "kubensctl.io/mode": mode},
                    },
                    "spec": {
                        "serviceAccountName": APP,
                        "hostPID": True,
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [{"operator": "Exists"}],
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": "agent",
                                "image": image,
                                "command": ["python3", "-c", _BOOTSTRAP, f"{BUILD_DIR}/{BUILD_KEY}", mode],
                                "env": [
                                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                                ],
                                "securityContext": {"privileged": True},
                                # Ready once the node is done: `kubectl rollout status` then waits for all nodes.
                                "readinessProbe": {"exec": {"command": ["cat", DONE_FILE]}, "periodSeconds": 10},
                                "resources": {
                                    "requests": {"cpu": "10m", "memory": "32Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "volumeMounts": [{"name": "build", "mountPath": BUILD_DIR, "readOnly": True}],
                            }
                        ],
                        "volumes": [{"name": "build", "configMap": {"name": "kubensctl-build"}}],
                    },
                },
            },
        },
    ]


def cmd_daemonset(args: argparse.Namespace) -> int:
    docs = daemonset_manifests(args.namespace, args.image, build_zipapp(), args.uninstall)
    _emit_output(to_yaml_stream(docs), args.output)
    return 0


# --------------------------------------------------------------------------------------------------
# The DaemonSet's agent (runs in the container; stdlib only)
# --------------------------------------------------------------------------------------------------

# PID 1's namespaces, with the host's own environment rather than the container image's.
_NSENTER = (
    "nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
    "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
)  # fmt: skip
_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _log(msg: str) -> None:
    print(f"kubensctl-agent: {msg}", file=sys.stderr, flush=True)


def _host(argv: Sequence[str], stdin: Optional[bytes] = None) -> Tuple[int, str]:
    """Run ``argv`` in the host's namespaces (PID 1's), return (exit code, combined output)."""
    proc = subprocess.run(
        [*_NSENTER, *argv], input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def _host_write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.kubensctl-new"
    p, t = shlex.quote(path), shlex.quote(tmp)
    script = f'set -e; mkdir -p "$(dirname {p})"; cat > {t}; chmod {mode:o} {t}; mv -f {t} {p}'
    rc, out = _host(["sh", "-c", script], stdin=data)
    if rc != 0:
        raise KubensError(f"cannot write {path} on the host: {out.strip()}", "check the agent is privileged")


def _api_request(method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Call the Kubernetes API with the pod's service account (in-cluster), JSON in and out."""
    import ssl
    import urllib.request

    server = os.environ.get("KUBENSCTL_API_SERVER")
    context: Optional[ssl.SSLContext] = None
    if not server:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        context = ssl.create_default_context(cafile=f"{_SA_DIR}/ca.crt")
    token_file = os.environ.get("KUBENSCTL_TOKEN_FILE", f"{_SA_DIR}/token")
    with open(token_file, encoding="utf-8") as f:
        token = f.read().strip()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/merge-patch+json")
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        result: Dict[str, Any] = json.loads(resp.read() or b"{}")
        return result


def _mark_node(node: str, reboot_required: bool) -> None:
    value = "true" if reboot_required else None  # merge-patch null removes the label
    _api_request("PATCH", f"/api/v1/nodes/{urllib.parse.quote(node)}", {"metadata": {"labels": {REBOOT_LABEL: value}}})


def agent_main(argv: Sequence[str]) -> int:
    """The DaemonSet container's entry point: ``install`` or ``uninstall`` on this pod's node.

    1. copy the single-file build to the host, 2. run ``kubensctl install`` (or ``uninstall``) there with
    the host's python3 inside PID 1's namespaces, 3. ask ``kubensctl status`` whether the running
    kubelet matches the configuration (exit 0 encapsulated, 3 not), 4. when a reboot is needed, write
    kured's sentinel file and label the node ``kubensctl.io/reboot-required=true``; otherwise remove the
    label (the sentinel lives in /run and goes with the reboot). Then report ready and sleep: the next boot
    restarts the pod, which confirms and clears the mark. On an error it exits 1, so the kubelet retries
    with its back-off and the pod's log says why.
    """
    mode = argv[0] if argv else "install"
    build_path = os.environ.get("KUBENSCTL_BUILD", f"{BUILD_DIR}/{BUILD_KEY}")
    node = os.environ.get("NODE_NAME", "")
    once = os.environ.get("KUBENSCTL_AGENT_ONCE") == "1"
    if mode not in ("install", "uninstall") or not node:
        _log(f"usage: agent install|uninstall with NODE_NAME set (got {mode!r}, NODE_NAME={node!r})")
        return 2
    try:
        with open(build_path, "rb") as f:
            build = f.read()
        rc, out = _host(["sh", "-c", "command -v python3"])
        if rc != 0:
            raise KubensError("the host has no python3", "kubensctl runs on the node with Python >= 3.9")
        target = HOST_KUBENSCTL if mode == "install" else HOST_AGENT_COPY
        _host_write(target, build, 0o755)
        rc, out = _host(["python3", target, mode])
        _log(f"kubensctl {mode} on {node}: exit {rc}\n{out.rstrip()}")
        if rc != 0:
            raise KubensError(f"kubensctl {mode} failed on {node} (exit {rc})", "see the pod's log")
        status_rc, out = _host(["python3", target, "status"])
        _log(f"kubensctl status on {node}: exit {status_rc}")
        # 0 encapsulated, 3 not, 1 degraded (e.g. pinned but the kubelet outside): all settle at a reboot.
        if status_rc not in (0, 1, 3):
            raise KubensError(
                f"kubensctl status failed on {node} (exit {status_rc}): {out.strip()}", "see the pod's log"
            )
        reboot = status_rc != 3 if mode == "uninstall" else status_rc != 0
        if reboot:
            _host_write(REBOOT_SENTINEL, b"*** System restart required (kubensctl) ***\n", 0o644)
        else:
            _host(["rm", "-f", HOST_AGENT_COPY])
            if mode == "uninstall":
                _host(["rm", "-f", HOST_KUBENSCTL])
        _mark_node(node, reboot)
        _log(f"{node}: {'reboot required' if reboot else 'done'}")
        with open(os.environ.get("KUBENSCTL_DONE_FILE", DONE_FILE), "w", encoding="utf-8") as f:
            f.write("reboot-required\n" if reboot else "done\n")
    except (KubensError, OSError, KeyError) as e:
        _log(f"error: {e.line() if isinstance(e, KubensError) else e}")
        return 1
    while not once:
        time.sleep(3600)
    return 0


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "machineconfig",
        help="print OpenShift MachineConfigs that enable encapsulation (seed 7.4.2)",
        description="Print MachineConfigs that enable kubens.service on each pool. With no options: "
        "exactly the specification's 99-kubens-master and 99-kubens-worker.",
    )
    p.add_argument(
        "--role", action="append", metavar="ROLE", help="pool role (repeatable); replaces the default master and worker"
    )
    p.add_argument(
        "--ignition-version",
        default=DEFAULT_IGNITION_VERSION,
        metavar="VERSION",
        help=f"Ignition spec version ({', '.join(IGNITION_VERSIONS)}; default {DEFAULT_IGNITION_VERSION})",
    )
    p.add_argument(
        "--embed",
        action="store_true",
        help="also carry kubens.service, the drop-ins, kubensenter and kubensctl (for OS images without them)",
    )
    p.add_argument(
        "--format",
        choices=("yaml", "json", "butane"),
        default="yaml",
        help="yaml (default), json (a v1 List) or butane (variant openshift)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.set_defaults(func=cmd_machineconfig)

    d = sub.add_parser(
        "daemonset",
        help="print a DaemonSet that installs encapsulation on plain Kubernetes nodes",
        description="Print Namespace, ServiceAccount, RBAC, a ConfigMap with the kubensctl build and a "
        "privileged DaemonSet that runs 'kubensctl install' on every node and labels it "
        f"{REBOOT_LABEL}=true until it reboots. See docs/rollout.md.",
    )
    d.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        metavar="NS",
        help=f"namespace for the agent (default {DEFAULT_NAMESPACE})",
    )
    d.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        metavar="IMAGE",
        help=f"agent image with python3 and nsenter (default {DEFAULT_IMAGE})",
    )
    d.add_argument("--uninstall", action="store_true", help="the DaemonSet runs 'kubensctl uninstall' instead")
    d.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    d.set_defaults(func=cmd_daemonset)
