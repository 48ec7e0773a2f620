"""kubensenter against real namespaces: autodetect, explicit KUBENSMNT, errors, exit codes.

Every case runs several ways: the package module (what the pip console script runs); enter.py as a single
file (system python3 in isolated mode) and, when present, under Python 3.9 (RHEL 9's); and the file
`install.kubensenter_script()` lays, executed through its shebang: as generated (the bytecode it carries,
when this interpreter's magic is the system python3's), with its bytecode labelled for no interpreter
(the fallback: it compiles the source it carries), and under Python 3.9 (a real magic mismatch).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from kubensctl import install
from nstest import SRC, Scratch, env_with_src, kubensctl, ns_of, run

pytestmark = pytest.mark.requires_root

ENTER = str(SRC / "kubensctl" / "enter.py")
RUNNERS: Dict[str, List[str]] = {"module": [sys.executable, "-m", "kubensctl.enter"]}
if os.path.exists("/usr/bin/python3"):
    RUNNERS["standalone"] = ["/usr/bin/python3", "-IS", ENTER]
PY39 = "/root/.pyenv/versions/3.9.18/bin/python3.9"
if os.path.exists(PY39):
    RUNNERS["python3.9"] = [PY39, "-IS", ENTER]
# The laid file (install.kubensenter_script()), written once per session: {name: (fallback, interpreter)}.
# No interpreter: executed directly, through its #!/usr/bin/python3 -IS (else with this one, -IS).
LAID: Dict[str, Tuple[bool, Optional[str]]] = {
    "laid": (False, None),
    "laid-fallback": (True, None),
}
if os.path.exists(PY39):
    LAID["laid-python3.9"] = (False, PY39)
RUNNERS.update({name: [] for name in LAID})


@pytest.fixture(scope="session")
def laid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("laid")
    for fallback in (False, True):
        path = d / ("kubensenter-fallback" if fallback else "kubensenter")
        path.write_bytes(install.kubensenter_script(force_fallback=fallback))
        path.chmod(0o755)
    return d


@pytest.fixture(params=sorted(RUNNERS))
def runner(request: pytest.FixtureRequest) -> List[str]:
    if request.param not in LAID:
        return RUNNERS[request.param]
    fallback, interpreter = LAID[request.param]
    d: Path = request.getfixturevalue("laid_dir")
    script = str(d / ("kubensenter-fallback" if fallback else "kubensenter"))
    if interpreter is not None:
        return [interpreter, "-IS", script]
    return [script] if os.path.exists("/usr/bin/python3") else [sys.executable, "-IS", script]


def enter(
    runner: List[str], args: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(runner + args, text=True, capture_output=True, env=env_with_src(env), cwd=cwd, timeout=30)


@pytest.fixture
def pinned(scratch: Scratch) -> Scratch:
    kubensctl("start", "--runtime-dir", scratch.runtime_dir, check=True)
    return scratch


def pin_ns(s: Scratch) -> str:
    return run(["nsenter", f"--mount={s.pin}", "readlink", "/proc/self/ns/mnt"]).stdout.strip()


def netns_file(s: Scratch) -> str:
    path = s.path("netns")
    open(path, "w").close()
    run(["mount", "--bind", "/proc/self/ns/net", path])
    return path


def plain_file(s: Scratch) -> str:
    path = s.path("plain")
    open(path, "w").close()
    return path


READ_NS = ["readlink", "/proc/self/ns/mnt"]


def test_autodetect_found(runner: List[str], pinned: Scratch) -> None:
    r = enter(runner, READ_NS, {"DEFAULT_KUBENSMNT": pinned.pin})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == pin_ns(pinned)
    assert r.stderr == f"kubensenter: Autodetect: kubens.service namespace found at {pinned.pin}\n"


def test_autodetect_missing_is_quiet(runner: List[str], scratch: Scratch) -> None:
    r = enter(runner, READ_NS, {"DEFAULT_KUBENSMNT": scratch.path("nope")})
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.strip() == ns_of("self")


def test_autodetect_plain_file_says_so(runner: List[str], scratch: Scratch) -> None:
    path = plain_file(scratch)
    r = enter(runner, READ_NS, {"DEFAULT_KUBENSMNT": path})
    assert r.returncode == 0
    assert r.stdout.strip() == ns_of("self")
    assert "not a mounted namespace" in r.stderr and len(r.stderr.splitlines()) == 1


def test_autodetect_network_namespace_says_so(runner: List[str], scratch: Scratch) -> None:
    path = netns_file(scratch)
    r = enter(runner, READ_NS, {"DEFAULT_KUBENSMNT": path})
    assert r.returncode == 0
    assert r.stdout.strip() == ns_of("self")
    assert "network namespace" in r.stderr


def test_explicit_joins_silently(runner: List[str], pinned: Scratch) -> None:
    r = enter(runner, READ_NS, {"KUBENSMNT": pinned.pin})
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.strip() == pin_ns(pinned)


def test_explicit_overrides_default(runner: List[str], pinned: Scratch) -> None:
    other = Scratch()
    try:
        kubensctl("start", "--runtime-dir", other.runtime_dir, check=True)
        r = enter(runner, READ_NS, {"KUBENSMNT": other.pin, "DEFAULT_KUBENSMNT": pinned.pin})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == pin_ns(other) != pin_ns(pinned)
    finally:
        other.cleanup()


def test_explicit_missing_is_an_error(runner: List[str], scratch: Scratch) -> None:
    missing = scratch.path("missing")
    r = enter(runner, ["true"], {"KUBENSMNT": missing})
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and missing in r.stderr and "Traceback" not in r.stderr


def test_explicit_plain_file_warns_and_runs(runner: List[str], scratch: Scratch) -> None:
    path = plain_file(scratch)
    r = enter(runner, READ_NS, {"KUBENSMNT": path})
    assert r.returncode == 0
    assert r.stdout.strip() == ns_of("self")
    assert "not a mounted namespace" in r.stderr


def test_explicit_network_namespace_is_an_error(runner: List[str], scratch: Scratch) -> None:
    path = netns_file(scratch)
    r = enter(runner, ["true"], {"KUBENSMNT": path})
    assert r.returncode == 1
    assert "network namespace, not a mount namespace" in r.stderr and r.stderr.count("\n") == 1


def test_not_found_127_and_not_executable_126(runner: List[str], scratch: Scratch) -> None:
    r = enter(runner, ["no-such-command-kubens"], {"DEFAULT_KUBENSMNT": scratch.path("x")})
    assert r.returncode == 127 and "command not found" in r.stderr
    script = scratch.path("noexec.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    r = enter(runner, [script], {"DEFAULT_KUBENSMNT": scratch.path("x")})
    assert r.returncode == 126 and "not executable" in r.stderr


def test_help_exits_zero(runner: List[str]) -> None:
    for flag in ("-h", "--help"):
        r = enter(runner, [flag])
        assert r.returncode == 0 and "Usage: kubensenter" in r.stdout


def test_bad_option_is_usage_error(runner: List[str]) -> None:
    r = enter(runner, ["--bogus"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--help" in r.stderr


def test_quiet_and_log_level(runner: List[str], pinned: Scratch) -> None:
    env = {"DEFAULT_KUBENSMNT": pinned.pin}
    assert enter(runner, ["-q", "true"], env).stderr == ""
    assert enter(runner, ["true"], dict(env, KUBENSENTER_LOG="0")).stderr == ""
    verbose = enter(runner, ["-v", "--", "true"], env).stderr
    assert "Autodetect" in verbose and "exec true" in verbose


def test_exit_status_and_exec(runner: List[str], pinned: Scratch) -> None:
    r = enter(runner, ["sh", "-c", "exit 7"], {"KUBENSMNT": pinned.pin})
    assert r.returncode == 7
    # exec, not fork: the command keeps kubensenter's PID (systemd Type=notify / main PID tracking)
    p = subprocess.Popen(
        runner + ["sh", "-c", 'echo "$$"'],
        text=True,
        stdout=subprocess.PIPE,
        env=env_with_src({"KUBENSMNT": pinned.pin}),
    )
    out, _ = p.communicate(timeout=30)
    assert int(out) == p.pid


def test_shell_without_command(runner: List[str], pinned: Scratch) -> None:
    shell = pinned.path("myshell")
    with open(shell, "w") as f:
        f.write("#!/bin/sh\nreadlink /proc/self/ns/mnt\n")
    os.chmod(shell, 0o755)
    r = enter(runner, [], {"KUBENSMNT": pinned.pin, "SHELL": shell})
    assert r.returncode == 0 and r.stdout.strip() == pin_ns(pinned)


def test_working_directory_kept(runner: List[str], pinned: Scratch) -> None:
    r = enter(runner, ["pwd"], {"KUBENSMNT": pinned.pin}, cwd=pinned.dir)
    assert r.stdout.strip() == pinned.dir


def test_non_root_gets_permission_error(pinned: Scratch) -> None:
    """The node-side script run by an unprivileged user (the system python3, as on nodes)."""
    os.chmod(pinned.dir, os.stat(pinned.dir).st_mode | stat.S_IXOTH | stat.S_IROTH)
    env = env_with_src({"KUBENSMNT": pinned.pin})
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-IS", ENTER, "findmnt"],
        text=True,
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 1, r.stderr
    assert "permission denied" in r.stderr and "sudo" in r.stderr and "Traceback" not in r.stderr
