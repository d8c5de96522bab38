"""GEMM-family workloads: matmul, dense + bias + ReLU (fused), batch_matmul.

One template serves all three: an MR x NR register tile of the accumulator
(cache stage computed at the output's tile loop), the reduction loop outside
it, NR a multiple of the target's vector lanes, B optionally packed into
[N/NR][K][NR] panels so the inner loop streams memory, and a parallel outer
loop. Knob ranges follow the target (vector width, register count).

``j_outer`` puts the column tiles outside the row tiles. With packing, each
thread then packs its own B panels into a local buffer right before sweeping
every row of A over them, so the panels stay in that core's L2 instead of
being written to and re-read from a shared packed copy of all of B (for
dense 512x1024x1024 that copy is 4 MiB, re-read once per row tile). New knobs
are appended with the old behaviour as option 0, so indices recorded before
they existed still name the same configs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm import te
from farm.errors import ConfigError
from farm.target import Target
from farm.te.schedule import Schedule
from farm.te.tensor import Tensor
from farm.workloads.registry import template


def _nr_candidates(n: int, lanes: int) -> list[int]:
    c = [x for x in (lanes, 2 * lanes, 3 * lanes, 4 * lanes) if x <= max(n, lanes)]
    small = [x for x in (lanes // 4, lanes // 2) if x >= 1 and x not in c]
    return small + c if n >= lanes // 2 else [max(1, min(n, lanes))]


def define_gemm_space(cfg: Any, m: int, n: int, k: int, target: Target) -> None:
    lanes = target.vector_lanes_f32
    cfg.define_split("tile_i", m, 3, candidates=[[1, 2, 4, 8, 16, 32], [1, 2, 3, 4, 6, 8, 12, 16]])
    cfg.define_split("tile_j", n, 3, candidates=[[1, 2, 4, 8, 16], _nr_candidates(n, lanes)])
    cfg.define_split("tile_k", k, 2, candidates=[[1, 2, 4, 8, 16]])
    cfg.define_knob("order", [0, 1])
    cfg.define_knob("unroll", [0, 1, 2])
    cfg.define_knob("pack_b", [0, 1])
    cfg.define_knob("parallel", [0, 1, 2])
    cfg.define_knob("j_outer", [0, 1])


# A thread's local B panels beyond this would not stay in a core's L2 (and
# would crowd a worker thread's stack): pack those into the shared copy.
LOCAL_PANEL_BYTES = 1 << 20


def packed_b(b: Tensor, nr: int, batch: bool) -> Tensor:
    """B[.., K, N] -> [.., ceil(N/NR), K, NR], zero-padded at the tail."""
    *lead, kk, nn = b.shape
    no = -(-nn // nr)
    if batch:
        def f(bb: Any, jo: Any, kx: Any, ji: Any) -> Any:
            j = jo * nr + ji
            return b[bb, kx, j] if nn % nr == 0 else te.select(j < nn, b[bb, kx, j], 0.0)
        return te.compute((lead[0], no, kk, nr), f, name="B.packed")

    def g(jo: Any, kx: Any, ji: Any) -> Any:
        j = jo * nr + ji
        return b[kx, j] if nn % nr == 0 else te.select(j < nn, b[kx, j], 0.0)
    return te.compute((no, kk, nr), g, name="B.packed")


def schedule_gemm(cfg: Any, s: Schedule, acc: Tensor, out: Tensor, bp: Tensor | None) -> None:
    """Tile ``out``; compute the accumulator ``acc`` per register tile inside it."""
    so, sa = s[out], s[acc]
    *lead, i, j = so.op.axis
    io, im, ir = cfg["tile_i"].apply(s, out, i)
    jo, jm, jr = cfg["tile_j"].apply(s, out, j)
    j_outer = cfg["j_outer"] == 1
    first, second = (jo, io) if j_outer else (io, jo)
    so.reorder(*lead, first, second, im, jm, ir, jr)
    so.vectorize(jr)
    par = cfg["parallel"]
    top = first  # the loop whose body sweeps a fixed set of B panels when j_outer
    if par == 1:
        top = so.fuse(*lead, first) if lead else first
        so.parallel(top)
    elif par == 2:
        so.parallel(so.fuse(*lead, first, second))
    sa.compute_at(so, jm)
    *alead, xc, yc = sa.op.axis
    ko, ki = cfg["tile_k"].apply(s, acc, sa.op.reduce_axis[0])
    if cfg["order"] == 0:
        sa.reorder(*alead, ko, xc, ki, yc)
    else:
        sa.reorder(*alead, ko, ki, xc, yc)
    unroll = cfg["unroll"]
    if unroll >= 1:
        sa.unroll(xc)
    if unroll >= 2:
        sa.unroll(ki)
    sa.vectorize(yc)
    if bp is None:
        return
    sp = s[bp]
    *blead, pj, _pk, pji = sp.op.axis
    sp.vectorize(pji)
    kk, nr = bp.shape[-2], bp.shape[-1]
    panels = cfg["tile_j"].size[1]
    if j_outer and par != 2 and panels * kk * nr * 4 <= LOCAL_PANEL_BYTES:
        sp.compute_at(so, top)  # one pack per panel set, by the thread that uses it
    elif par:
        sp.parallel(sp.fuse(*blead, pj) if blead else pj)


def _gemm(
    cfg: Any, bt: int | None, m: int, n: int, k: int, target: Target, epilogue: bool
) -> tuple[Schedule, list[Tensor]]:
    define_gemm_space(cfg, m, n, k, target)
    nr = cfg["tile_j"].size[-1]
    batch = bt is not None
    a = te.placeholder((bt, m, k) if batch else (m, k), name="A")
    b = te.placeholder((bt, k, n) if batch else (k, n), name="B")
    kk = te.reduce_axis((0, k), name="k")
    bp = packed_b(b, nr, batch) if cfg["pack_b"] else None
    if batch:
        if bp is not None:
            c = te.compute(
                (bt, m, n), lambda q, i, j: te.sum(a[q, i, kk] * bp[q, j // nr, kk, j % nr], axis=kk), name="C"
            )
        else:
            c = te.compute((bt, m, n), lambda q, i, j: te.sum(a[q, i, kk] * b[q, kk, j], axis=kk), name="C")
    elif bp is not None:
        c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * bp[j // nr, kk, j % nr], axis=kk), name="C")
    else:
        c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * b[kk, j], axis=kk), name="C")
    if epilogue:
        bias = te.placeholder((n,), name="bias")
        out = te.compute((m, n), lambda i, j: te.maximum(c[i, j] + bias[j], 0.0), name="out")
        s = te.create_schedule(out.op)
        schedule_gemm(cfg, s, c, out, bp)
        return s, [a, b, bias, out]
    s = te.create_schedule(c.op)
    cc = s.cache_write(c, "local")
    schedule_gemm(cfg, s, cc, c, bp)
    return s, [a, b, c]


def _positive(names: Sequence[str]) -> Any:
    def check(args: Sequence[int]) -> None:
        for nm, v in zip(names, args):
            if v < 1:
                raise ConfigError(f"{nm} must be >= 1, got {v}")
    return check


@template("matmul", builtin=True, example=(512, 512, 512), doc="C[M,N] = A[M,K] @ B[K,N], float32",
          flops=lambda a: 2.0 * a[0] * a[1] * a[2], validate=_positive("MNK"))
def matmul(cfg: Any, M: int, N: int, K: int) -> tuple[Schedule, list[Tensor]]:
    return _gemm(cfg, None, M, N, K, cfg.target, False)


@template("dense_bias_relu", builtin=True, example=(512, 1024, 1024),
          doc="out = max(A[M,K] @ B[K,N] + bias[N], 0), fused epilogue",
          flops=lambda a: 2.0 * a[0] * a[1] * a[2], validate=_positive("MNK"))
def dense_bias_relu(cfg: Any, M: int, N: int, K: int) -> tuple[Schedule, list[Tensor]]:
    return _gemm(cfg, None, M, N, K, cfg.target, True)


@template("batch_matmul", builtin=True, example=(16, 128, 128, 128), doc="C[B,M,N] = A[B,M,K] @ B[B,K,N]",
          flops=lambda a: 2.0 * a[0] * a[1] * a[2] * a[3], validate=_positive(("B", "M", "N", "K")))
def batch_matmul(cfg: Any, B: int, M: int, N: int, K: int) -> tuple[Schedule, list[Tensor]]:
    return _gemm(cfg, B, M, N, K, cfg.target, False)
