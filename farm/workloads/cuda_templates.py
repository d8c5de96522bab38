"""CUDA schedule templates for matmul and conv2d (selected when the target kind is cuda).

Both follow the classic shared-memory tiling (TVM's ``conv2d_direct`` / the
CUTLASS-style SIMT GEMM, without virtual threads):

- the output is tiled three ways per spatial axis: blocks (``blockIdx``),
  threads of a block (``threadIdx``), and a per-thread register tile;
- the accumulator is a ``local`` cache stage computed at the innermost thread
  loop; with ``unroll`` its loops are unrolled, so every index is a constant and
  LLVM keeps the tile in registers instead of local memory;
- the reduction is split; per outer step the block's tiles of the inputs are
  copied into ``shared`` memory cooperatively (the copy loop fused, split by
  the block's thread count and bound to the same thread indices, optionally
  vectorized), with barriers inserted by the code generator.

Knob ranges keep the block within 1024 threads; shared tiles above 48 KiB (large
conv tiles) are rejected at build time as invalid configs, as in AutoTVM.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from farm import te
from farm.target import Target
from farm.te.expr import IterVar
from farm.te.schedule import Schedule, Stage
from farm.te.tensor import Tensor
from farm.workloads import conv, gemm  # noqa: F401  (registers the CPU workloads this extends)
from farm.workloads import conv as _conv
from farm.workloads.conv import out_size
from farm.workloads.registry import _REGISTRY, register

_THREAD_AXES = ("threadIdx.z", "threadIdx.y", "threadIdx.x")


def cooperative_fetch(s: Schedule, stage: Stage, threads: Sequence[int], vec: int) -> None:
    """Copy loop of a shared stage: all its axes fused, split over the block's
    threads (outermost thread axis first, as in ``threads``), innermost
    ``vec`` elements of the last axis vectorized when ``vec`` > 1."""
    axes = list(stage.op.axis)
    last = axes[-1]
    inner_vec: IterVar | None = None
    if vec > 1 and last.extent % vec == 0:
        last, inner_vec = stage.split(last, factor=vec)
    fused = stage.fuse(*axes[:-1], last) if len(axes) > 1 else last
    total = 1
    for t in threads:
        total *= t
    _, rest = stage.split(fused, factor=total)
    tags = _THREAD_AXES[-len(threads):]
    for n, tag in enumerate(tags):
        if n + 1 < len(threads):
            below = 1
            for u in threads[n + 1:]:
                below *= u
            part, rest = stage.split(rest, factor=below)
            stage.bind(part, tag)
        else:
            stage.bind(rest, tag)
    if inner_vec is not None:
        stage.vectorize(inner_vec)


# --- matmul -----------------------------------------------------------------------

def _matmul_cuda(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
    m, n, k = args
    cfg.define_split("tile_i", m, 3, candidates=[[1, 2, 4, 8, 16, 32], [1, 2, 4, 8]])
    cfg.define_split("tile_j", n, 3, candidates=[[1, 2, 4, 8, 16, 32], [1, 2, 4, 8]])
    cfg.define_split("tile_k", k, 2, candidates=[[1, 2, 4, 8, 16]])
    cfg.define_knob("stage_a", [1, 0])  # A tile through shared memory
    cfg.define_knob("stage_b", [1, 0])
    cfg.define_knob("vec", [1, 2, 4])  # vector width of the shared copies and the thread tile's columns
    cfg.define_knob("unroll", [1, 0])

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    kk = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * b[kk, j], axis=kk), name="C")
    s = te.create_schedule(c.op)
    cl = s.cache_write(c, "local")
    shared = [s.cache_read(t, "shared", [cl]) for t, on in ((a, cfg["stage_a"]), (b, cfg["stage_b"])) if on]

    sc = s[c]
    i, j = sc.op.axis
    by, ty, ti = cfg["tile_i"].apply(s, c, i)
    bx, tx, tj = cfg["tile_j"].apply(s, c, j)
    sc.reorder(by, bx, ty, tx, ti, tj)
    for ax, tag in ((by, "blockIdx.y"), (bx, "blockIdx.x"), (ty, "threadIdx.y"), (tx, "threadIdx.x")):
        sc.bind(ax, tag)
    vec = cfg["vec"]
    nthread_y, nthread_x = cfg["tile_i"].size[1], cfg["tile_j"].size[1]
    tn = cfg["tile_j"].size[2]

    scl = s[cl]
    scl.compute_at(sc, tx)
    xc, yc = scl.op.axis
    ko, ki = cfg["tile_k"].apply(s, cl, scl.op.reduce_axis[0])
    scl.reorder(ko, ki, xc, yc)
    if cfg["unroll"]:
        scl.unroll(ki)
        scl.unroll(xc)
        sc.unroll(ti)
    if vec > 1 and tn % vec == 0:
        # A row of the thread tile as one vector: ld.shared.v{2,4} of B and st.global.v{2,4} of C.
        yo, yv = scl.split(yc, factor=vec)
        if cfg["unroll"]:
            scl.unroll(yo)
        scl.vectorize(yv)
        tjo, tjv = sc.split(tj, factor=vec)
        if cfg["unroll"]:
            sc.unroll(tjo)
        sc.vectorize(tjv)
    elif cfg["unroll"]:
        scl.unroll(yc)
        sc.unroll(tj)
    for t in shared:
        st = s[t]
        st.compute_at(scl, ko)
        cooperative_fetch(s, st, (nthread_y, nthread_x), vec)
    return s, [a, b, c]


# --- conv2d (NCHW) --------------------------------------------------------------

def _conv2d_cuda(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
    n, c, h, w, k, r, stride, pad = args
    oh, ow = out_size(h, r, stride, pad), out_size(w, r, stride, pad)
    cfg.define_split("tile_f", k, 3, candidates=[[1, 2, 4], [1, 2, 4, 8]])
    cfg.define_split("tile_y", oh, 3, candidates=[[1, 2, 4, 8], [1, 2, 4]])
    cfg.define_split("tile_x", ow, 3, candidates=[[1, 2, 4, 8, 16, 32], [1, 2, 4]])
    cfg.define_split("tile_rc", c, 2, candidates=[[1, 2, 4, 8, 16]])
    cfg.define_knob("stage_data", [1, 0])
    cfg.define_knob("stage_weight", [1, 0])
    cfg.define_knob("unroll", [1, 0])

    data = te.placeholder((n, c, h, w), name="data")
    weight = te.placeholder((k, c, r, r), name="weight")
    padded = _conv._pad(data, pad)
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, r), name="ry")
    rx = te.reduce_axis((0, r), name="rx")
    out = te.compute(
        (n, k, oh, ow),
        lambda b, f, y, x: te.sum(padded[b, rc, y * stride + ry, x * stride + rx] * weight[f, rc, ry, rx],
                                  axis=[rc, ry, rx]),
        name="conv",
    )
    s = te.create_schedule(out.op)
    ol = s.cache_write(out, "local")
    shared = []
    if cfg["stage_data"]:
        shared.append(s.cache_read(padded, "shared", [ol]))
    if cfg["stage_weight"]:
        shared.append(s.cache_read(weight, "shared", [ol]))
    if padded is not data:
        s[padded].compute_inline()  # zero padding happens in the shared copy (or the load)

    so = s[out]
    b, f, y, x = so.op.axis
    bf, tf, fi = cfg["tile_f"].apply(s, out, f)
    by, ty, yi = cfg["tile_y"].apply(s, out, y)
    bx, tx, xi = cfg["tile_x"].apply(s, out, x)
    so.reorder(b, bf, by, bx, tf, ty, tx, fi, yi, xi)
    bz = so.fuse(b, bf)
    for ax, tag in ((bz, "blockIdx.z"), (by, "blockIdx.y"), (bx, "blockIdx.x"),
                    (tf, "threadIdx.z"), (ty, "threadIdx.y"), (tx, "threadIdx.x")):
        so.bind(ax, tag)
    threads = (cfg["tile_f"].size[1], cfg["tile_y"].size[1], cfg["tile_x"].size[1])

    sl = s[ol]
    sl.compute_at(so, tx)
    _, cf, cy, cx = sl.op.axis
    crc, cry, crx = sl.op.reduce_axis
    rco, rci = cfg["tile_rc"].apply(s, ol, crc)
    sl.reorder(rco, rci, cry, crx, cf, cy, cx)
    if cfg["unroll"]:
        for ax in (crx, cf, cy, cx):
            sl.unroll(ax)
        for ax in (fi, yi, xi):
            so.unroll(ax)
    for t in shared:
        st = s[t]
        st.compute_at(sl, rco)
        cooperative_fetch(s, st, threads, 1)
    return s, [data, weight, out]


def _attach(name: str, template: Any) -> None:
    register(dataclasses.replace(_REGISTRY[name], cuda_template=template))


_attach("matmul", _matmul_cuda)
_attach("conv2d", _conv2d_cuda)
