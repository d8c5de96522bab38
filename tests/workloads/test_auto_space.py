"""The template-free space builds correct code for many te graphs: random configs of each, odd shapes
included, run here and compared with numpy."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import farm
from farm import te
from farm.runtime.buffers import compare, seeded_inputs
from farm.workloads.registry import Workload, build_workload

TARGET = "llvm -mcpu=native"
CONFIGS_PER_GRAPH = 10


@farm.compute("t_elementwise_chain")
def elementwise_chain(n: int, m: int) -> list[te.Tensor]:
    a = te.placeholder((n, m), name="A")
    b = te.placeholder((m,), name="b")
    t1 = te.compute((n, m), lambda i, j: a[i, j] * 2.0 + b[j], name="t1")
    t2 = te.compute((n, m), lambda i, j: te.maximum(t1[i, j], 0.0), name="t2")
    out = te.compute((n, m), lambda i, j: te.exp(t2[i, j] * -1.0) + t1[i, j], name="out")
    return [a, b, out]


@farm.compute("t_reduce_last")
def reduce_last(n: int, m: int) -> list[te.Tensor]:
    a = te.placeholder((n, m), name="A")
    k = te.reduce_axis((0, m), name="k")
    return [a, te.compute((n,), lambda i: te.sum(a[i, k] * a[i, k], axis=k), name="sq")]


@farm.compute("t_reduce_first")
def reduce_first(n: int, m: int) -> list[te.Tensor]:
    a = te.placeholder((n, m), name="A")
    k = te.reduce_axis((0, n), name="k")
    return [a, te.compute((m,), lambda j: te.max(a[k, j], axis=k), name="colmax")]


@farm.compute("t_softmax")
def softmax(n: int, m: int) -> list[te.Tensor]:
    a = te.placeholder((n, m), name="A")
    k1 = te.reduce_axis((0, m), name="k1")
    mx = te.compute((n,), lambda i: te.max(a[i, k1], axis=k1), name="mx")
    e = te.compute((n, m), lambda i, j: te.exp(a[i, j] - mx[i]), name="e")
    k2 = te.reduce_axis((0, m), name="k2")
    s = te.compute((n,), lambda i: te.sum(e[i, k2], axis=k2), name="s")
    return [a, te.compute((n, m), lambda i, j: e[i, j] / s[i], name="out")]


@farm.compute("t_transpose")
def transpose(n: int, m: int) -> list[te.Tensor]:
    a = te.placeholder((n, m), name="A")
    return [a, te.compute((m, n), lambda i, j: a[j, i], name="T")]


@farm.compute("t_batch_gemm")
def batch_gemm(b: int, m: int, n: int, k: int) -> list[te.Tensor]:
    x = te.placeholder((b, m, k), name="X")
    y = te.placeholder((b, k, n), name="Y")
    r = te.reduce_axis((0, k), name="r")
    return [x, y, te.compute((b, m, n), lambda q, i, j: te.sum(x[q, i, r] * y[q, r, j], axis=r), name="Z")]


@farm.compute("t_padded_conv2d")
def padded_conv2d(c: int, h: int, w: int, k: int) -> list[te.Tensor]:
    x = te.placeholder((1, c, h, w), name="X")
    wt = te.placeholder((k, c, 3, 3), name="W")
    xp = te.compute((1, c, h + 2, w + 2), lambda n, ch, y, z: te.if_then_else(
        te.all(y >= 1, y <= h, z >= 1, z <= w), x[n, ch, y - 1, z - 1], 0.0), name="Xp")
    rc, ry, rx = te.reduce_axis((0, c), name="rc"), te.reduce_axis((0, 3), name="ry"), te.reduce_axis((0, 3), name="rx")
    out = te.compute((1, k, h, w), lambda n, o, y, z: te.sum(xp[n, rc, y + ry, z + rx] * wt[o, rc, ry, rx],
                                                             axis=[rc, ry, rx]), name="conv")
    return [x, wt, out]


@farm.compute("t_int8_gemm")
def int8_gemm(m: int, n: int, k: int) -> list[te.Tensor]:
    a = te.placeholder((m, k), dtype="int8", name="A")
    b = te.placeholder((k, n), dtype="int8", name="B")
    r = te.reduce_axis((0, k), name="r")
    return [a, b, te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[r, j].astype("int32"), axis=r),
                             name="C")]


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def _softmax_ref(a: np.ndarray) -> np.ndarray:
    e = np.exp(_f64(a) - _f64(a).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _conv_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("ncyxij,kcij->nkyx", win, _f64(w))


def _chain_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t1 = _f64(a) * 2.0 + b
    return np.exp(-np.maximum(t1, 0.0)) + t1


CASES: list[tuple[Workload, tuple[int, ...], Callable[..., np.ndarray]]] = [
    (elementwise_chain, (13, 37), _chain_ref),
    (reduce_last, (19, 45), lambda a: (_f64(a) ** 2).sum(1)),
    (reduce_first, (23, 41), lambda a: _f64(a).max(0)),
    (softmax, (9, 71), _softmax_ref),
    (transpose, (17, 29), lambda a: a.T),
    (batch_gemm, (3, 13, 35, 19), lambda x, y: _f64(x) @ _f64(y)),
    (padded_conv2d, (3, 11, 13, 5), _conv_ref),
    (int8_gemm, (11, 37, 21), lambda a, b: a.astype(np.int64) @ b.astype(np.int64)),
]


def _check(wl: Workload, shape: tuple[int, ...], ref: Callable[..., np.ndarray], index: int) -> str | None:
    mod = build_workload(wl, shape, index, TARGET)
    arrays = seeded_inputs(mod.artifact.args, seed=index)
    mod(*arrays)
    ins = [a for a, s in zip(arrays, mod.artifact.args) if s.role == "in"]
    return compare(arrays[-1], np.asarray(ref(*ins)), 1e-4)


@pytest.mark.parametrize("wl, shape, ref", CASES, ids=[c[0].name for c in CASES])
def test_random_configs_match_numpy(wl: Workload, shape: tuple[int, ...], ref: Callable[..., Any]) -> None:
    space = wl.space(shape, TARGET)
    rng = random.Random(len(space))
    picks = {0, len(space) - 1, *(rng.randrange(len(space)) for _ in range(CONFIGS_PER_GRAPH))}
    for index in sorted(picks):
        msg = _check(wl, shape, ref, index)
        assert msg is None, f"{wl.name}{shape} config {index} {space.get(index)}: {msg}"


def test_graphs_get_the_generated_knobs() -> None:
    knobs = set(softmax.space((9, 71), TARGET).knobs)
    assert {"at_mx", "at_e", "at_s", "vec_out", "par_out"} <= knobs, knobs
    assert not {"cache_mx", "tile_mx_j", "cache_s"} & knobs, knobs  # 1-D row reductions: vector plan only
    gemm = set(batch_gemm.space((3, 13, 35, 19), TARGET).knobs)
    assert {"cache_Z", "tile_Z_i", "tile_Z_j", "tile_Z_k", "unroll_Z", "order_Z"} <= gemm, gemm
    conv = set(padded_conv2d.space((3, 11, 13, 5), TARGET).knobs)
    assert "at_Xp" in conv
