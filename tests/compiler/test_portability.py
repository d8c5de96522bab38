"""Every workload's default and hand-picked configs, on more than the machine they were written on.

Targets: AVX2 with 16 vector registers (``-mcpu=haswell``), this host, AVX-512 with 32
(``-mcpu=skylake-avx512``) and AArch64 NEON. Kernels run and are checked against numpy
wherever the host can execute them; elsewhere the assembly is checked (x86) or the
object is (AArch64: running it under qemu is tests/compiler/test_aarch64.py's). The
hand-picked configs come from ``benchmarks/bench_kernels.py``, derived from the target's
lanes and registers: a config written for one ISA would not even be in another's space.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from farm.compiler.codegen import assembly
from farm.compiler.lowering import lower
from farm.runtime.buffers import compare, seeded_inputs
from farm.target import Target
from farm.workloads.registry import build_workload, get_workload, list_workloads

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_kernels import CASES, hand_config, register_tile  # noqa: E402

HASWELL = "llvm -mcpu=haswell"
SKX = "llvm -mcpu=skylake-avx512"
ARM = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon"

# Small shapes with tails: extents that the register tiles (NR up to 64, MR 6) do not divide.
SMALL: dict[str, list[tuple[int, ...]]] = {
    "matmul": [(50, 72, 42)],
    "dense_bias_relu": [(50, 80, 24)],
    "batch_matmul": [(2, 14, 72, 20)],
    # The last: K = 32, a multiple of every target's lanes, so the hand-picked config packs output channels.
    "conv2d": [(1, 8, 12, 20, 12, 3, 1, 1), (1, 16, 9, 9, 12, 1, 1, 0), (1, 8, 13, 13, 12, 3, 2, 1),
               (1, 8, 11, 13, 32, 3, 2, 1)],
    "depthwise_conv2d": [(1, 8, 12, 20, 3, 1, 1)],
}
CASES_SMALL = [(w, s) for w, shapes in SMALL.items() for s in shapes]


def target(text: str) -> Target:
    return Target.parse(text).with_isa_features()


def vector_tile(cfg: dict[str, Any]) -> int:
    """The hand-picked config's vectorized tile extent (GEMM columns, conv output columns or channels)."""
    knobs = cfg["knobs"]
    if knobs.get("pack_k"):
        return int(knobs["pack_k"])
    return int(knobs["tile_j"][-1] if "tile_j" in knobs else knobs["tile_x"][-1])


def configs(name: str, shape: tuple[int, ...], tgt: Target) -> list[Any]:
    return ["default", hand_config(name, shape, tgt)]


def check_runs(name: str, shape: tuple[int, ...], tgt: Target) -> None:
    """Build default and hand-picked configs for ``tgt``, run them here, compare with numpy."""
    wl = get_workload(name)
    for cfg in configs(name, shape, tgt):
        mod = build_workload(name, shape, cfg, tgt)
        specs = mod.artifact.args
        arrays = seeded_inputs(specs, seed=3)
        mod(*arrays)
        ref = wl.reference(shape, [a for a, s in zip(arrays, specs) if s.role != "out"])
        outs = [a for a, s in zip(arrays, specs) if s.role == "out"]
        for got, want in zip(outs, ref, strict=True):
            msg = compare(got, want, 1e-4)
            assert msg is None, f"{name}{shape} {cfg} for {tgt.cpu}: {msg}"


def test_every_workload_has_a_small_shape() -> None:
    assert set(SMALL) == {w.name for w in list_workloads() if w.builtin}, "add a small shape for the new workload"


def test_isa_read_from_the_cpu_name() -> None:
    """A named CPU counts with the features it implies: the templates see its real lanes."""
    hsw, skx, arm = target(HASWELL), target(SKX), target(ARM)
    assert (hsw.vector_lanes_f32, hsw.num_vector_registers, hsw.simd().fma) == (8, 16, True)
    assert (skx.vector_lanes_f32, skx.num_vector_registers) == (16, 32)
    assert (arm.vector_lanes_f32, arm.num_vector_registers) == (4, 32)
    host = set(Target.host().features.split(","))
    assert hsw.runs_on_host() == ({"+avx2", "+fma"} <= host)
    assert skx.runs_on_host() == ("+avx512f" in host)
    # As a user writes it (no -mattr): the same lanes, registers and host check, and 8-lane (ymm) code.
    for text, done in ((HASWELL, hsw), (SKX, skx)):
        plain = Target.parse(text)
        assert (plain.vector_lanes_f32, plain.num_vector_registers, plain.runs_on_host()) == (
            done.vector_lanes_f32, done.num_vector_registers, done.runs_on_host()), text
        assert str(plain) == f"llvm -mtriple={plain.triple} -mcpu={plain.cpu}"  # what the log records is unchanged
    plain = Target.parse(HASWELL)
    wl = get_workload("matmul")
    cfg = wl.space((64, 64, 64), plain).from_json(hand_config("matmul", (64, 64, 64), hsw))
    asm = assembly(lower(*wl.instantiate((64, 64, 64), cfg, plain), "matmul"), plain)
    fmas = [ln for ln in asm.splitlines() if ln.strip().startswith("vfmadd")]
    assert fmas and all("%ymm" in ln for ln in fmas)


