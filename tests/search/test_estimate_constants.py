"""The estimate's machine constants (probe or table) and its memory side: bytes moved per cache
level over bandwidth, against the FMA pipeline's time."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farm.compiler.lowering import lower
from farm.target import Target
from farm.tuning.constants import EstimateConstants, estimate_constants
from farm.tuning.estimate import estimate, nest_stores, work
from farm.tuning.features import FeatureExtractor, prior_of
from farm.tuning.replay import ReplayOracle
from farm.tuning.traffic import accesses, in_memory, line_bytes
from farm.workloads.registry import get_workload

from .conftest import FP, TARGET

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
ZEN4 = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=znver4 -mattr=+avx512f,+avx2,+fma"
AVX2 = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=znver3 -mattr=+avx2,+fma"
DEPTHWISE = (1, 64, 56, 56, 3, 1, 1)


def probe(l3: float = 50.0) -> dict[str, Any]:
    """A probe as devices.fingerprint.micro_probe writes it (version 2)."""
    return {"vector_registers": 32, "clock_ghz": 3.0,
            "fma": {"128": {"fma_per_ns": 6.0, "fmas_in_flight": 8.0, "latency_ns": 1.33},
                    "256": {"fma_per_ns": 6.0, "fmas_in_flight": 8.0, "latency_ns": 1.33},
                    "512": {"fma_per_ns": 3.0, "fmas_in_flight": 4.0, "latency_ns": 1.33}},
            "L1d": 32768, "L2": 1 << 20, "L3": 32 << 20,
            "bandwidth_gbps": {"L1": 190.0, "L2": 90.0, "L3": l3, "DRAM": 20.0},
            "l1_gbps_by_bits": {"128": 96.0, "256": 190.0, "512": 190.0}}


def test_constants_come_from_the_probe() -> None:
    c = estimate_constants({**FP, "cpu_name": "znver4", "probe": probe()}, ZEN4)
    assert c.source == "probe"
    assert (c.fma_rate(512), c.fma_rate(256), c.in_flight(512)) == (3.0, 6.0, 4.0)
    assert c.peak_flops_per_ns == 2 * 16 * 3.0 == 2 * 8 * 6.0
    assert c.gbps("L2") == 90.0 and c.gbps("DRAM") == 20.0
    assert c.load_rate(256) == pytest.approx(190.0 * 8 / 256) and c.load_rate(32) == pytest.approx(96.0 * 8 / 128)
    assert c.caches == (32768, 1 << 20, 8 << 20)  # sysfs sizes (the fingerprint's caches) first
    # A target without AVX-512 (code for it uses 256-bit vectors at most) sees only those widths.
    narrow = estimate_constants({**FP, "probe": probe()}, AVX2)
    assert [b for b, _ in narrow.fma_per_ns] == [128, 256]
    # ... and its 16 registers, though the machine's probe counted 32
    assert (c.vector_registers, narrow.vector_registers) == (32, 16)


def test_constants_fall_back_to_the_table_by_cpu_name() -> None:
    zen4 = estimate_constants({**FP, "cpu_name": "znver4"}, ZEN4)
    assert zen4.source == "table:znver4"
    # Zen 4 runs a 512-bit FMA on both 256-bit pipes: 16 lanes at half the rate, the same flops.
    assert zen4.fma_rate(512) == zen4.fma_rate(256) / 2
    emr = estimate_constants({**FP, "cpu_name": "emeraldrapids"}, ZEN4)
    assert emr.source == "table:emeraldrapids" and emr.fma_rate(512) == emr.fma_rate(256)
    # no CPU name in the fingerprint: the target's; an unknown one: generic
    assert estimate_constants({}, "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell").source == "table:haswell"
    assert estimate_constants({"cpu_name": "mystery-9"}, AVX2).source == "table:generic"
    arm = estimate_constants({}, "llvm -mtriple=aarch64-linux-gnu -mcpu=neoverse-n1 -mattr=+neon")
    assert arm.source == "table:neoverse-n1" and [b for b, _ in arm.fma_per_ns] == [128]
    # A probe from before bandwidth was measured (version 1): its FMA figures, the table's bandwidth.
    old = {k: v for k, v in probe().items() if k not in ("bandwidth_gbps", "l1_gbps_by_bits")}
    mixed = estimate_constants({**FP, "cpu_name": "znver4", "probe": old}, ZEN4)
    assert mixed.source == "probe+table:znver4" and mixed.fma_rate(512) == 3.0
    assert mixed.bandwidth == zen4.bandwidth
    # A probe that failed or was skipped (emulation) says nothing: the table.
    assert estimate_constants({"cpu_name": "znver4", "probe": {"skipped": "emulated"}}, ZEN4).source == "table:znver4"


def test_replay_datasets_without_probe_use_the_table_of_their_cpu() -> None:
    """The committed datasets were recorded before the probe: their fingerprints name a Zen 4."""
    o = ReplayOracle.from_log(DATA / "depthwise_conv2d_1x64x56x56x3x1x1.jsonl.gz")
    assert "probe" not in o.context.fingerprint and o.context.threads == 1  # recorded single-threaded
    fe = FeatureExtractor(o.context.workload, o.context.args, o.context.target, o.context.fingerprint, o.space(),
                          o.context.threads)
    assert fe.consts.source == "table:znver4" and fe.cores == 1


def test_constants_are_part_of_the_feature_cache_key() -> None:
    """Two devices that differ only in their probe get their own estimates (not a cached row)."""
    # depthwise's tensors (1.6 MB) overflow FP's L2 (1 MB): they stream from L3
    fast, slow = ({**FP, "cpu_name": "znver4", "probe": probe(l3=g)} for g in (50.0, 1.0))
    a = FeatureExtractor("depthwise_conv2d", DEPTHWISE, ZEN4, fast)
    b = FeatureExtractor("depthwise_conv2d", DEPTHWISE, ZEN4, slow)
    assert a.consts != b.consts and hash(a.consts) != hash(b.consts)
    x, y = prior_of(a.features([0])), prior_of(b.features([0]))
    assert x[0] != y[0]


def _estimate(workload: str, args: tuple[int, ...], target: str, consts: EstimateConstants, knobs: dict[str, Any],
              cores: int = 1) -> Any:
    wl = get_workload(workload)
    t = Target.parse(target)
    space = wl.space(args, t)
    sch, tensors = wl.instantiate(args, space.get(space.locate(-1, knobs)), t)
    return estimate(lower(sch, tensors, wl.name), consts, cores, t.vector_lanes_f32, wl.flops(args))


def test_memory_bound_configs_rank_by_bytes_moved() -> None:
    """Depthwise conv2d: padding in a separate pass writes the padded input and reads it back.
    On a core whose pipeline is fast and whose caches are small next to the tensors, the time
    is the bytes over bandwidth: the extra pass costs its bytes, and half the bandwidth doubles
    the time."""
    base = estimate_constants({"cpu_name": "znver4", "caches": {"L1d": 32768, "L2": 256 << 10}}, ZEN4)
    fast = dataclasses.replace(base, fma_per_ns=tuple((b, 1e3) for b, _ in base.fma_per_ns),
                               loads_per_ns=tuple((b, 1e3) for b, _ in base.loads_per_ns))
    knobs = {"tile_y": [-1, 7], "tile_x": [-1, 8], "unroll": 0, "parallel": 0}
    inline = _estimate("depthwise_conv2d", DEPTHWISE, ZEN4, fast, {**knobs, "pad_inline": 1})
    padded = _estimate("depthwise_conv2d", DEPTHWISE, ZEN4, fast, {**knobs, "pad_inline": 0})
    for e in (inline, padded):
        assert e.memory_s > 10 * e.core_s and e.seconds == e.memory_s
    # input and output once each (the output written: read for ownership, written back) vs the
    # padded copy written and read again on top
    assert 1.3 < padded.memory_s / inline.memory_s < 2.5
    assert padded.prior < inline.prior
    half = dataclasses.replace(fast, bandwidth=tuple((lv, g / 2) for lv, g in fast.bandwidth))
    slower = _estimate("depthwise_conv2d", DEPTHWISE, ZEN4, half, {**knobs, "pad_inline": 1})
    assert slower.memory_s == pytest.approx(2 * inline.memory_s)
    # Everything fits in a large L2 (a timed kernel runs back to back): no traffic from below L1's level.
    roomy = dataclasses.replace(fast, caches=(32768, 8 << 20, 0))
    assert _estimate("depthwise_conv2d", DEPTHWISE, ZEN4, roomy, {**knobs, "pad_inline": 1}).memory_s < inline.memory_s


def test_depthwise_prior_ranks_the_recorded_space() -> None:
    """Memory-bound, 2.2 flops per byte: the estimate no longer switches off, and its top
    tenth holds a near-best config of the 384 (3 of them are)."""
    from farm.tuning.search import make_tuner

    o = ReplayOracle.from_log(DATA / "depthwise_conv2d_1x64x56x56x3x1x1.jsonl.gz")
    t = make_tuner("xgb", o.space(), seed=0, context=o.context, pool=o.pool)
    assert t.estimate
    fe = FeatureExtractor(o.context.workload, o.context.args, o.context.target, o.context.fingerprint, o.space(),
                          o.context.threads)
    prior = prior_of(fe.features(o.pool))
    g = np.array([o.gflops[i] for i in o.pool])
    top = np.argsort(-prior, kind="stable")[: len(prior) // 10]
    assert (g[top] >= 0.95 * g.max()).sum() >= 1
    assert np.median(g[top]) > 1.3 * np.median(g)


def test_compute_bound_matmul_keeps_its_ranking() -> None:
    """Matmul 512 (2 threads): every near-best config is estimated compute-bound (the memory
    term below the FMA pipeline's), so the memory side leaves their ranking to the pipeline."""
    o = ReplayOracle.from_log(DATA / "matmul_512x512x512_2t.jsonl.gz")
    ctx = o.context
    consts = estimate_constants(ctx.fingerprint, ctx.target)
    good = [i for i in o.pool if o.gflops[i] >= 0.95 * o.best_known]
    wl, t = get_workload(ctx.workload), Target.parse(ctx.target)
    for i in good[:12]:
        sch, tensors = wl.instantiate(ctx.args, o.space().get(i), t)
        e = estimate(lower(sch, tensors, wl.name), consts, ctx.threads, t.vector_lanes_f32, wl.flops(ctx.args))
        assert e.memory_s < e.core_s and e.seconds == e.core_s, (i, e)


def test_estimate_reads_the_target_not_one_isa() -> None:
    """The same kernel on AVX2 (8 lanes, 16 registers) and AVX-512 tables: the estimate takes
    lanes and registers from there, never from this host."""
    knobs = {"tile_i": [-1, 1, 8], "tile_j": [-1, 1, 16], "tile_k": [-1, 4], "order": 1, "unroll": 1,
             "pack_b": 0, "parallel": 1, "j_outer": 0}
    avx2 = estimate_constants({"cpu_name": "haswell"}, "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell")
    e2 = _estimate("matmul", (256, 256, 256), "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell "
                   "-mattr=+avx2,+fma", avx2, knobs, cores=4)
    e5 = _estimate("matmul", (256, 256, 256), TARGET, estimate_constants(FP, TARGET), knobs, cores=4)
    assert e2.chains == 16 and e5.chains == 8  # 16 columns: two 8-lane vectors, or one 16-lane
    # 16 accumulators: AVX2's 16 registers hold 13 beside two B vectors and a broadcast of A,
    # AVX-512's 32 hold them all
    assert avx2.vector_registers == 16 and e2.spill_eff == pytest.approx((13 / 16) ** 4) and e5.spill_eff == 1.0


def test_avx2_gemm_tiles_fit_by_operands_too() -> None:
    """12 accumulators on AVX2 fit beside the operands as 4x24 (3 B vectors + 1 broadcast = 16)
    or 6x16, not as 3x32 (4 B vectors: 17, LLVM spills B to the stack; measured 140-165 GFLOPS
    against 180-185 on a Zen 4 running haswell code)."""
    hsw = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell -mattr=+avx,+avx2,+fma"
    avx2 = estimate_constants({"cpu_name": "haswell"}, hsw)

    def tile(mr: int, nr: int) -> float:
        knobs = {"tile_i": [-1, 4, mr], "tile_j": [-1, 1, nr], "tile_k": [-1, 4], "order": 1, "unroll": 1,
                 "pack_b": 1, "parallel": 1, "j_outer": 1}
        return _estimate("matmul", (480, 480, 480), hsw, avx2, knobs, cores=2).spill_eff

    assert tile(4, 24) == tile(6, 16) == tile(2, 32) == 1.0
    assert tile(3, 32) < 1.0


def _main_nest(workload: str, args: tuple[int, ...], target: str, knobs: dict[str, Any]) -> Any:
    wl = get_workload(workload)
    t = Target.parse(target)
    space = wl.space(args, t)
    sch, tensors = wl.instantiate(args, space.get(space.locate(-1, knobs)), t)
    return max(nest_stores(lower(sch, tensors, wl.name).body), key=work)


def test_a_threads_packed_panel_is_memory_and_padding_is_no_guard() -> None:
    """A thread's packed B panel is a local allocation of 256 KiB: the estimate reads it from the
    caches (it used to count its loads and its traffic as free, registers). 24 columns of 512:
    the last tile's padding guard is dropped by the code generator over a padded, packed B (no
    load can leave its buffer), so it costs no guard; unpacked, B's vector loads may stray past
    column 511 and are masked, a guarded body."""
    hsw = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell -mattr=+avx,+avx2,+fma"
    knobs = {"tile_i": [-1, 4, 4], "tile_j": [-1, 2, 24], "tile_k": [-1, 4], "order": 1, "unroll": 2,
             "pack_b": 1, "parallel": 1, "j_outer": 1}
    st, loops, guards = _main_nest("matmul", (512, 512, 512), hsw, knobs)
    ranges = {lp.var: (0, lp.extent - 1) for lp in loops}
    names = {a.buf.name for a in accesses(st, loops, ranges, 16 * 32)}
    assert "B.packed" in names and "A" in names and guards == 0
    assert not in_memory(st.buffer, 16 * 32)  # the 4x24 accumulator tile: registers
    _, _, unpacked_guards = _main_nest("matmul", (512, 512, 512), hsw, {**knobs, "pack_b": 0})
    assert unpacked_guards == 1


def test_a_tile_one_register_short_ranks_below_one_that_fits() -> None:
    """conv2d 1x1 (256 -> 64 channels, 56x56) as AVX2 code: 7 positions x 16 channels needs 14
    accumulators + 2 weight vectors + 1 broadcast = 17 of 16 registers and measured 67 GFLOPS
    on a Zen 4; 4 x 16 fits and measured 181. The one that fits must rank above."""
    hsw = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell -mattr=+avx,+avx2,+fma"
    avx2 = estimate_constants({"cpu_name": "haswell"}, hsw)
    knobs = {"tile_k": [-1, 8], "tile_y": [-1, 1], "tile_rc": [-1, 32], "order": 1, "unroll": 1, "pad_inline": 0,
             "parallel": 1, "pack_k": 16}
    args = (1, 256, 56, 56, 64, 1, 1, 0)
    fits = _estimate("conv2d", args, hsw, avx2, {**knobs, "tile_x": [-1, 4]}, cores=2)
    short = _estimate("conv2d", args, hsw, avx2, {**knobs, "tile_x": [-1, 7]}, cores=2)
    assert fits.spill_eff == 1.0 and short.chains == 14 and short.spill_eff < 0.8
    assert short.prior < fits.prior


def test_stencil_broadcasts_held_across_reduction_steps_need_registers() -> None:
    """conv2d 3x3 with the 3 rx steps inside the register body: 1x14 outputs share input values
    across the steps (x + rx: 16 of them held beside 14 accumulators and a weight vector). On
    AVX2's 16 registers they do not fit, LLVM reloads them at every use (measured on haswell
    code: 114-142 GFLOPS, spilled), so 2x4 outputs over channel steps (nothing shared; 172
    GFLOPS) rank above. AVX-512's 32 registers hold them all: no reloads there."""
    avx2_t = "llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=haswell -mattr=+avx,+avx2,+fma"
    zen3 = estimate_constants({"cpu_name": "znver3"}, avx2_t)
    zen4 = estimate_constants({"cpu_name": "znver4"}, ZEN4)
    conv = (1, 64, 56, 56, 64, 3, 1, 1)
    wide = {"tile_k": [-1, 16], "tile_y": [-1, 1], "tile_x": [-1, 14], "tile_rc": [-1, 8], "order": 1,
            "unroll": 0, "pad_inline": 1, "parallel": 2}
    small = {"tile_k": [-1, 8], "tile_y": [-1, 2], "tile_x": [-1, 4], "tile_rc": [-1, 8], "order": 0,
             "unroll": 2, "pad_inline": 0, "parallel": 2}
    w2 = _estimate("conv2d", conv, avx2_t, zen3, {**wide, "pack_k": 8}, cores=2)
    s2 = _estimate("conv2d", conv, avx2_t, zen3, {**small, "pack_k": 8}, cores=2)
    assert w2.chains == 14 and s2.chains == 8 and w2.spill_eff == 1.0  # the accumulators fit
    assert w2.prior < s2.prior
    w5 = _estimate("conv2d", conv, ZEN4, zen4, {**wide, "pack_k": 16}, cores=2)
    s5 = _estimate("conv2d", conv, ZEN4, zen4, {**small, "pack_k": 16}, cores=2)
    assert w5.prior > s5.prior


def test_contiguous_rows_count_their_bytes_not_a_line_each() -> None:
    """A box of a row-major buffer costs the lines of its contiguous runs: where the inner
    dimensions are covered whole the rows of the next one are back to back. A 3x3 filter's rows
    are 12 bytes; a line per row made a conv2d weight read 5x its size (49 MiB for 9 MiB)."""
    w = [512, 512, 3, 3]
    assert line_bytes(w, w, 4) == 512 * 512 * 9 * 4
    assert line_bytes([1, 4, 3, 3], w, 4) == 3 * 64  # 4 channels' 144 contiguous bytes
    assert line_bytes([8, 16], [512, 512], 4) == 8 * 64  # partial rows: a run each
    assert line_bytes([8, 1], [512, 512], 4) == 8 * 64  # a column: a line per element

