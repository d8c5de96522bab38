"""AArch64: the same kernels cross-compile; one runs under qemu-aarch64 and is checked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.workloads.registry import build_workload, get_workload

ARM = "llvm -mtriple=aarch64-linux-gnu -mcpu=generic -mattr=+neon"
TILED = ('{"knobs": {"tile_i": [-1, 2, 4], "tile_j": [-1, 1, 8], '
         '"tile_k": [-1, 4], "unroll": 2, "pack_b": 1, "parallel": 2}}')


@pytest.mark.parametrize("name", ["matmul", "dense_bias_relu", "batch_matmul", "conv2d", "depthwise_conv2d"])
def test_cross_compiles_to_aarch64_objects(name: str) -> None:
    wl = get_workload(name)
    args = {"matmul": (33, 40, 27), "dense_bias_relu": (16, 32, 8), "batch_matmul": (2, 8, 16, 8),
            "conv2d": (1, 4, 9, 9, 8, 3, 1, 1), "depthwise_conv2d": (1, 4, 9, 9, 3, 1, 1)}[name]
    space = wl.space(args, ARM)
    for idx in (0, len(space) // 3, len(space) - 1):
        mod = build_workload(name, args, str(idx), ARM)
        code = mod.artifact.code
        assert code[:4] == b"\x7fELF" and code[18] == 183, "expected an ELF object for EM_AARCH64 (183)"


def test_neon_in_aarch64_assembly() -> None:
    from farm.compiler.codegen import assembly
    from farm.compiler.lowering import lower
    from farm.target import Target

    wl = get_workload("matmul")
    tgt = Target.parse(ARM)
    cfg = wl.space((64, 64, 64), tgt).from_json(TILED)
    sch, tensors = wl.instantiate((64, 64, 64), cfg, tgt)
    asm = assembly(lower(sch, tensors), tgt)
    assert "fmla" in asm and ".4s" in asm, "vectorized matmul should use NEON fused multiply-adds"


RUNNER = r"""
import json, sys
from farm.records.artifact import Artifact
from farm.records.measure import RunOptions
from devices.cpu import CpuBackend
out = []
for path in sys.argv[1:]:
    art = Artifact.from_json(json.load(open(path)))
    res = CpuBackend("qemu-arm").run_job(art, RunOptions(repeat=1, min_repeat_ms=0, num_threads=2))
    out.append(res.to_json())
print(json.dumps(out))
"""


@pytest.mark.qemu
def test_aarch64_kernels_run_under_qemu(tmp_path: Path) -> None:
    from tests.support.armroot import run_under_arm_python

    paths = []
    for n, (name, args, cfg) in enumerate([
        ("matmul", (33, 40, 27), "default"),
        ("matmul", (33, 40, 27), TILED),
        ("conv2d", (1, 4, 9, 9, 8, 3, 1, 1), "7"),
    ]):
        art = build_workload(name, args, cfg, ARM).artifact
        p = tmp_path / f"art{n}.json"
        p.write_text(json.dumps(art.to_json()))
        paths.append(str(p))
    proc = run_under_arm_python(RUNNER, *paths, timeout=600)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["outcome"] for r in results] == ["OK"] * 3, results
    assert all(r["checked"] for r in results), "outputs must be checked against numpy on the board"
