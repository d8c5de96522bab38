"""Shared helpers: synthetic records and a synthetic speed function over a real space."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from farm.log import LogRecord
from farm.records.measure import MeasureResult, Outcome, RunOptions

TARGET = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=skylake-avx512 -mattr=+avx512f,+avx2,+fma"
FP = {"isa": "x86_64", "cores": 4, "caches": {"L1d": 32768, "L2": 1 << 20, "L3": 8 << 20}}


def make_record(index: int, gflops: float, workload: str = "matmul", args: tuple[int, ...] = (32, 32, 32),
                device: str = "dev-a", outcome: Outcome = Outcome.OK, knobs: dict[str, Any] | None = None) -> LogRecord:
    flops = 2.0 * float(np.prod(args[:3]))
    if outcome is Outcome.OK:
        res = MeasureResult(Outcome.OK, (flops / gflops / 1e9,) * 3, flops=flops, number=10, device_key=device)
    else:
        res = MeasureResult.error(outcome, "boom", flops=flops, device_key=device)
    return LogRecord.from_measurement(
        workload=workload, args=args, target=TARGET, config={"index": index, "knobs": knobs or {}},
        result=res, options=RunOptions(repeat=3, min_repeat_ms=5), device_key=device, fingerprint=FP,
        build_s=0.05, timestamp=1.7e9 + index)


def synthetic_speed(space: Any) -> Any:
    """GFLOPS as a smooth function of the knob choices with one clear optimum,
    so tuners have a known answer; a tenth of configs "fail" (0)."""
    dims = np.asarray(space.dims())
    rng = np.random.default_rng(7)
    opt = rng.integers(0, dims)

    def f(index: int) -> float:
        ch = np.asarray(space.choices(index))
        d = np.abs(ch - opt) / np.maximum(dims - 1, 1)
        if (index * 2654435761) % 10 == 0:
            return 0.0
        return float(100.0 * np.exp(-3.0 * d.sum()))
    return f


@pytest.fixture
def small_space() -> Any:
    from farm.workloads.registry import get_workload

    return get_workload("matmul").space((32, 32, 32), TARGET)
