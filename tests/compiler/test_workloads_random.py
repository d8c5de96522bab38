"""Every workload: random configs of its space compile and match numpy, odd shapes included."""
from __future__ import annotations

import random

import numpy as np
import pytest

from devices.check import builtin_outputs as reference_outputs
from farm.runtime.buffers import compare, seeded_inputs
from farm.workloads.registry import build_workload, get_workload

CASES = [
    ("matmul", (48, 64, 40)),
    ("matmul", (67, 45, 33)),
    ("dense_bias_relu", (37, 50, 29)),
    ("batch_matmul", (3, 20, 35, 17)),
    ("conv2d", (1, 8, 14, 13, 12, 3, 1, 1)),
    ("conv2d", (2, 5, 11, 9, 7, 3, 2, 0)),
    ("depthwise_conv2d", (1, 6, 15, 17, 3, 2, 1)),
    ("depthwise_conv2d", (2, 4, 9, 12, 3, 1, 1)),
]
N_CONFIGS = 50


def check_config(name: str, args: tuple[int, ...], config: object) -> str | None:
    mod = build_workload(name, args, config)
    arrays = seeded_inputs(mod.artifact.args, seed=7)
    mod(*arrays)
    ref = reference_outputs(mod.artifact, arrays)
    assert ref is not None
    outs = [a for a, s in zip(arrays, mod.artifact.args) if s.role == "out"]
    return compare(outs[0], ref[0], 1e-4)


@pytest.mark.parametrize("name,args", CASES, ids=[f"{n}-{'x'.join(map(str, a))}" for n, a in CASES])
def test_random_configs_match_numpy(name: str, args: tuple[int, ...]) -> None:
    space = get_workload(name).space(args)
    rng = random.Random(hash((name, args)) & 0xFFFF)
    n = min(N_CONFIGS, len(space))
    indices = [0] + rng.sample(range(1, len(space)), n - 1) if len(space) > n else list(range(len(space)))
    failures = []
    for idx in indices:
        msg = check_config(name, args, str(idx))
        if msg is not None:
            failures.append((idx, space.get(idx).to_json()["knobs"], msg))
    assert not failures, f"{len(failures)} of {len(indices)} configs wrong: {failures[:3]}"


def test_compare_detects_a_wrong_answer() -> None:
    want = np.ones((4, 4), dtype=np.float32)
    got = want.copy()
    got[2, 3] = 1.01
    assert compare(got, want, 1e-4) is not None
    assert compare(want.copy(), want, 1e-4) is None


def test_seeded_reference_is_cached_per_workload_and_seed() -> None:
    from devices.check import expected_outputs as seeded_reference

    art = build_workload("matmul", (8, 8, 8), "default").artifact
    a0 = seeded_inputs(art.args, seed=0)
    r0 = seeded_reference(art, a0, 0)
    assert r0 is not None and seeded_reference(art, seeded_inputs(art.args, seed=0), 0) is r0
    r1 = seeded_reference(art, seeded_inputs(art.args, seed=1), 1)
    assert r1 is not r0 and not np.allclose(r1[0], r0[0]), "another seed must get its own reference"
    other = build_workload("matmul", (8, 8, 4), "default").artifact
    r2 = seeded_reference(other, seeded_inputs(other.args, seed=0), 0)
    assert r2 is not r0 and not np.allclose(r2[0], r0[0]), "another workload must get its own reference"


@pytest.mark.parametrize("name,args", [("dense_bias_relu", (37, 150, 29)), ("matmul", (67, 45, 33)),
                                       ("batch_matmul", (3, 20, 35, 17))])
@pytest.mark.parametrize("parallel", [0, 1, 2])
def test_panel_outer_packing_matches_numpy(name: str, args: tuple[int, ...], parallel: int) -> None:
    """j_outer: each thread packs its own B panels at the column-tile loop (a producer
    attached outside the register-tile stage that reads it)."""
    knobs = {"tile_i": [-1, 2, 3], "tile_j": [-1, 2, 16], "tile_k": [-1, 4], "order": 0, "unroll": 1,
             "pack_b": 1, "parallel": parallel, "j_outer": 1}
    assert check_config(name, args, {"knobs": knobs}) is None


def test_panel_buffer_is_one_panel_set() -> None:
    """The per-thread packed buffer covers the panels of one column tile, not all of B."""
    from farm.compiler.ir import Allocate, walk_stmts
    from farm.compiler.lowering import lower
    from farm.target import Target

    wl = get_workload("dense_bias_relu")
    tgt = Target.parse("llvm -mcpu=native")
    space = wl.space((64, 256, 128), tgt)
    cfg = space.from_json({"knobs": {"tile_i": [-1, 1, 4], "tile_j": [-1, 2, 16], "tile_k": [-1, 4],
                                     "pack_b": 1, "parallel": 1, "j_outer": 1}})
    sch, tensors = wl.instantiate((64, 256, 128), cfg, tgt)
    allocs = {a.buffer.name: a.buffer for a in walk_stmts(lower(sch, tensors).body) if isinstance(a, Allocate)}
    assert tuple(allocs["B.packed"].shape) == (2, 128, 16)
    assert allocs["B.packed"].scope == "local"
