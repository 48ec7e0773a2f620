"""Fixtures for tests on the booted systemd test node (tools/testnode.py).

- ``node`` (module scope): one booted node per test module, powered off and removed after the module.
  Tests that use it carry ``@pytest.mark.requires_node`` (or ``pytestmark = pytest.mark.requires_node``).
  It skips with the reason when the host cannot run nodes (not root, no systemd-nspawn) or the node
  cannot be built or booted; under ``KUBENSCTL_REQUIRE_ALL=1`` (CI) tests/conftest.py makes that skip a
  failure.
- ``node_factory`` (function scope): ``node_factory()`` boots a fresh node for tests that need their own
  (destructive ones); every node it made is removed after the test.
- ``node_rootfs`` (session scope): the cached rootfs path (built on first use; progress on stderr).

``node.run(cmd, check=True, input=None, user=None, env=None, timeout=120)`` runs in the node and returns
a ``CompletedProcess[str]``; ``node.kubensctl(*args)`` runs ``python3 -m kubensctl`` from the repo's
src/ (bound read-only at /opt/kubensctl/src). See tools/testnode.py for the rest (pids, mounts,
containerd/podman helpers, reboot).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import testnode

_state: dict[str, Optional[str]] = {}


def _build_progress(msg: str) -> None:
    # The first rootfs build takes minutes: show its progress even under pytest's capture.
    stream = sys.__stderr__
    if stream is not None:
        stream.write(msg + "\n")
        stream.flush()


def pytest_configure(config: Any) -> None:
    # A SIGTERM'd run (CI timeout) should still tear nodes down: make it an interrupt, which runs
    # fixture finalizers and atexit hooks. Whatever escapes is swept by the next run.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):

        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _term)


@pytest.fixture(scope="session")
def node_rootfs() -> str:
    if "rootfs" in _state:
        reason = _state.get("error")
        if reason:
            pytest.skip(reason)
        return str(_state["rootfs"])
    reason = testnode.host_tools_ready()
    if reason:
        _state.update(rootfs=None, error=f"systemd test node: {reason}")
        pytest.skip(f"systemd test node: {reason}")
    try:
        rootfs = testnode.ensure_rootfs(progress=_build_progress)
    except Exception as e:
        _state.update(rootfs=None, error=f"systemd test node: rootfs build failed: {e}")
        pytest.skip(f"systemd test node: rootfs build failed: {e}")
    _state.update(rootfs=rootfs, error=None)
    return rootfs


def _boot(rootfs: str) -> testnode.Node:
    node = testnode.Node(rootfs)
    try:
        node.boot()
    except testnode.NodeError as e:
        node.close()
        pytest.skip(f"systemd test node cannot boot: {e}")
    except BaseException:
        node.close()
        raise
    return node


@pytest.fixture(scope="module")
def node(node_rootfs: str) -> Iterator[testnode.Node]:
    n = _boot(node_rootfs)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def node_factory(node_rootfs: str) -> Iterator[Callable[[], testnode.Node]]:
    made: List[testnode.Node] = []

    def make() -> testnode.Node:
        n = _boot(node_rootfs)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in made:
            n.close()
