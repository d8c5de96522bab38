"""The small protocol every device backend implements.

describe the device (fingerprint), load an artifact, run it once, time it.
Isolation (child process, hard timeout) is the device server's job, not the
backend's: a backend may crash the process it runs in.
"""
from __future__ import annotations

from typing import Any, Protocol

from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, RunOptions


class DeviceBackend(Protocol):
    kind: str

    def describe(self) -> dict[str, Any]:
        """Fingerprint: ISA/triple, CPU name and features, cores, caches, memory, OS, versions."""
        ...

    def run_job(self, artifact: Artifact, options: RunOptions, reference: Artifact | None = None) -> MeasureResult:
        """Load, check against the reference on seeded inputs, then time natively. ``reference`` is
        the artifact ``artifact.reference`` names, when it names one (devices.check)."""
        ...
