"""Fixtures for root tests: real mount namespaces in uniquely named temp trees, always cleaned up."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from nstest import Scratch


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    s = Scratch()
    try:
        yield s
    finally:
        s.cleanup()
