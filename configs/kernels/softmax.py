"""A row softmax as a schedule template (AutoTVM style): the farm tunes its knobs."""
from farm import te, template


@template("rowsoftmax")
def rowsoftmax(cfg, n, m):
    """out[i, :] = softmax(A[i, :]), with max subtraction for range safety."""
    A = te.placeholder((n, m), name="A")
    k1 = te.reduce_axis((0, m), name="k1")
    mx = te.compute((n,), lambda i: te.max(A[i, k1], axis=k1), name="mx")
    e = te.compute((n, m), lambda i, j: te.exp(A[i, j] - mx[i]), name="e")
    k2 = te.reduce_axis((0, m), name="k2")
    s_ = te.compute((n,), lambda i: te.sum(e[i, k2], axis=k2), name="s")
    out = te.compute((n, m), lambda i, j: e[i, j] / s_[i], name="out")
    s = te.create_schedule(out.op)

    lanes = cfg.target.vector_lanes_f32
    cfg.define_knob("rows", [1, 2, 4, 8])          # rows per parallel task
    cfg.define_split("tile_col", m, num_outputs=2, candidates=[[lanes, 2 * lanes, 4 * lanes]])
    cfg.define_knob("keep_exp", [1, 0])             # materialize exp per row, or recompute it
    cfg.define_knob("parallel", [1, 0])

    so = s[out]
    i, j = so.op.axis
    io, ii = so.split(i, factor=cfg["rows"].val)
    jo, ji = cfg["tile_col"].apply(s, out, j)
    so.reorder(io, ii, jo, ji)
    so.vectorize(ji)
    if cfg["parallel"].val:
        so.parallel(io)
    s[mx].compute_at(so, ii)
    s[s_].compute_at(so, ii)
    if cfg["keep_exp"].val:
        s[e].compute_at(so, ii)
        s[e].vectorize(s[e].op.axis[1])
    else:
        s[e].compute_inline()
    return s, [A, out]
