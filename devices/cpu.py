"""CPU backend: load, check against the reference (devices.check), time (farm.runtime loads)."""
from __future__ import annotations

import logging
import time
from typing import Any

from devices.check import expected_outputs
from farm.errors import LoadError
from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, Outcome, RunOptions
from farm.runtime.buffers import compare, seeded_inputs
from farm.runtime.loader import LoadedKernel

log = logging.getLogger(__name__)


class CpuBackend:
    """Runs CPU artifacts in this process: load, check, time."""

    kind = "cpu"

    def __init__(self, key: str = "") -> None:
        self.key = key

    def describe(self) -> dict[str, Any]:
        from devices.fingerprint import cpu_fingerprint

        return cpu_fingerprint()

    def run_job(self, artifact: Artifact, options: RunOptions, reference: Artifact | None = None) -> MeasureResult:
        t0 = time.perf_counter()
        try:
            k = LoadedKernel(artifact, options.num_threads)
        except LoadError as e:
            return MeasureResult.error(Outcome.LOAD_ERROR, str(e), flops=artifact.flops, device_key=self.key)
        load_s = time.perf_counter() - t0
        arrays = seeded_inputs(artifact.args, options.seed)
        checked = False
        if options.check:
            try:
                ref = expected_outputs(artifact, arrays, options.seed, reference)
            except LoadError as e:
                return MeasureResult.error(Outcome.LOAD_ERROR, str(e), flops=artifact.flops, device_key=self.key)
            if ref is not None:
                k(*arrays)
                outs = [a for a, s in zip(arrays, artifact.args) if s.role == "out"]
                for o, r, s in zip(outs, ref, [s for s in artifact.args if s.role == "out"]):
                    msg = compare(o, r, options.rtol)
                    if msg is not None:
                        return MeasureResult.error(Outcome.WRONG_ANSWER, f"output {s.name}: {msg}",
                                                   flops=artifact.flops, device_key=self.key, load_s=load_s)
                checked = True
        t1 = time.perf_counter()
        costs = k.time_evaluator(arrays, options.number, options.repeat, options.min_repeat_ms, options.cooldown_ms)
        return MeasureResult(Outcome.OK, tuple(costs), "", artifact.flops, k.last_number, load_s,
                             time.perf_counter() - t1, self.key, checked)
