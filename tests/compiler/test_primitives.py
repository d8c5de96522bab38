"""Hand-written schedules through every primitive, checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import farm
from farm import te


def _mm(m: int, n: int, k: int):  # type: ignore[no-untyped-def]
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    kk = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * b[kk, j], axis=kk), name="C")
    return a, b, c


def _run_mm(s, args, m, n, k, rtol=1e-4):  # type: ignore[no-untyped-def]
    mod = farm.build(s, args)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (m, k)).astype("float32")
    b = rng.uniform(-1, 1, (k, n)).astype("float32")
    c = np.zeros((m, n), dtype="float32")
    mod(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=rtol, atol=1e-4)
    return mod


def test_default_schedule() -> None:
    a, b, c = _mm(13, 7, 5)
    _run_mm(te.create_schedule(c.op), [a, b, c], 13, 7, 5)


@pytest.mark.parametrize("m,n,k", [(64, 64, 64), (67, 45, 33), (5, 3, 2)])
def test_register_tiled_parallel(m: int, n: int, k: int) -> None:
    a, b, c = _mm(m, n, k)
    s = te.create_schedule(c.op)
    cc = s.cache_write(c, "local")
    io, jo, ii, ji = s[c].tile(c.op.axis[0], c.op.axis[1], 4, 16)
    s[c].parallel(s[c].fuse(io, jo))
    s[c].vectorize(ji)
    s[cc].compute_at(s[c], s[c].leaf[0])
    xc, yc = s[cc].op.axis
    ko, ki = s[cc].split(s[cc].op.reduce_axis[0], factor=4)
    s[cc].reorder(ko, xc, ki, yc)
    s[cc].unroll(ki)
    s[cc].vectorize(yc)
    mod = _run_mm(s, [a, b, c], m, n, k)
    text = mod.lowered()
    assert "parallel" in text and "vectorize" in text and "C.local" in text


def test_split_nparts_and_fuse() -> None:
    a, b, c = _mm(30, 22, 9)
    s = te.create_schedule(c.op)
    i, j = c.op.axis
    io, ii = s[c].split(i, nparts=4)
    f = s[c].fuse(ii, j)
    fo, fi = s[c].split(f, factor=7)
    s[c].unroll(fi)
    _run_mm(s, [a, b, c], 30, 22, 9)


def test_cache_read_and_inline_epilogue() -> None:
    m, n, k = 33, 40, 17
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    bias = te.placeholder((n,), name="bias")
    kk = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * b[kk, j], axis=kk), name="C")
    d = te.compute((m, n), lambda i, j: c[i, j] + bias[j], name="D")
    out = te.compute((m, n), lambda i, j: te.maximum(d[i, j], 0.0), name="out")
    s = te.create_schedule(out.op)
    s[d].compute_inline()
    ar = s.cache_read(a, "local", [c])
    xo, yo, xi, yi = s[out].tile(out.op.axis[0], out.op.axis[1], 8, 16)
    s[c].compute_at(s[out], yo)
    s[ar].compute_at(s[c], s[c].leaf[0])
    s[out].vectorize(yi)
    mod = farm.build(s, [a, b, bias, out])
    rng = np.random.default_rng(1)
    av = rng.uniform(-1, 1, (m, k)).astype("float32")
    bv = rng.uniform(-1, 1, (k, n)).astype("float32")
    biasv = rng.uniform(-1, 1, (n,)).astype("float32")
    o = np.zeros((m, n), dtype="float32")
    mod(av, bv, biasv, o)
    np.testing.assert_allclose(o, np.maximum(av @ bv + biasv, 0), rtol=1e-4, atol=1e-5)


def test_elementwise_math_and_select() -> None:
    n = 37
    x = te.placeholder((n,), name="x")
    y = te.compute((n,), lambda i: te.select(x[i] > 0.0, te.sqrt(x[i]) + te.exp(x[i] * 0.5), -x[i] / 2.0), name="y")
    z = te.compute((n,), lambda i: te.sigmoid(y[i]) + te.tanh(y[i]) + te.abs(x[i]), name="z")
    s = te.create_schedule(z.op)
    s[y].compute_inline()
    zo, zi = s[z].split(z.op.axis[0], factor=8)
    s[z].vectorize(zi)
    mod = farm.build(s, [x, z])
    xv = np.random.default_rng(2).uniform(-2, 2, n).astype("float32")
    zv = np.zeros(n, dtype="float32")
    mod(xv, zv)
    yv = np.where(xv > 0, np.sqrt(np.abs(xv)) + np.exp(xv * 0.5), -xv / 2)
    want = 1 / (1 + np.exp(-yv)) + np.tanh(yv) + np.abs(xv)
    np.testing.assert_allclose(zv, want, rtol=1e-5, atol=1e-6)


def test_max_reduction_and_casts() -> None:
    m, n = 9, 31
    x = te.placeholder((m, n), name="x", dtype="int8")
    r = te.reduce_axis((0, n), name="r")
    mx = te.compute((m,), lambda i: te.max(x[i, r].astype("float32"), axis=r), name="mx")
    s = te.create_schedule(mx.op)
    mod = farm.build(s, [x, mx])
    xv = np.random.default_rng(3).integers(-100, 100, (m, n)).astype("int8")
    out = np.zeros(m, dtype="float32")
    mod(xv, out)
    np.testing.assert_array_equal(out, xv.max(axis=1).astype("float32"))


def test_int8_dot_accumulates_in_int32() -> None:
    n = 300
    x = te.placeholder((n,), name="x", dtype="int8")
    w = te.placeholder((n,), name="w", dtype="int8")
    r = te.reduce_axis((0, n), name="r")
    acc = te.compute((1,), lambda _: te.sum(x[r].astype("int32") * w[r].astype("int32"), axis=r), name="acc")
    mod = farm.build(te.create_schedule(acc.op), [x, w, acc])
    rng = np.random.default_rng(4)
    xv = rng.integers(-128, 127, n).astype("int8")
    wv = rng.integers(-128, 127, n).astype("int8")
    out = np.zeros(1, dtype="int32")
    mod(xv, wv, out)
    assert out[0] == int(np.dot(xv.astype(np.int64), wv.astype(np.int64)))


def test_time_evaluator_semantics() -> None:
    a, b, c = _mm(32, 32, 32)
    mod = farm.build(te.create_schedule(c.op), [a, b, c])
    arrs = [np.ones((32, 32), "float32"), np.ones((32, 32), "float32"), np.zeros((32, 32), "float32")]
    f = mod.time_evaluator(number=1, repeat=4, min_repeat_ms=20)
    costs = f(*arrs)
    assert len(costs) == 4 and all(c > 0 for c in costs)
    k = mod._loaded()
    assert k.last_number > 1, "number must be raised until a repeat lasts min_repeat_ms"
    assert k.last_number * min(costs) * 1e3 >= 20 * 0.5


def test_float16_storage_and_mixed_precision_reduction() -> None:
    n = 37
    a = te.placeholder((n,), dtype="float16", name="a")
    b = te.placeholder((n,), dtype="float16", name="b")
    c = te.compute((n,), lambda i: a[i] * b[i] + a[i], name="c")
    s = te.create_schedule(c.op)
    _, inner = s[c].split(c.op.axis[0], factor=8)
    s[c].vectorize(inner)
    mod = farm.build(s, [a, b, c])
    rng = np.random.default_rng(5)
    av, bv = rng.random(n).astype("f2"), rng.random(n).astype("f2")
    cv = np.zeros(n, "f2")
    mod(av, bv, cv)
    np.testing.assert_allclose(cv.astype("f4"), (av * bv + av).astype("f4"), rtol=2e-3, atol=2e-3)

    m = k = 24
    x = te.placeholder((m, k), dtype="float16", name="x")
    w = te.placeholder((k, m), dtype="float16", name="w")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((m, m), lambda i, j: te.sum(x[i, r].astype("float32") * w[r, j].astype("float32"), axis=r), name="y")
    s2 = te.create_schedule(y.op)
    s2[y].vectorize(y.op.axis[1])
    mod2 = farm.build(s2, [x, w, y])
    xv, wv = rng.random((m, k)).astype("f2"), rng.random((k, m)).astype("f2")
    yv = np.zeros((m, m), "f4")
    mod2(xv, wv, yv)
    np.testing.assert_allclose(yv, xv.astype("f4") @ wv.astype("f4"), rtol=1e-5, atol=1e-5)
