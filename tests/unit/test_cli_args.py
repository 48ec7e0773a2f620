"""Argument errors: one line, exit 2, never a traceback. --help exits 0."""

from __future__ import annotations

import subprocess
import sys
from typing import List

import pytest

from kubensctl.cli import main
from nstest import env_with_src


def kubensctl(args: List[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubensctl", *args], text=True, capture_output=True, env=env_with_src(), timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["no-such-command"],
        ["status", "--host-pid", "abc"],
        ["status", "--bogus"],
        ["start", "extra"],
        ["mounts", "--runtime-dir"],
    ],
)
def test_usage_errors(args: List[str]) -> None:
    r = kubensctl(args)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "--help" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["start", "--help"], ["mounts", "--help"]])
def test_help_exits_zero(args: List[str]) -> None:
    r = kubensctl(args)
    assert r.returncode == 0 and "usage:" in r.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "kubensctl" in capsys.readouterr().out


def test_kubensenter_help_and_bad_option() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kubensctl.enter", "--help"], text=True, capture_output=True, env=env_with_src()
    )
    assert r.returncode == 0 and r.stdout.startswith("kubensenter:")
    r = subprocess.run(
        [sys.executable, "-m", "kubensctl.enter", "-x"], text=True, capture_output=True, env=env_with_src()
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
