"""CUDA schedules are correct without a GPU: the lowered kernels run in the
execution simulator (lockstep threads, barriers, race and bounds checks) and
match numpy; and the code generator's GPU rules hold."""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tests.cuda.helpers import random_configs

TARGET = "cuda -arch=sm_80"


def _run_sim(name: str, shape: Sequence[int], idx: Any) -> str | None:
    from farm.compiler.codegen.gpu_lower import analyze_launch, lower_gpu
    from farm.compiler.codegen.gpu_sim import simulate
    from farm.records.artifact import ArgSpec
    from farm.runtime.buffers import compare, seeded_inputs
    from farm.workloads.registry import get_workload, resolve_config

    wl = get_workload(name)
    cfg = resolve_config(wl.space(shape, TARGET), idx)
    sch, tensors = wl.instantiate(shape, cfg, TARGET)
    func = lower_gpu(sch, tensors, name)
    launch = analyze_launch(func)
    specs = [ArgSpec(t.name, t.shape, t.dtype, "out" if n == len(tensors) - 1 else "in") for n, t in enumerate(tensors)]
    arrays = seeded_inputs(specs, seed=1)
    simulate(func, launch, arrays)
    ref = wl.reference(list(shape), arrays[:-1])[0]
    return compare(arrays[-1], ref, 1e-4)


SIM_CASES = [
    ("matmul", (32, 32, 32), 6),
    ("matmul", (24, 40, 20), 6),  # tails everywhere
    ("conv2d", (1, 6, 10, 9, 8, 3, 1, 1), 5),
    ("conv2d", (2, 5, 11, 11, 6, 3, 2, 1), 4),  # stride 2, batch 2, odd sizes
]


@pytest.mark.parametrize("name,shape,n", SIM_CASES)
def test_random_configs_correct_in_simulator(name: str, shape: tuple[int, ...], n: int) -> None:
    from farm.errors import CompileError

    for idx in random_configs(name, shape, TARGET, n, seed=zlib.crc32(repr(shape).encode())):
        try:
            msg = _run_sim(name, shape, idx)
        except CompileError:
            continue  # invalid config (too much shared memory): not this test's concern
        assert msg is None, f"config {idx} of {name}{shape}: {msg}"


def test_simulator_catches_missing_barriers(monkeypatch: pytest.MonkeyPatch) -> None:
    import farm.compiler.codegen.gpu_sim as gs

    cfg = ('{"knobs": {"tile_i": [-1, 4, 2], "tile_j": [-1, 4, 2], '
           '"tile_k": [-1, 4], "stage_a": 1, "stage_b": 1, "vec": 1, "unroll": 1}}')
    assert _run_sim("matmul", (16, 16, 16), cfg) is None
    real = gs.barrier_plan
    for broken in (lambda f, loop: (set(), set()), lambda f, loop: (set(), real(f, loop)[1]),
                   lambda f, loop: (real(f, loop)[0], set())):
        monkeypatch.setattr(gs, "barrier_plan", broken)
        with pytest.raises(gs.SimulationError, match="race"):
            _run_sim("matmul", (16, 16, 16), cfg)


def test_shared_tiles_are_sized_for_the_block() -> None:
    """threadIdx relaxation: the shared A tile covers the block's rows, not one thread's."""
    from farm.compiler.codegen.gpu_lower import lower_gpu
    from farm.compiler.ir import Allocate, walk_stmts
    from farm.workloads.registry import get_workload, resolve_config

    wl = get_workload("matmul")
    cfg = resolve_config(
        wl.space((64, 64, 64), TARGET), '{"knobs": {"tile_i": [-1, 8, 4], "tile_j": [-1, 4, 2], "tile_k": [-1, 8]}}'
    )
    sch, ts = wl.instantiate((64, 64, 64), cfg, TARGET)
    shapes = {s.buffer.name: s.buffer.shape for s in walk_stmts(lower_gpu(sch, ts).body) if isinstance(s, Allocate)}
    assert shapes == {"C.local": (4, 2), "A.shared": (32, 8), "B.shared": (8, 8)}