def test_register_tiles_fit_the_register_file() -> None:
    for lanes, regs in ((8, 16), (16, 32), (4, 32), (4, 16)):
        mr, nr = register_tile(lanes, regs)
        nv = nr // lanes
        assert nr % lanes == 0 and mr * nv + nv + 1 < regs, (lanes, regs, mr, nr)
    assert register_tile(8, 16) == (6, 16) and register_tile(16, 32) == (6, 64)


@pytest.mark.parametrize("text", [HASWELL, "llvm -mcpu=native", SKX, ARM])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hand_configs_of_the_benchmark_fit_every_target(text: str, case: tuple[Any, ...]) -> None:
    """The benchmark's shapes: its hand-picked config is a point of each target's space,
    with a register tile built from that target's lanes (the Zen 3 crash: 16-lane tiles)."""
    _, name, shape, _ = case
    tgt = target(text)
    cfg = hand_config(name, shape, tgt)
    get_workload(name).space(shape, tgt).from_json(cfg)  # raises if a knob value is not an option
    assert vector_tile(cfg) % tgt.vector_lanes_f32 == 0, cfg


@pytest.mark.parametrize("case", CASES_SMALL, ids=[f"{w}-{'x'.join(map(str, s))}" for w, s in CASES_SMALL])
def test_avx2_kernels_run_and_match_numpy(case: tuple[str, tuple[int, ...]]) -> None:
    tgt = target(HASWELL)
    if not tgt.runs_on_host():
        pytest.skip(f"this host ({Target.host().cpu}) has no AVX2/FMA to run -mcpu=haswell code")
    check_runs(*case, tgt)


@pytest.mark.parametrize("case", CASES_SMALL, ids=[f"{w}-{'x'.join(map(str, s))}" for w, s in CASES_SMALL])
def test_host_kernels_run_and_match_numpy(case: tuple[str, tuple[int, ...]]) -> None:
    check_runs(*case, target("llvm -mcpu=native"))


@pytest.mark.parametrize("case", CASES_SMALL, ids=[f"{w}-{'x'.join(map(str, s))}" for w, s in CASES_SMALL])
def test_avx512_kernels_run_here_or_assemble(case: tuple[str, tuple[int, ...]]) -> None:
    """Built for AVX-512 on any host; run where the host has it, else its assembly checked."""
    name, shape = case
    tgt = target(SKX)
    if tgt.runs_on_host():
        check_runs(name, shape, tgt)
    cfg = hand_config(name, shape, tgt)
    asm = assembly(build_workload(name, shape, cfg, tgt).func, tgt)
    assert "vfmadd" in asm, f"{name}: expected FMAs in the AVX-512 kernel"
    if vector_tile(cfg) % 16 == 0:  # a full 16-lane tile (a shape's narrow output may not allow one)
        assert "%zmm" in asm, f"{name}: expected 512-bit vectors in the AVX-512 kernel"


@pytest.mark.parametrize("case", CASES_SMALL, ids=[f"{w}-{'x'.join(map(str, s))}" for w, s in CASES_SMALL])
def test_avx2_assembly_stays_in_ymm(case: tuple[str, tuple[int, ...]]) -> None:
    """AVX2 code never touches zmm (it would fault on an AVX2-only CPU like Zen 3)."""
    name, shape = case
    tgt = target(HASWELL)
    cfg = hand_config(name, shape, tgt)
    asm = assembly(build_workload(name, shape, cfg, tgt).func, tgt)
    assert "%zmm" not in asm
    if vector_tile(cfg) % 8 == 0:
        assert "%ymm" in asm, f"{name}: expected 256-bit vectors in the AVX2 kernel"


@pytest.mark.parametrize("case", CASES_SMALL, ids=[f"{w}-{'x'.join(map(str, s))}" for w, s in CASES_SMALL])
def test_aarch64_objects_build(case: tuple[str, tuple[int, ...]]) -> None:
    name, shape = case
    tgt = target(ARM)
    for cfg in configs(name, shape, tgt):
        code = build_workload(name, shape, cfg, tgt).artifact.code
        assert code[:4] == b"\x7fELF" and code[18] == 183, "expected an ELF object for EM_AARCH64 (183)"


@pytest.mark.slow
@pytest.mark.parametrize("text", [HASWELL, "llvm -mcpu=native", SKX])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_benchmark_hand_configs_run_at_full_size(text: str, case: tuple[Any, ...]) -> None:
    """The benchmark's own shapes and hand-picked configs, built and checked where they run."""
    _, name, shape, _ = case
    tgt = target(text)
    if not tgt.runs_on_host():
        pytest.skip(f"{text} does not run on this host ({Target.host().cpu})")
    check_runs(name, shape, tgt)
