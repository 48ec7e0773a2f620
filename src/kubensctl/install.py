"""What kubensctl lays on a node, and install / uninstall.

Files (every path taken inside ``--root``):

* ``/etc/systemd/system/kubens.service`` — oneshot, RemainAfterExit, ordered before the Kubernetes units
  (so systemd stops it after them); start and stop are ``kubensctl start`` / ``kubensctl stop``.
* ``/usr/local/bin/kubensenter`` — ``kubensctl/enter.py`` as one stdlib-only script run by the system
  ``/usr/bin/python3`` in isolated mode without site (``-IS``): nodes need no pip. It carries its source
  and that source compiled by the interpreter running install (see ``kubensenter_script``).
* ``/usr/local/bin/kubensctl`` — a zipapp of the node side (this package), same interpreter.
* ``/etc/systemd/system/UNIT.d/01-kubens.conf`` — for every wrapped or ``--env`` unit:
  ``After=kubens.service`` and ``EnvironmentFile=-/run/kubens/env`` (the RHCOS shape; programs such as
  CRI-O and kubelet built with containers/kubensmnt join ``$KUBENSMNT`` themselves).
* ``/etc/systemd/system/UNIT.d/99-kubens-wrapper.conf`` — for every wrapped unit (see ``units.wrap``).
* with ``--metrics``: ``/etc/systemd/system/kubensctl-metrics.{service,timer}`` (``metrics.metrics_units``), the
  timer enabled: it refreshes node_exporter's textfile ``metrics.DEFAULT_TEXTFILE`` every minute.
* ``/var/lib/kubensctl/install.json`` — the record of what install laid, so uninstall removes exactly it
  (plus the textfile the timer wrote and the directories install created for it).

The static part (everything but the wrapper drop-ins, which depend on the node's own unit files) comes
from ``node_files()``; MachineConfig ``--embed`` carries the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import io
import json
import marshal
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from importlib.util import MAGIC_NUMBER
from typing import Dict, List, Optional, Sequence

from kubensctl import __version__, units
from kubensctl.errors import KubensError, UnitError, UsageError
from kubensctl.fsutil import atomic_write

KUBENS_UNIT = "kubens.service"
UNIT_DIR = "/etc/systemd/system"
BIN_DIR = "/usr/local/bin"
KUBENSENTER = f"{BIN_DIR}/kubensenter"
KUBENSCTL = f"{BIN_DIR}/kubensctl"
RECORD = "/var/lib/kubensctl/install.json"
ENV_DROPIN = "01-kubens.conf"
RUNTIME_DIR = "/run/kubens"
NETNS_DIR = "/run/netns"
INTERPRETER = "/usr/bin/python3"
WANTED_BY = "multi-user.target"
METRICS_TIMER = "kubensctl-metrics.timer"  # metrics.TIMER_NAME (that module is imported only for --metrics)

# Units wrapped by default when present, runtimes first: that is also the restart order for --now,
# so kubelet never comes up in the namespace before its runtime.
RUNTIME_UNITS = (
    "crio.service",
    "containerd.service",
    "k3s.service",
    "k3s-agent.service",
    "rke2-server.service",
    "rke2-agent.service",
)
DEFAULT_WRAP_UNITS = (*RUNTIME_UNITS, "kubelet.service")


@dataclass(frozen=True)
class NodeFile:
    path: str
    mode: int
    data: bytes
    kind: str  # "unit" | "dropin" | "file"
    unit: Optional[str] = None
    dropin: Optional[str] = None


def kubens_unit_text(kubensctl: str = KUBENSCTL) -> str:
    before = " ".join(DEFAULT_WRAP_UNITS)
    return f"""# Written by kubensctl {__version__}: pins the Kubernetes mount namespace at {RUNTIME_DIR}/mnt.
[Unit]
Description=Kubernetes mount namespace (kubensctl)
Documentation=man:nsenter(1) man:mount_namespaces(7)
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service
Before={before}
Before=shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
# The pin: /run/kubens bind-mounted unbindable, /run/kubens/mnt a slave namespace, rshared inside.
# /run/netns is made a shared mount point first: otherwise a later `ip netns add` on the host mounts
# it and shadows the network namespaces the runtime had already bound there.
ExecStart={kubensctl} start --runtime-dir {RUNTIME_DIR} --netns-dir {NETNS_DIR}
# Refuses while anything still runs inside: a restart under a running runtime keeps the pin.
ExecStop={kubensctl} stop --runtime-dir {RUNTIME_DIR}

