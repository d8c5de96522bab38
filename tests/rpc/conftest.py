"""Fixtures: a real tracker and real device servers as processes on 127.0.0.1, port 0.

Teardown stops them by pid and fails the test if any process carrying the
farm's marker (servers' job children included) outlived its parent, or if a
client thread was left running.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.rpc.harness import LocalFarm  # noqa: E402


@pytest.fixture
def local_farm(tmp_path: Path) -> Iterator[LocalFarm]:
    """A started tracker (``.address``); tests add servers with ``start_server``."""
    threads_before = {t.ident for t in threading.enumerate()}
    farm = LocalFarm(tmp_path / "farm")
    farm.start_tracker()
    try:
        yield farm
    finally:
        leaked = farm.close()
    assert not leaked, f"processes outlived the farm: {leaked}"
    stray = [t.name for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert not stray, f"threads leaked: {stray}"
