"""Helpers for tests that call kubensctl's main() in-process."""

from __future__ import annotations

from typing import Tuple

import pytest

from kubensctl.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's own SystemExit counts as an exit code."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single non-blank stderr line of an error (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
