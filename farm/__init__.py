"""kernelfarm's tuning side: tensor language, schedules, compiler, search."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build": ("farm.compiler.builder", "build"),
    "lower": ("farm.compiler.lowering", "lower"),
    "Target": ("farm.target", "Target"),
    "connect": ("farm.client.session", "connect"),
    "template": ("farm.workloads.registry", "template"),
    "compute": ("farm.workloads.registry", "compute"),
    "load_kernel": ("farm.workloads.loader", "load_kernel"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import farm.te` stays light and `farm.lower` the module is importable.
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'farm' has no attribute {name!r}")
