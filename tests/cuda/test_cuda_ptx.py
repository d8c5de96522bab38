"""PTX of random configs of the CUDA templates assembles with ptxas for sm_80 and sm_90."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.cuda.helpers import random_configs

CASES = [
    ("matmul", (256, 256, 256)),
    ("matmul", (200, 136, 72)),  # no dimension divides the tiles: guarded tails
    ("conv2d", (1, 32, 28, 28, 64, 3, 1, 1)),
    ("conv2d", (2, 12, 15, 15, 20, 3, 2, 1)),
]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name,shape", CASES)
def test_random_configs_pass_ptxas(name: str, shape: tuple[int, ...], arch: str, ptxas: Any, tmp_path: Path) -> None:
    from farm.errors import CompileError
    from farm.workloads.registry import build_workload

    target = f"cuda -arch={arch}"
    built = 0
    for idx in random_configs(name, shape, target, 4, seed=zlib.crc32(repr((name, shape)).encode())):
        try:
            mod = build_workload(name, shape, idx, target)
        except CompileError as e:  # an invalid config (e.g. a shared tile over 48 KiB) is a clear build error
            assert "shared memory" in str(e) or "threads" in str(e), e
            continue
        art = mod.artifact
        assert art.kind == "ptx" and art.code.startswith(b"//")
        assert f".target {arch}".encode() in art.code
        assert set(art.meta) >= {"grid", "block", "shared_bytes"}
        rc, err = ptxas(art.code, arch, tmp_path)
        assert rc == 0, f"ptxas -arch={arch} rejected config {idx} of {name}{shape}:\n{err}"
        built += 1
    assert built >= 3, f"only {built} valid configs among the sampled ones"


def test_tuned_matmul_ptx_uses_shared_vectors_and_barriers(ptxas: Any, tmp_path: Path) -> None:
    from farm.workloads.registry import build_workload

    cfg = ('{"knobs": {"tile_i": [-1, 16, 8], "tile_j": [-1, 16, 8], '
           '"tile_k": [-1, 8], "stage_a": 1, "stage_b": 1, "vec": 4, "unroll": 1}}')
    art = build_workload("matmul", (1024, 1024, 1024), cfg, "cuda -arch=sm_80").artifact
    ptx = art.code.decode()
    assert art.meta == {"grid": [8, 8, 1], "block": [16, 16, 1], "shared_bytes": 8192}
    assert ".entry kf_main" in ptx and ".reqntid 16, 16, 1" in ptx
    assert "bar.sync" in ptx and "ld.shared.v4" in ptx and "ld.global.nc.v4" in ptx and "st.global.v4" in ptx
    assert ptx.count("fma.rn.f32") >= 8 * 8 * 8  # the 8x8 register tile, unrolled over BK=8
    assert ".local" not in ptx  # the accumulator tile lives in registers
    rc, err = ptxas(art.code, "sm_80", tmp_path)
    assert rc == 0, err
