"""install / uninstall under --root: what is laid, idempotence, the record, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List

import pytest

from kubensctl import install
from nstest import env_with_src


def kctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubensctl", *args], text=True, capture_output=True, env=env_with_src(), timeout=60
    )


def unit(root: Path, name: str, text: str, d: str = "usr/lib/systemd/system") -> None:
    p = root / d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    unit(tmp_path, "kubelet.service", "[Service]\nExecStart=/usr/bin/kubelet $KUBELET_ARGS\n")
    unit(tmp_path, "crio.service", "[Service]\nType=notify\nExecStart=/usr/bin/crio $CRIO_FLAGS\n")
    return tmp_path


def tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_install_default_wraps_present_units(node: Path) -> None:
    r = kctl("install", "--root", str(node))
    assert r.returncode == 0, r.stderr
    laid = tree(node)
    for path in [
        "etc/systemd/system/kubens.service",
        "etc/systemd/system/multi-user.target.wants/kubens.service",
        "etc/systemd/system/kubelet.service.d/99-kubens-wrapper.conf",
        "etc/systemd/system/kubelet.service.d/01-kubens.conf",
        "etc/systemd/system/crio.service.d/99-kubens-wrapper.conf",
        "usr/local/bin/kubensenter",
        "usr/local/bin/kubensctl",
        "var/lib/kubensctl/install.json",
    ]:
        assert path in laid
    assert not (node / "etc/systemd/system/containerd.service.d").exists()
    assert "reboot" in r.stdout
    wrapper = (node / "etc/systemd/system/crio.service.d/99-kubens-wrapper.conf").read_text()
    assert "ExecStart=/usr/local/bin/kubensenter /usr/bin/crio $CRIO_FLAGS" in wrapper
    assert os.stat(node / "usr/local/bin/kubensenter").st_mode & 0o777 == 0o755
    assert (node / "usr/local/bin/kubensenter").read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")


def test_install_idempotent_and_uninstall_exact(node: Path) -> None:
    before = tree(node)
    assert kctl("install", "--root", str(node)).returncode == 0
    again = kctl("install", "--root", str(node))
    assert again.returncode == 0 and "nothing changed" in again.stdout
    r = kctl("uninstall", "--root", str(node))
    assert r.returncode == 0 and "removed /etc/systemd/system/kubens.service" in r.stdout
    assert tree(node) == before
    r = kctl("uninstall", "--root", str(node))
    assert r.returncode == 0 and "nothing to uninstall" in r.stdout


def test_uninstall_keeps_files_changed_since(node: Path) -> None:
    kctl("install", "--root", str(node))
    (node / "etc/systemd/system/kubens.service").write_text("# mine\n")
    r = kctl("uninstall", "--root", str(node))
    assert "kept /etc/systemd/system/kubens.service" in r.stdout
    assert (node / "etc/systemd/system/kubens.service").read_text() == "# mine\n"


def test_env_units_only(node: Path) -> None:
    r = kctl("install", "--root", str(node), "--env", "kubelet", "--env", "crio", "--no-enable")
    assert r.returncode == 0, r.stderr
    laid = tree(node)
    assert "etc/systemd/system/kubelet.service.d/01-kubens.conf" in laid
    assert not [p for p in laid if "wrapper" in p or "wants" in p]
    text = (node / "etc/systemd/system/crio.service.d/01-kubens.conf").read_text()
    assert "After=kubens.service" in text and "EnvironmentFile=-/run/kubens/env" in text


def test_unknown_unit_writes_nothing(node: Path) -> None:
    before = tree(node)
    r = kctl("install", "--root", str(node), "--wrap", "nope.service")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope.service" in r.stderr
    assert tree(node) == before


def test_now_with_root_is_usage_error(node: Path) -> None:
    r = kctl("install", "--root", str(node), "--now")
    assert r.returncode == 2 and "--root" in r.stderr


def test_node_files_match_install(node: Path) -> None:
    install.install(str(node), env=["kubelet", "crio"], no_wrap=True)
    for f in install.node_files(env_units=["kubelet.service", "crio.service"]):
        laid = node / f.path.lstrip("/")
        assert laid.read_bytes() == f.data, f.path
        assert os.stat(laid).st_mode & 0o7777 == f.mode


def test_zipapp_is_deterministic_and_runs(tmp_path: Path) -> None:
    a, b = install.build_zipapp(), install.build_zipapp()
    assert a == b
    path = tmp_path / "kubensctl"
    path.write_bytes(a)
    with zipfile.ZipFile(path) as zf:
        assert "kubensctl/cli.py" in zf.namelist() and "__main__.py" in zf.namelist()
    r = subprocess.run([sys.executable, str(path), "--version"], text=True, capture_output=True)
    assert r.returncode == 0 and r.stdout.startswith("kubensctl ")


def test_kubens_unit_orders_before_kubernetes_units() -> None:
    text = install.kubens_unit_text()
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text
    assert "Before=crio.service containerd.service" in text and "kubelet.service" in text
    assert "ExecStart=/usr/local/bin/kubensctl start --runtime-dir /run/kubens --netns-dir /run/netns" in text
    assert "ExecStop=/usr/local/bin/kubensctl stop --runtime-dir /run/kubens" in text


# ---- the laid kubensenter: enter.py plus its bytecode for this interpreter, source as the fallback ----


def _laid(tmp_path: Path, data: bytes, name: str = "kubensenter") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The interpreter that generated the script (same bytecode magic), isolated as the shebang says.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEFAULT_KUBENSMNT": str(script) + ".nothing"}
    return subprocess.run([sys.executable, "-IS", str(script), *args], text=True, capture_output=True, env=env)


def test_kubensenter_script_is_deterministic() -> None:
    a = install.kubensenter_script()
    assert a == install.kubensenter_script()
    code = "import sys\nfrom kubensctl import install\nsys.stdout.buffer.write(install.kubensenter_script())\n"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env_with_src(), check=True)
    assert other.stdout == a  # another process (other interned strings, other hash seed): same bytes
    assert a.startswith(b"#!/usr/bin/python3 -IS\n")
    assert install.kubensenter_script(force_fallback=True) != a
    compile(a, "kubensenter", "exec")  # Python syntax


def test_kubensenter_script_carries_enter_py_at_its_own_line_numbers() -> None:
    """Tracebacks name lines of the laid file; the source it carries sits at exactly those lines."""
    text = install.kubensenter_script().decode()
    lines = text.splitlines()
    offset = int(next(line for line in lines if line.startswith("_LINE = ")).split("=")[1])
    enter = (Path(install.__file__).parent / "enter.py").read_text().splitlines()
    assert lines[offset] == "_SOURCE = r'''" + enter[0]
    assert lines[offset + 1 : offset + len(enter)] == enter[1:]


@pytest.mark.parametrize("fallback", [False, True], ids=["bytecode", "fallback"])
def test_kubensenter_script_behaves_as_enter_py(tmp_path: Path, fallback: bool) -> None:
    from kubensctl import enter

    script = _laid(tmp_path, install.kubensenter_script(force_fallback=fallback))
    for flag in ("-h", "--help"):
        r = _run(script, flag)
        assert (r.returncode, r.stdout, r.stderr) == (0, enter._usage(), "")
    r = _run(script, "--bogus")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "kubensenter: unknown option --bogus (see kubensenter --help)\n"
    r = _run(script, "no-such-command-kubens")
    assert (r.returncode, r.stderr) == (127, "kubensenter: no-such-command-kubens: command not found\n")
    r = _run(script, "sh", "-c", 'echo "$0" ok; exit 3')
    assert (r.returncode, r.stdout, r.stderr) == (3, "sh ok\n", "")


@pytest.mark.parametrize("fallback", [False, True], ids=["bytecode", "fallback"])
def test_kubensenter_script_runs_the_path_its_magic_says(tmp_path: Path, fallback: bool) -> None:
    """Tamper with one half: the same interpreter runs the bytecode, another magic compiles the source."""
    text = install.kubensenter_script(force_fallback=fallback).decode()
    head, rest = text.split("_SOURCE = r'''", 1)
    source, tail = rest.split("'''\n_CODE = ", 1)
    tampered = source.replace("Usage: kubensenter", "Usage: kubensenter-from-source", 1)
    assert tampered != source
    script = _laid(tmp_path, f"{head}_SOURCE = r'''{tampered}'''\n_CODE = {tail}".encode())
    r = _run(script, "--help")
    assert r.returncode == 0, r.stderr
    assert ("Usage: kubensenter-from-source" in r.stdout) == fallback


def test_kubensenter_script_survives_bad_bytecode(tmp_path: Path) -> None:
    """Right magic, damaged bytecode: compile the source, never crash."""
    text = install.kubensenter_script().decode()
    head, code = text.split('_CODE = """\n', 1)
    script = _laid(tmp_path, f'{head}_CODE = """\ne3\n{code}'.encode())
    r = _run(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith("kubensenter: run a command"), r.stderr


# ---- install --metrics: the textfile timer, under --root ----------------------------------------

TIMER_LINK = "etc/systemd/system/timers.target.wants/kubensctl-metrics.timer"
TEXTFILE_DIR = "var/lib/node_exporter/textfile_collector"


@pytest.fixture
def var_lib(node: Path) -> Path:
    (node / "var/lib").mkdir(parents=True)
    return node


def test_install_metrics_lays_and_enables_the_timer(var_lib: Path) -> None:
    from kubensctl import metrics

    node = var_lib
    r = kctl("install", "--root", str(node), "--metrics")
    assert r.returncode == 0, r.stderr
    for name, text in metrics.metrics_units().items():
        laid = node / "etc/systemd/system" / name
        assert laid.read_text() == text
        assert os.stat(laid).st_mode & 0o7777 == 0o644
        assert f"wrote /etc/systemd/system/{name}" in r.stdout
    link = node / TIMER_LINK
    assert os.readlink(link) == "/etc/systemd/system/kubensctl-metrics.timer"
    assert f"enabled kubensctl-metrics.timer (/{TIMER_LINK})" in r.stdout
    assert (node / TEXTFILE_DIR).is_dir() and f"created /{TEXTFILE_DIR}" in r.stdout
    service = (node / "etc/systemd/system/kubensctl-metrics.service").read_text()
    assert "ExecStart=/usr/local/bin/kubensctl metrics --textfile /var/lib/node_exporter/textfile_collector/kubensctl.prom" in service
    doc = json.loads((node / "var/lib/kubensctl/install.json").read_text())
    assert "/etc/systemd/system/kubensctl-metrics.service" in doc["files"]
    assert "/etc/systemd/system/kubensctl-metrics.timer" in doc["files"]
    assert f"/{TIMER_LINK}" in doc["links"]
    assert doc["generated"] == ["/var/lib/node_exporter/textfile_collector/kubensctl.prom"]
    assert doc["dirs"] == ["/var/lib/node_exporter", "/var/lib/node_exporter/textfile_collector"]


def test_install_metrics_idempotent_and_uninstall_exact(var_lib: Path) -> None:
    node = var_lib

    def everything() -> List[str]:
        return sorted(str(p.relative_to(node)) for p in node.rglob("*"))

    # install (with or without --metrics) leaves the directories it laid files in (etc/systemd/system,
    # usr/local/bin); the ones it made only for the textfile go.
    assert kctl("install", "--root", str(node)).returncode == 0
    assert kctl("uninstall", "--root", str(node)).returncode == 0
    before = everything()
    assert kctl("install", "--root", str(node), "--metrics").returncode == 0
    again = kctl("install", "--root", str(node), "--metrics")
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout
    # What the timer's service writes goes with uninstall too, whatever it holds.
    (node / TEXTFILE_DIR / "kubensctl.prom").write_text("kubensctl_info 1\n")
    r = kctl("uninstall", "--root", str(node))
    assert r.returncode == 0, r.stderr
    for line in [
        "removed /etc/systemd/system/kubensctl-metrics.service",
        "removed /etc/systemd/system/kubensctl-metrics.timer",
        f"removed /{TIMER_LINK}",
        "removed /var/lib/node_exporter/textfile_collector/kubensctl.prom",
        "removed /var/lib/node_exporter",
    ]:
        assert line in r.stdout
    assert "note:" not in r.stdout
    assert everything() == before


def test_install_metrics_keeps_a_textfile_directory_it_did_not_make(node: Path) -> None:
    (node / TEXTFILE_DIR).mkdir(parents=True)
    (node / TEXTFILE_DIR / "other.prom").write_text("other 1\n")
    r = kctl("install", "--root", str(node), "--metrics")
    assert r.returncode == 0 and "created" not in r.stdout
    doc = json.loads((node / "var/lib/kubensctl/install.json").read_text())
    assert "dirs" not in doc
    r = kctl("uninstall", "--root", str(node))
    assert r.returncode == 0
    assert sorted(p.name for p in (node / TEXTFILE_DIR).iterdir()) == ["other.prom"]


def test_install_metrics_no_enable_lays_without_link(node: Path) -> None:
    r = kctl("install", "--root", str(node), "--metrics", "--no-enable")
    assert r.returncode == 0, r.stderr
    assert (node / "etc/systemd/system/kubensctl-metrics.timer").is_file()
    assert not (node / TIMER_LINK).exists() and not (node / "etc/systemd/system/timers.target.wants").exists()


def test_install_without_metrics_has_no_metrics_files(node: Path) -> None:
    assert kctl("install", "--root", str(node)).returncode == 0
    assert not [p for p in tree(node) if "metrics" in p or "node_exporter" in p]
    doc = json.loads((node / "var/lib/kubensctl/install.json").read_text())
    assert "generated" not in doc and "dirs" not in doc


def test_metrics_timer_name_matches_the_metrics_module() -> None:
    from kubensctl import metrics

    assert install.METRICS_TIMER == metrics.TIMER_NAME
    assert [f.path for f in install.metrics_files()] == [
        "/etc/systemd/system/kubensctl-metrics.service",
        "/etc/systemd/system/kubensctl-metrics.timer",
    ]
