"""Convolution workloads (NCHW): conv2d and depthwise conv2d.

The conv2d template has two layouts (knob ``pack_k``, appended last so that
older records keep their meaning with its option 0):

* ``pack_k = 0``: vectorize along output width (unit stride in the input for
  stride 1), keep a KR x YR x XR tile of outputs in registers (a cache stage
  computed at the x-tile loop), broadcast one weight per output channel.
* ``pack_k = KV`` (a multiple of the vector lanes dividing K): vectorize along
  output channels, as TVM's NCHWc convolutions do. The weights are packed to
  ``[K/KV, C, R, R, KV]`` (a copy of K*C*R*R floats, small beside the
  convolution), the register tile is YR x XR vectors of KV channels, and each
  FMA broadcasts one input value: input loads are scalar, so a stride of 2 or
  a narrow output (7x7) costs nothing in vector lanes, where the first layout
  gathers or wastes lanes. The result is computed in ``[N, K/KV, OH, OW, KV]``
  and transposed into the NCHW output (one pass over the output). ``tile_k``
  has no part in this layout.

Both pad the input once at root (or inline, a knob).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm import te
from farm.errors import ConfigError
from farm.target import Target
from farm.te.schedule import Schedule
from farm.te.tensor import Tensor
from farm.workloads import references
from farm.workloads.registry import template

out_size = references.conv_out_size


def _pad(data: Tensor, pad: int) -> Tensor:
    n, c, h, w = data.shape
    if pad == 0:
        return data
    return te.compute(
        (n, c, h + 2 * pad, w + 2 * pad),
        lambda b, ch, y, x: te.select(
            te.all_of(y >= pad, y < h + pad, x >= pad, x < w + pad), data[b, ch, y - pad, x - pad], 0.0),
        name="pad",
    )


def _x_candidates(ow: int, lanes: int) -> list[int]:
    c = {lanes // 2, lanes, 2 * lanes} | {d for d in range(2, min(ow, 4 * lanes) + 1) if ow % d == 0 and d >= 4}
    return sorted(x for x in c if 1 <= x <= max(ow, 1))[:8] or [1]


def _schedule_pad(cfg: Any, s: Schedule, data: Tensor, padded: Tensor) -> None:
    """The padded input: inlined into its readers (``pad_inline``) or one pass at root, over the
    threads when the convolution runs parallel."""
    if padded is data:
        return
    if cfg["pad_inline"]:
        s[padded].compute_inline()
    elif cfg["parallel"]:
        sp = s[padded]
        sp.parallel(sp.fuse(sp.op.axis[0], sp.op.axis[1]))


def _schedule_tile(cfg: Any, s: Schedule, cc: Tensor, lead: list[Any], tile: list[Any], vec: Any) -> None:
    """The register tile's cache stage: the reduction split by ``tile_rc`` and ordered by ``order``
    outside the ``tile`` loops (unrolled by ``unroll``) and the vectorized one, ``vec``."""
    sc = s[cc]
    crc, cry, crx = sc.op.reduce_axis
    rco, rci = cfg["tile_rc"].apply(s, cc, crc)
    reduction = {0: (rco, cry, crx, rci), 1: (rco, rci, cry, crx), 2: (rco, cry, rci, crx)}[cfg["order"]]
    sc.reorder(*lead, *reduction, *tile, vec)
    if cfg["unroll"] >= 1:
        for lp in tile:
            sc.unroll(lp)
    if cfg["unroll"] >= 2:
        sc.unroll(crx)
    sc.vectorize(vec)


def _conv_template(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
    n, c, h, w, k, r, stride, pad = args
    oh, ow = out_size(h, r, stride, pad), out_size(w, r, stride, pad)
    lanes = target.vector_lanes_f32
    cfg.define_split("tile_k", k, 2, candidates=[[1, 2, 4, 8, 16, 32]])
    cfg.define_split("tile_y", oh, 2, candidates=[[1, 2, 4, 7, 8, 14]])
    cfg.define_split("tile_x", ow, 2, candidates=[_x_candidates(ow, lanes)])
    cfg.define_split("tile_rc", c, 2, candidates=[[1, 2, 4, 8, 16, 32, 64]])
    cfg.define_knob("order", [0, 1, 2])
    cfg.define_knob("unroll", [0, 1, 2])
    cfg.define_knob("pad_inline", [0, 1] if pad else [0])
    cfg.define_knob("parallel", [0, 1, 2])
    cfg.define_knob("pack_k", [0] + ([v for v in (lanes, 2 * lanes) if k % v == 0] if lanes >= 4 else []))

    data = te.placeholder((n, c, h, w), name="data")
    weight = te.placeholder((k, c, r, r), name="weight")
    padded = _pad(data, pad)
    if cfg["pack_k"]:
        return _packed_conv(cfg, args, data, weight, padded)
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, r), name="ry")
    rx = te.reduce_axis((0, r), name="rx")
    out = te.compute(
        (n, k, oh, ow),
        lambda b, f, y, x: te.sum(
            padded[b, rc, y * stride + ry, x * stride + rx] * weight[f, rc, ry, rx], axis=[rc, ry, rx]
        ),
        name="conv",
    )
    s = te.create_schedule(out.op)
    cc = s.cache_write(out, "local")
    so, sc = s[out], s[cc]
    b, f, y, x = so.op.axis
    fo, fi = cfg["tile_k"].apply(s, out, f)
    yo, yi = cfg["tile_y"].apply(s, out, y)
    xo, xi = cfg["tile_x"].apply(s, out, x)
    so.reorder(b, fo, yo, xo, fi, yi, xi)
    so.vectorize(xi)
    par = cfg["parallel"]
    if par == 1:
        so.parallel(so.fuse(b, fo))
    elif par == 2:
        so.parallel(so.fuse(b, fo, yo))
    sc.compute_at(so, xo)
    cb, cf, cy, cx = sc.op.axis
    _schedule_tile(cfg, s, cc, [cb], [cf, cy], cx)
    _schedule_pad(cfg, s, data, padded)
    return s, [data, weight, out]


def _packed_conv(cfg: Any, args: Sequence[int], data: Tensor, weight: Tensor, padded: Tensor
                 ) -> tuple[Schedule, list[Tensor]]:
    """The output-channel-vectorized layout (``pack_k`` = KV > 0); see the module docstring."""
    n, c, h, w, k, r, stride, pad = args
    oh, ow = out_size(h, r, stride, pad), out_size(w, r, stride, pad)
    kv = cfg["pack_k"]
    wp = te.compute((k // kv, c, r, r, kv), lambda fo, ch, y, x, fi: weight[fo * kv + fi, ch, y, x],
                    name="weight.packed")
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, r), name="ry")
    rx = te.reduce_axis((0, r), name="rx")
    cp = te.compute(
        (n, k // kv, oh, ow, kv),
        lambda b, fo, y, x, fi: te.sum(
            padded[b, rc, y * stride + ry, x * stride + rx] * wp[fo, rc, ry, rx, fi], axis=[rc, ry, rx]
        ),
        name="conv.packed",
    )
    out = te.compute((n, k, oh, ow), lambda b, f, y, x: cp[b, f // kv, y, x, f % kv], name="conv")
    s = te.create_schedule(out.op)
    par = cfg["parallel"]
    so = s[out]
    b, f, y, x = so.op.axis
    fo, fi = so.split(f, factor=kv)
    so.reorder(b, fo, y, fi, x)
    so.vectorize(x)
    if par:
        so.parallel(so.fuse(b, fo))
    cc = s.cache_write(cp, "local")
    sp, sc = s[cp], s[cc]
    pb, pfo, py, px, pfi = sp.op.axis
    pyo, pyi = cfg["tile_y"].apply(s, cp, py)
    pxo, pxi = cfg["tile_x"].apply(s, cp, px)
    sp.reorder(pb, pfo, pyo, pxo, pyi, pxi, pfi)
    sp.vectorize(pfi)
    if par == 1:
        sp.parallel(sp.fuse(pb, pfo))
    elif par == 2:
        sp.parallel(sp.fuse(pb, pfo, pyo))
    sc.compute_at(sp, pxo)
    cb, cfo, cy, cx, cfi = sc.op.axis
    _schedule_tile(cfg, s, cc, [cb, cfo], [cy, cx], cfi)
    sw = s[wp]
    sw.vectorize(sw.op.axis[-1])
    if par:
        sw.parallel(sw.op.axis[0])
    _schedule_pad(cfg, s, data, padded)
    return s, [data, weight, out]


def _depthwise_template(cfg: Any, args: Sequence[int], target: Target) -> tuple[Schedule, list[Tensor]]:
    n, c, h, w, r, stride, pad = args
    oh, ow = out_size(h, r, stride, pad), out_size(w, r, stride, pad)
    lanes = target.vector_lanes_f32
    cfg.define_split("tile_y", oh, 2, candidates=[[1, 2, 4, 7, 8, 14]])
    cfg.define_split("tile_x", ow, 2, candidates=[_x_candidates(ow, lanes)])
    cfg.define_knob("unroll", [0, 1])
    cfg.define_knob("pad_inline", [0, 1] if pad else [0])
    cfg.define_knob("parallel", [0, 1])

    data = te.placeholder((n, c, h, w), name="data")
    weight = te.placeholder((c, 1, r, r), name="weight")
    padded = _pad(data, pad)
    ry = te.reduce_axis((0, r), name="ry")
    rx = te.reduce_axis((0, r), name="rx")
    out = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, x: te.sum(
            padded[b, ch, y * stride + ry, x * stride + rx] * weight[ch, 0, ry, rx], axis=[ry, rx]
        ),
        name="dwconv",
    )
    s = te.create_schedule(out.op)
    cc = s.cache_write(out, "local")
    so, sc = s[out], s[cc]
    b, ch, y, x = so.op.axis
    yo, yi = cfg["tile_y"].apply(s, out, y)
    xo, xi = cfg["tile_x"].apply(s, out, x)
    so.reorder(b, ch, yo, xo, yi, xi)
    so.vectorize(xi)
    if cfg["parallel"]:
        so.parallel(so.fuse(b, ch))
    sc.compute_at(so, xo)
    cb, cch, cy, cx = sc.op.axis
    cry, crx = sc.op.reduce_axis
    sc.reorder(cb, cch, cry, crx, cy, cx)
    if cfg["unroll"]:
        sc.unroll(crx)
        sc.unroll(cy)
    sc.vectorize(cx)
    _schedule_pad(cfg, s, data, padded)
    return s, [data, weight, out]


def _check_conv(names: Sequence[str], hw: tuple[int, int], r_i: int, s_i: int, p_i: int) -> Any:
    def check(a: Sequence[int]) -> None:
        for nm, v in zip(names, a):
            if v < (0 if nm == "pad" else 1):
                raise ConfigError(f"{nm} must be {'>= 0' if nm == 'pad' else '>= 1'}, got {v}")
        for d in hw:
            if out_size(a[d], a[r_i], a[s_i], a[p_i]) < 1:
                raise ConfigError(f"kernel {a[r_i]} with pad {a[p_i]} does not fit input size {a[d]}")
    return check


_CONV_P = ("N", "C", "H", "W", "K", "R", "stride", "pad")
_DW_P = ("N", "C", "H", "W", "R", "stride", "pad")


def _conv_flops(a: Sequence[int]) -> float:
    return 2.0 * a[0] * a[4] * out_size(a[2], a[5], a[6], a[7]) * out_size(a[3], a[5], a[6], a[7]) * a[1] * a[5] * a[5]


def _dw_flops(a: Sequence[int]) -> float:
    return 2.0 * a[0] * a[1] * out_size(a[2], a[4], a[5], a[6]) * out_size(a[3], a[4], a[5], a[6]) * a[4] * a[4]


@template("conv2d", builtin=True, example=(1, 64, 56, 56, 64, 3, 1, 1),
          doc="NCHW conv2d: out[N,K,OH,OW], weight[K,C,R,R]", flops=_conv_flops,
          validate=_check_conv(_CONV_P, (2, 3), 5, 6, 7))
def conv2d(cfg: Any, N: int, C: int, H: int, W: int, K: int, R: int, stride: int, pad: int
           ) -> tuple[Schedule, list[Tensor]]:
    return _conv_template(cfg, (N, C, H, W, K, R, stride, pad), cfg.target)


@template("depthwise_conv2d", builtin=True, example=(1, 64, 56, 56, 3, 1, 1),
          doc="NCHW depthwise conv2d, multiplier 1: weight[C,1,R,R]", flops=_dw_flops,
          validate=_check_conv(_DW_P, (2, 3), 4, 5, 6))
def depthwise_conv2d(cfg: Any, N: int, C: int, H: int, W: int, R: int, stride: int, pad: int
                     ) -> tuple[Schedule, list[Tensor]]:
    return _depthwise_template(cfg, (N, C, H, W, R, stride, pad), cfg.target)