[Install]
WantedBy={WANTED_BY}
"""


def env_dropin_text() -> str:
    return f"""# Written by kubensctl {__version__}: start after the mount namespace is pinned, with KUBENSMNT set.
[Unit]
After={KUBENS_UNIT}
Wants={KUBENS_UNIT}

[Service]
EnvironmentFile=-{RUNTIME_DIR}/env
"""


def _package_source(name: str) -> bytes:
    return resources.files("kubensctl").joinpath(name).read_bytes()


# The laid kubensenter (kubensenter_script). A script executed directly is compiled on every run (only
# imported modules get cached bytecode) and compiling enter.py costs ~1 ms, a sixth of the whole run. So
# the file also carries enter.py compiled by the interpreter running install (on a node: the system
# python3 running the kubensctl zipapp), marshalled and hex-encoded, and runs that when the interpreter's
# bytecode magic is the one it was compiled for. Otherwise (a Python upgrade; a file generated off the
# node by another Python, e.g. for a MachineConfig) it compiles the verbatim source it carries too: as
# slow as the plain script, never wrong. Hex rather than base64 or a bytes repr: bytes.fromhex is a
# builtin (binascii is a shared library on RHEL, 0.5-1 ms to import) and a plain ASCII literal is the
# cheapest to tokenize (benchmarks/README.md). The stub stays stdlib-only and Python 3.6+.
_STANDALONE_HEAD = """\
#!{interpreter} -IS
# kubensenter, laid by kubensctl {version}. Generated from kubensctl/enter.py: rerun `kubensctl install`
# rather than editing it. _SOURCE is enter.py verbatim; _CODE is that source compiled by the Python that
# generated this file (marshal, hex), run instead of compiling _SOURCE at every start (~1 ms) when this
# interpreter's bytecode magic is _MAGIC. Any other Python compiles _SOURCE: slower, same behaviour.


def _kubensenter_code(path):
    import marshal

    try:
        from _frozen_importlib_external import MAGIC_NUMBER  # loaded at start-up: costs nothing
    except ImportError:
        MAGIC_NUMBER = None
    if MAGIC_NUMBER == _MAGIC:
        try:
            code = marshal.loads(bytes.fromhex(_CODE))
        except Exception:  # damaged (ValueError, EOFError, SystemError, ...): compile the source
            pass
        else:
            try:
                import _imp

                _imp._fix_co_filename(code, path)  # tracebacks name this file wherever it lies
            except (AttributeError, ImportError):
                pass
            return code
    # _LINE blank lines first, in both cases: tracebacks give line numbers in this file.
    return compile("\\n" * _LINE + _SOURCE, path, "exec", dont_inherit=True)


