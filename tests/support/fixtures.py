"""Pytest fixtures for device tests: a real sshd, the emulated arm64 Python, a tracker process
and the check that a fleet leaves nothing running.

Import them into a conftest with ``from tests.support.fixtures import *``.
Outside CI a missing qemu or sshd skips the test; under CI (``CI`` set) it
fails, because ``.ci/setup_arm_root.sh`` is expected to have installed them.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import procs
from .armroot import ArmRoot, ArmRootError, ensure_armroot, find_qemu
from .sshd import SshdUnavailable, SshEndpoint, SshServer, find_sshd
from .tracker import TrackerProcess

__all__ = ["arm_root", "sshd_server", "sshd_endpoint", "tracker", "no_fleet_leaks", "FLEET_MARK"]

FLEET_MARK = "devices.fleet.launch"  # the process mark of what `farm devices up` starts


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must run .ci/setup_arm_root.sh first)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def arm_root() -> ArmRoot:
    """The cached arm64 root (built on first use, ~15 s); ``.python`` is the wrapper."""
    if find_qemu() is None:
        _missing("qemu-aarch64-static not installed")
    try:
        return ensure_armroot()
    except ArmRootError as e:
        _missing(f"cannot build the arm64 root: {e}")
        raise


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[SshServer]:
    """A running sshd on 127.0.0.1 (``.endpoint`` has port, user, key, known_hosts)."""
    if find_sshd() is None:
        _missing("sshd not installed")
    server = SshServer(tmp_path / "sshd")
    try:
        server.start()
    except SshdUnavailable as e:
        server.close()
        _missing(str(e))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sshd_endpoint(sshd_server: SshServer) -> SshEndpoint:
    assert sshd_server.endpoint is not None
    return sshd_server.endpoint


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[TrackerProcess]:
    """A real tracker process on loopback (ephemeral port), stopped after the test."""
    with TrackerProcess(tmp_path / "tracker") as t:
        yield t


@pytest.fixture
def no_fleet_leaks() -> Iterator[None]:
    """Fails the test if a fleet process started during it is still running (and stops it)."""
    before = set(procs.find_marked(FLEET_MARK))
    yield
    left = [p for p in procs.wait_gone(FLEET_MARK, timeout=15) if p not in before]
    procs.kill_all(left)
    assert not left, f"left running: {procs.describe(left)}"