def _tiny_schedule(bind_copy_wide: bool, root_stage: bool = False) -> Any:
    """C[i] = A[i] + A[i + 8]: per block of 8 outputs the shared tile of A is 16 wide."""
    from farm import te

    a = te.placeholder((72,), name="A")
    b = te.compute((72,), lambda i: a[i] * 2.0, name="B") if root_stage else None
    src = b if b is not None else a
    c = te.compute((64,), lambda i: src[i] + src[i + 8], name="C")
    s = te.create_schedule(c.op)
    o, i = s[c].split(s[c].op.axis[0], factor=8)
    s[c].bind(o, "blockIdx.x")
    s[c].bind(i, "threadIdx.x")
    if b is None:
        sh = s.cache_read(a, "shared", [c])
        s[sh].compute_at(s[c], i)
        _, ci = s[sh].split(s[sh].op.axis[0], factor=16 if bind_copy_wide else 8)
        s[sh].bind(ci, "threadIdx.x")
    return s, [a, c]


def test_codegen_rules() -> None:
    from farm.compiler.builder import build
    from farm.errors import CompileError

    s, args = _tiny_schedule(False)
    art = build(s, args, TARGET).artifact
    assert art.meta == {"grid": [8, 1, 1], "block": [8, 1, 1], "shared_bytes": 64}
    assert b"bar.sync" in art.code and b"%ctaid.x" in art.code and b"%tid.x" in art.code
    # A copy bound wider than the compute: the compute's threads are guarded, and
    # the barrier after the copy would be under that guard -> refused, not a hang.
    s, args = _tiny_schedule(True)
    with pytest.raises(CompileError, match="barrier"):
        build(s, args, TARGET)
    s, args = _tiny_schedule(False, root_stage=True)
    with pytest.raises(CompileError, match="single launch"):
        build(s, args, TARGET)


def test_launch_limits_are_compile_errors() -> None:
    from farm import te
    from farm.compiler.builder import build
    from farm.errors import CompileError

    a = te.placeholder((4096,), name="A")
    c = te.compute((4096,), lambda i: a[i] + 1.0, name="C")
    s = te.create_schedule(c.op)
    o, i = s[c].split(s[c].op.axis[0], factor=2048)
    s[c].bind(o, "blockIdx.x")
    s[c].bind(i, "threadIdx.x")
    with pytest.raises(CompileError, match="block dimension x is 2048"):
        build(s, [a, c], TARGET)


def test_elementwise_math_runs_in_simulator_and_ptx() -> None:
    from farm import te
    from farm.compiler.builder import build
    from farm.compiler.codegen.gpu_lower import analyze_launch, lower_gpu
    from farm.compiler.codegen.gpu_sim import simulate

    a = te.placeholder((100,), name="A")
    c = te.compute((100,), lambda i: te.sigmoid(a[i]) + te.tanh(a[i]) + te.exp(a[i]) + te.log(a[i] + 2.0), name="C")
    s = te.create_schedule(c.op)
    o, i = s[c].split(s[c].op.axis[0], factor=32)
    s[c].bind(o, "blockIdx.x")
    s[c].bind(i, "threadIdx.x")
    ptx = build(s, [a, c], TARGET).artifact.code
    assert b"ex2.approx" in ptx and b"lg2.approx" in ptx and b"call" not in ptx.replace(b"// ", b"")
    x = np.linspace(-1, 1, 100).astype(np.float32)
    out = np.zeros(100, np.float32)
    f = lower_gpu(s, [a, c])
    simulate(f, analyze_launch(f), [x, out])
    want = 1 / (1 + np.exp(-x)) + np.tanh(x) + np.exp(x) + np.log(x + 2)
    np.testing.assert_allclose(out, want, rtol=1e-5)
