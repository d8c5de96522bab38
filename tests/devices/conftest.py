"""Device tests: the repository root must be importable (tests.support, farm, devices)."""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.fixtures import *  # noqa: E402,F401,F403
