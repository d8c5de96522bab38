"""On a real NVIDIA GPU (``pytest -m gpu tests/cuda``): the CUDA templates run,
match numpy, and report GFLOPS. Skipped without libcuda.so.1 or a visible GPU."""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from farm.records.measure import Outcome, RunOptions

log = logging.getLogger(__name__)
pytestmark = pytest.mark.gpu

TUNED_MATMUL = {"tile_i": [-1, 16, 8], "tile_j": [-1, 16, 8], "tile_k": [-1, 8], "stage_a": 1, "stage_b": 1,
                "vec": 4, "unroll": 1}
TUNED_CONV = {"tile_f": [-1, 4, 4], "tile_y": [-1, 2, 2], "tile_x": [-1, 16, 1], "tile_rc": [-1, 8],
              "stage_data": 1, "stage_weight": 1, "unroll": 1}


def _arch(backend: Any) -> str:
    return f"cuda -arch=sm_{min(backend.sm(), 90)}"


@pytest.mark.parametrize("shape", [(1024, 1024, 1024), (509, 257, 131)])
def test_matmul_on_gpu(cuda_backend: Any, shape: tuple[int, int, int], capsys: pytest.CaptureFixture[str]) -> None:
    from farm.workloads.registry import build_workload

    art = build_workload("matmul", shape, json.dumps({"knobs": TUNED_MATMUL}), _arch(cuda_backend)).artifact
    res = cuda_backend.run_job(art, RunOptions(repeat=5, min_repeat_ms=50, rtol=1e-4))
    assert res.outcome is Outcome.OK, res.message
    assert res.checked
    with capsys.disabled():
        print(f"\n[gpu] {cuda_backend.describe()['gpu_name']}: matmul {shape} {res.gflops:.0f} GFLOPS "
              f"({res.median_s * 1e6:.1f} us, {res.extra.get('registers')} regs)")


def test_random_matmul_configs_on_gpu(cuda_backend: Any) -> None:
    from farm.errors import CompileError
    from farm.workloads.registry import build_workload
    from tests.cuda.helpers import random_configs

    shape = (200, 136, 72)
    for idx in random_configs("matmul", shape, _arch(cuda_backend), 12, seed=7):
        try:
            art = build_workload("matmul", shape, idx, _arch(cuda_backend)).artifact
        except CompileError:
            continue
        res = cuda_backend.run_job(art, RunOptions(repeat=1, min_repeat_ms=0))
        assert res.outcome is Outcome.OK, f"config {idx}: {res.outcome.value} {res.message}"


def test_conv2d_on_gpu(cuda_backend: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from farm.workloads.registry import build_workload

    shape = (1, 64, 56, 56, 64, 3, 1, 1)
    art = build_workload("conv2d", shape, json.dumps({"knobs": TUNED_CONV}), _arch(cuda_backend)).artifact
    res = cuda_backend.run_job(art, RunOptions(repeat=3, min_repeat_ms=50, rtol=1e-4))
    assert res.outcome is Outcome.OK, res.message
    with capsys.disabled():
        print(f"\n[gpu] conv2d {shape}: {res.gflops:.0f} GFLOPS ({res.median_s * 1e6:.1f} us)")


def test_run_arrays_and_errors_on_gpu(cuda_backend: Any) -> None:
    from devices.cuda import run_arrays
    from farm.workloads.registry import build_workload

    art = build_workload("matmul", (64, 48, 32), json.dumps({"knobs": {"tile_i": [-1, 4, 2], "tile_j": [-1, 8, 2]}}),
                         _arch(cuda_backend)).artifact
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 32), np.float32), rng.standard_normal((32, 48), np.float32)
    c = np.zeros((64, 48), np.float32)
    run_arrays(cuda_backend, art, [a, b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    bad = type(art)(**{**art.__dict__, "code": b"// not ptx\n.version 99.0\n"})
    assert cuda_backend.run_job(bad, RunOptions(min_repeat_ms=0)).outcome is Outcome.LOAD_ERROR
    assert cuda_backend.run_job(art, RunOptions(min_repeat_ms=0)).outcome is Outcome.OK  # still healthy
