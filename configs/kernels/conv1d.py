"""A 1-D convolution template with a numpy reference: devices compare with its outputs."""
import numpy as np

from farm import te, template


def conv1d_numpy(x, w):
    """out[c_out, t] = sum over c_in, tap of x[c_in, t + tap] * w[c_out, c_in, tap] (valid)."""
    taps = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), taps, axis=1)  # [cin, T, taps]
    return np.einsum("ctk,ock->ot", win, w.astype(np.float64))


@template("conv1d", reference=conv1d_numpy)
def conv1d(cfg, cin, cout, length, taps):
    X = te.placeholder((cin, length), name="X")
    W = te.placeholder((cout, cin, taps), name="W")
    rc = te.reduce_axis((0, cin), name="rc")
    rk = te.reduce_axis((0, taps), name="rk")
    out_len = length - taps + 1
    Y = te.compute((cout, out_len), lambda o, t: te.sum(X[rc, t + rk] * W[o, rc, rk], axis=[rc, rk]), name="Y")
    s = te.create_schedule(Y.op)

    lanes = cfg.target.vector_lanes_f32
    cfg.define_split("tile_o", cout, num_outputs=2, candidates=[[1, 2, 4, 8]])
    cfg.define_split("tile_t", out_len, num_outputs=2, candidates=[[lanes, 2 * lanes, 4 * lanes]])
    cfg.define_knob("order", [0, 1])                 # taps outside or inside the channel loop
    cfg.define_knob("parallel", [1, 0])

    YL = s.cache_write(Y, "local")
    sy = s[Y]
    o, t = sy.op.axis
    oo, oi = cfg["tile_o"].apply(s, Y, o)
    to, ti = cfg["tile_t"].apply(s, Y, t)
    sy.reorder(oo, to, oi, ti)
    sy.vectorize(ti)
    if cfg["parallel"].val:
        sy.parallel(oo)
    sl = s[YL]
    sl.compute_at(sy, to)
    lo, lt = sl.op.axis
    c, k = sl.op.reduce_axis
    if cfg["order"].val == 0:
        sl.reorder(c, k, lo, lt)
    else:
        sl.reorder(k, c, lo, lt)
    sl.unroll(lo)
    sl.vectorize(lt)
    return s, [X, W, Y]