_MAGIC = {magic!r}
_LINE = {line}
"""
_STANDALONE_TAIL = """
_code = _kubensenter_code(globals().get("__file__") or {path!r})
del _kubensenter_code, _MAGIC, _LINE, _SOURCE, _CODE
exec(globals().pop("_code"))  # in this module's namespace: __name__ == "__main__", __doc__ is enter.py's
"""
_HEX_LINE = 128
_NO_MAGIC = b"\x00\x00\r\n"  # no interpreter's bytecode magic (CPython 3's are 3000 and up)


def kubensenter_script(*, force_fallback: bool = False) -> bytes:
    """The standalone kubensenter: enter.py for the system python3 (isolated, no site) with its bytecode.

    One stdlib-only file, deterministic for a given interpreter (byte-identical between calls and between
    processes). ``force_fallback`` labels the bytecode with a magic no interpreter has, so that the file
    always compiles its source (for tests and benchmarks; never laid).
    """
    return _standalone(_NO_MAGIC if force_fallback else MAGIC_NUMBER)


@functools.cache
def _standalone(magic: bytes) -> bytes:
    source = _package_source("enter.py").decode("utf-8")
    literal = "r'''" + source + "'''"
    if ast.literal_eval(literal) != source:
        raise RuntimeError("kubensctl/enter.py does not fit in a raw ''' string (a ''' or a trailing backslash)")
    # _SOURCE's first line is the line after the head, so the line numbers of enter.py compiled behind
    # that many blank lines are the laid file's.
    line = _STANDALONE_HEAD.format(interpreter=INTERPRETER, version=__version__, magic=magic, line=0).count("\n")
    head = _STANDALONE_HEAD.format(interpreter=INTERPRETER, version=__version__, magic=magic, line=line)
    code = compile("\n" * line + source, KUBENSENTER, "exec", dont_inherit=True, optimize=0)
    blob = marshal.dumps(code).hex()
    hexed = "\n".join(blob[i : i + _HEX_LINE] for i in range(0, len(blob), _HEX_LINE))
    tail = _STANDALONE_TAIL.format(path=KUBENSENTER)
    return f'{head}_SOURCE = {literal}\n_CODE = """\n{hexed}\n"""\n{tail}'.encode()


_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)


def build_zipapp() -> bytes:
    """A single-file build of the node side: ``python3 kubensctl.pyz`` or executable with its shebang.

    Deterministic (sorted entries, fixed timestamps), so two builds of one version are byte-identical.
    """
    pkg = resources.files("kubensctl")
    names = sorted(e.name for e in pkg.iterdir() if e.name.endswith(".py") or e.name == "py.typed")
    buf = io.BytesIO()
    buf.write(f"#!{INTERPRETER} -I\n".encode())
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            info = zipfile.ZipInfo(f"kubensctl/{name}", _ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, pkg.joinpath(name).read_bytes())
        info = zipfile.ZipInfo("__main__.py", _ZIP_EPOCH)
        info.external_attr = 0o644 << 16
        zf.writestr(info, b"import sys\nfrom kubensctl.cli import main\nsys.exit(main())\n")
    return buf.getvalue()


def node_files(
    wrap_units: Sequence[str] = (),
    env_units: Sequence[str] = (),
    kubensenter_path: str = KUBENSENTER,
) -> List[NodeFile]:
    """Everything install lays except the wrapper drop-ins (those depend on the node's unit files)."""
    files = [
        NodeFile(f"{UNIT_DIR}/{KUBENS_UNIT}", 0o644, kubens_unit_text().encode(), "unit", unit=KUBENS_UNIT),
        NodeFile(kubensenter_path, 0o755, kubensenter_script(), "file"),
        NodeFile(KUBENSCTL, 0o755, build_zipapp(), "file"),
    ]
    seen = []
    for u in (*wrap_units, *env_units):
        name = units.normalize_unit_name(u)
        if name in seen:
            continue
        seen.append(name)
        files.append(
            NodeFile(f"{UNIT_DIR}/{name}.d/{ENV_DROPIN}", 0o644, env_dropin_text().encode(), "dropin", name, ENV_DROPIN)
        )
    return files


# ---- install / uninstall -------------------------------------------------------------------------


def _host(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return _sha(f.read())
    except FileNotFoundError:
        return None


@dataclass
class Record:
    version: str = __version__
    files: Dict[str, str] = field(default_factory=dict)  # path -> sha256
    links: List[str] = field(default_factory=list)  # enablement symlinks we made
    wrapped: List[str] = field(default_factory=list)
    env: List[str] = field(default_factory=list)
    generated: List[str] = field(default_factory=list)  # files our units write (removed whatever they hold)
    dirs: List[str] = field(default_factory=list)  # directories install created (removed when empty)

    @classmethod
    def load(cls, root: str) -> Optional[Record]:
        try:
            with open(_host(root, RECORD), encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise KubensError(f"cannot read the install record {RECORD}: {e}", "fix or remove the file") from None
        return cls(
            doc.get("version", "?"),
            dict(doc.get("files", {})),
            list(doc.get("links", [])),
            list(doc.get("wrapped", [])),
            list(doc.get("env", [])),
            list(doc.get("generated", [])),
            list(doc.get("dirs", [])),
        )

    def save(self, root: str) -> None:
        path = _host(root, RECORD)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        doc: Dict[str, object] = {
            "version": self.version,
            "files": self.files,
            "links": self.links,
            "wrapped": self.wrapped,
            "env": self.env,
        }
        # Only when used, so the record of an install without --metrics keeps its earlier shape.
        if self.generated:
            doc["generated"] = self.generated
        if self.dirs:
            doc["dirs"] = self.dirs
        atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", 0o644)


@dataclass
class Outcome:
    changes: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _present(unit: str, root: str) -> bool:
    try:
        units.find_unit(unit, root)
    except (UnitError, UsageError):
        return False
    return True


def _systemctl(root: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if root not in ("", "/"):
        raise AssertionError("systemctl must not run with --root")
    if shutil.which("systemctl") is None:
        raise KubensError("systemctl not found: this node does not run systemd", "use --root DIR to lay files only")
    r = subprocess.run(["systemctl", *args], text=True, capture_output=True)
    if check and r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise KubensError(f"systemctl {' '.join(args)} failed: {msg}", f"see 'journalctl -u {args[-1]}'")
    return r


def _wants_link(root: str) -> str:
    return f"{UNIT_DIR}/{WANTED_BY}.wants/{KUBENS_UNIT}"


def _enable_by_hand(root: str, unit: str, target: str, out: Outcome) -> str:
    """``systemctl enable`` under ``--root``: the ``TARGET.wants/UNIT`` symlink. Returns its path."""
    link = f"{UNIT_DIR}/{target}.wants/{unit}"
    host = _host(root, link)
    current = os.readlink(host) if os.path.islink(host) else None
    if current != f"{UNIT_DIR}/{unit}":
        os.makedirs(os.path.dirname(host), exist_ok=True)
        tmp = host + ".kubensctl-tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(f"{UNIT_DIR}/{unit}", tmp)
        os.replace(tmp, host)
        out.changes.append(f"enabled {unit} ({link})")
    return link


def metrics_files(kubensctl: str = KUBENSCTL) -> List[NodeFile]:
    """``install --metrics``: kubensctl-metrics.service and .timer (contents from ``metrics.metrics_units``)."""
    from kubensctl import metrics  # lazily: only --metrics needs it (manifests import this module)

    return [
        NodeFile(f"{UNIT_DIR}/{name}", 0o644, text.encode(), "unit", unit=name)
        for name, text in metrics.metrics_units(kubensctl, metrics.DEFAULT_TEXTFILE).items()
    ]


def _make_dirs(root: str, path: str, record: Record, out: Outcome) -> None:
    """Create ``path`` (in-root absolute) and its missing parents, recording each one made."""
    missing = []
    cur = path
    while cur not in ("", "/") and not os.path.isdir(_host(root, cur)):
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        os.mkdir(_host(root, d), 0o755)
        if d not in record.dirs:
            record.dirs.append(d)
        out.changes.append(f"created {d}")


def install(
    root: str = "/",
    wrap: Optional[Sequence[str]] = None,
    env: Sequence[str] = (),
    no_wrap: bool = False,
    enable: bool = True,
    now: bool = False,
    extra_files: Sequence[NodeFile] = (),
    metrics: bool = False,
) -> Outcome:
    root = os.path.abspath(root)
    on_host = root == "/"
    if now and not on_host:
        raise UsageError("--now cannot be combined with --root", "drop --now: with --root nothing is started")
    if now and not enable:
        raise UsageError("--now needs the unit enabled", "drop --no-enable")
    out = Outcome()
    env_units = [units.normalize_unit_name(u) for u in env]
    if no_wrap:
        wrap_units: List[str] = []
    elif wrap:
        wrap_units = [units.normalize_unit_name(u) for u in wrap]
    elif env_units:
        wrap_units = []
    else:
        wrap_units = [u for u in DEFAULT_WRAP_UNITS if _present(u, root)]
        if not wrap_units:
            out.notes.append(
                "no Kubernetes unit found to wrap (" + ", ".join(DEFAULT_WRAP_UNITS) + "); "
                "rerun with --wrap UNIT once they are installed"
            )
    # Check every unit before writing anything: an unknown unit is an error, nothing half-laid.
    for u in wrap_units + env_units:
        units.find_unit(u, root)

    files = node_files(wrap_units, env_units) + list(extra_files)
    if metrics:
        files += metrics_files()
    record = Record.load(root) or Record()
    for f in files:
        host = _host(root, f.path)
        data_sha = _sha(f.data)
        if _file_sha(host) != data_sha or (os.stat(host).st_mode & 0o7777) != f.mode:
            os.makedirs(os.path.dirname(host), mode=0o755, exist_ok=True)
            atomic_write(host, f.data, f.mode)
            out.changes.append(f"wrote {f.path}")
        record.files[f.path] = data_sha

    if wrap_units:
        result = units.wrap(wrap_units, root=root, kubensenter=KUBENSENTER)
        for c in result.changes:
            if c.changed:
                out.changes.append(c.describe())
            dropin = _host(root, c.path)
            sha = _file_sha(dropin)
            if sha is not None:
                record.files[c.path] = sha
        record.wrapped = sorted(set(record.wrapped) | set(wrap_units))
    record.env = sorted(set(record.env) | set(env_units))

    if enable:
        link = _wants_link(root)
        if on_host:
            if _systemctl(root, "is-enabled", KUBENS_UNIT, check=False).stdout.strip() != "enabled":
                _systemctl(root, "daemon-reload")
                _systemctl(root, "enable", KUBENS_UNIT)
                out.changes.append(f"enabled {KUBENS_UNIT}")
        else:
            _enable_by_hand(root, KUBENS_UNIT, WANTED_BY, out)
        if link not in record.links:
            record.links.append(link)
    if metrics:
        _install_metrics(root, enable, record, out)
    record.version = __version__
    record.save(root)

    if on_host and out.changes:
        _systemctl(root, "daemon-reload")
    if now:
        _systemctl(root, "start", KUBENS_UNIT)
        out.changes.append(f"started {KUBENS_UNIT}")
        order = [u for u in DEFAULT_WRAP_UNITS if u in wrap_units or u in env_units]
        order += [u for u in wrap_units + env_units if u not in order]
        for u in order:
            if _systemctl(root, "is-active", u, check=False).stdout.strip() in ("active", "activating"):
                _systemctl(root, "restart", u)
                out.changes.append(f"restarted {u}")
        if metrics:
            _start_metrics_timer(out)
    elif enable:
        out.notes.append(
            f"{KUBENS_UNIT} is enabled: encapsulation takes effect at the next reboot "
            "(or now: kubensctl install --now, which restarts the wrapped units)"
        )
        if metrics and on_host and _systemctl(root, "is-active", METRICS_TIMER, check=False).stdout.strip() != "active":
            out.notes.append(f"{METRICS_TIMER} is enabled: it starts at the next boot (or now: with --now)")
    return out


def _install_metrics(root: str, enable: bool, record: Record, out: Outcome) -> None:
    """The textfile's directory, and the timer enabled. The unit files are laid already."""
    from kubensctl import metrics

    _make_dirs(root, os.path.dirname(metrics.DEFAULT_TEXTFILE), record, out)
    if metrics.DEFAULT_TEXTFILE not in record.generated:
        record.generated.append(metrics.DEFAULT_TEXTFILE)
    if not enable:
        return
    timer = metrics.TIMER_NAME
    link = f"{UNIT_DIR}/timers.target.wants/{timer}"
    if root == "/":
        if _systemctl(root, "is-enabled", timer, check=False).stdout.strip() != "enabled":
            _systemctl(root, "daemon-reload")
            _systemctl(root, "enable", timer)
            out.changes.append(f"enabled {timer}")
    else:
        _enable_by_hand(root, timer, "timers.target", out)
    if link not in record.links:
        record.links.append(link)


def _start_metrics_timer(out: Outcome) -> None:
    """``--now``: start the timer (after kubens.service, so its first refresh sees the pin)."""
    from kubensctl import metrics

    timer = metrics.TIMER_NAME
    if _systemctl("/", "is-active", timer, check=False).stdout.strip() != "active":
        _systemctl("/", "start", timer)
        out.changes.append(f"started {timer} (refreshes {metrics.DEFAULT_TEXTFILE} every minute)")


def _uninstall_metrics(record: Record, out: Outcome) -> None:
    """On the host: stop and disable the metrics timer (and a refresh under way) before its files go."""
    from kubensctl import metrics

    timer, service = metrics.TIMER_NAME, metrics.SERVICE_NAME
    if f"{UNIT_DIR}/{timer}" not in record.files:
        return
    if _systemctl("/", "is-enabled", timer, check=False).stdout.strip() == "enabled":
        _systemctl("/", "disable", timer)
        out.changes.append(f"disabled {timer}")
    if _systemctl("/", "is-active", timer, check=False).stdout.strip() in ("active", "activating"):
        _systemctl("/", "stop", timer)
        out.changes.append(f"stopped {timer}")
    _systemctl("/", "stop", service, check=False)


def uninstall(root: str = "/") -> Outcome:
    root = os.path.abspath(root)
    on_host = root == "/"
    out = Outcome()
    record = Record.load(root)
    if record is None:
        out.notes.append(f"nothing to uninstall: no install record at {RECORD}")
        return out
    if on_host and _systemctl(root, "is-enabled", KUBENS_UNIT, check=False).stdout.strip() == "enabled":
        _systemctl(root, "disable", KUBENS_UNIT)
        out.changes.append(f"disabled {KUBENS_UNIT}")
    if on_host:
        _uninstall_metrics(record, out)
    for link in record.links:
        host = _host(root, link)
        if os.path.islink(host):
            os.unlink(host)
            out.changes.append(f"removed {link}")
            if os.path.dirname(host).endswith(".wants"):
                try:
                    os.rmdir(os.path.dirname(host))  # only when it is empty now
                except OSError:
                    pass
    for path, sha in sorted(record.files.items()):
        host = _host(root, path)
        current = _file_sha(host)
        if current is None:
            continue
        if current != sha:
            out.notes.append(f"kept {path}: changed since install (remove it by hand if unwanted)")
            continue
        os.unlink(host)
        out.changes.append(f"removed {path}")
        parent = os.path.dirname(host)
        if parent.endswith(".d"):
            try:
                os.rmdir(parent)
            except OSError:
                pass
    for path in record.generated:
        host = _host(root, path)
        if os.path.lexists(host):
            os.unlink(host)
            out.changes.append(f"removed {path}")
    os.unlink(_host(root, RECORD))
    try:
        os.rmdir(os.path.dirname(_host(root, RECORD)))
    except OSError:
        pass
    for d in sorted(record.dirs, key=lambda p: -p.count("/")):
        try:
            os.rmdir(_host(root, d))
        except FileNotFoundError:
            continue
        except OSError:
            out.notes.append(f"kept {d}: not empty")
            continue
        out.changes.append(f"removed {d}")
    if on_host:
        _systemctl(root, "daemon-reload")
        out.notes.append("reboot to leave the namespace (running units keep the one they are in)")
    return out


# ---- CLI -----------------------------------------------------------------------------------------


def _print(out: Outcome, idle: str) -> None:
    for c in out.changes:
        print(c)
    if not out.changes:
        print(idle)
    for n in out.notes:
        print(f"note: {n}")


def _cmd_install(args: argparse.Namespace) -> int:
    out = install(
        args.root, args.wrap, args.env or (), args.no_wrap, not args.no_enable, args.now, metrics=args.metrics
    )
    _print(out, "nothing changed: already installed")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    _print(uninstall(args.root), "nothing changed")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "install",
        help="lay kubens.service, kubensenter, kubensctl and drop-ins on this node (or under --root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default="/", metavar="DIR", help="lay files under DIR; touch nothing else, no systemctl")
    p.add_argument("--wrap", action="append", metavar="UNIT", help="wrap UNIT's ExecStart in kubensenter (repeatable)")
    p.add_argument("--env", action="append", metavar="UNIT", help="add the RHCOS-style 01-kubens.conf to UNIT")
    p.add_argument("--no-wrap", action="store_true", help="wrap nothing")
    p.add_argument("--no-enable", action="store_true", help="do not enable kubens.service (nor the metrics timer)")
    p.add_argument(
        "--now",
        action="store_true",
        help="start kubens.service now and restart the wrapped units (and start the metrics timer)",
    )
    p.add_argument(
        "--metrics",
        action="store_true",
        help="also lay and enable kubensctl-metrics.timer, which refreshes node_exporter's textfile every minute",
    )
    p.set_defaults(func=_cmd_install)
    p = sub.add_parser("uninstall", help="remove exactly what install laid and disable kubens.service")
    p.add_argument("--root", default="/", metavar="DIR", help="act under DIR; no systemctl")
    p.set_defaults(func=_cmd_uninstall)


__all__ = ["NodeFile", "build_zipapp", "install", "kubensenter_script", "metrics_files", "node_files", "uninstall"]
