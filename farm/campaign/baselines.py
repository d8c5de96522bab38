"""numpy baselines of network layers, and the weighted end-to-end sums of a network campaign.

Each layer's baseline is what a numpy user would write: conv2d as im2col + one matmul (BLAS),
dense and batch_matmul as ``@``, depthwise conv2d as a direct sliding-window einsum, the rest as
numpy expressions. They run on the host that calls them (the campaign driver): numpy's BLAS uses
its threads, its elementwise work one. A layer nobody tuned (or whose task found nothing) counts
with its numpy time on both sides of the end-to-end comparison.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from farm.campaign.network import Layer, NetworkSpec

GELU_C = 0.7978845608028654
Baseline = Callable[..., np.ndarray]


def _windows(x: np.ndarray, r: int, stride: int, pad: int, fill: float = 0.0) -> np.ndarray:
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    return np.lib.stride_tricks.sliding_window_view(x, (r, r), axis=(2, 3))[:, :, ::stride, ::stride]


def conv2d_im2col(a: Sequence[int]) -> Baseline:
    n, c, h, w, k, r, stride, pad = a

    def run(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
        win = _windows(x, r, stride, pad)  # n, c, oh, ow, r, r
        oh, ow = win.shape[2], win.shape[3]
        cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(c * r * r, n * oh * ow)  # the im2col copy
        out = wt.reshape(k, c * r * r) @ cols
        return np.ascontiguousarray(out.reshape(k, n, oh, ow).transpose(1, 0, 2, 3))
    return run


def depthwise_einsum(a: Sequence[int]) -> Baseline:
    n, c, h, w, r, stride, pad = a

    def run(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
        return np.einsum("ncyxij,cij->ncyx", _windows(x, r, stride, pad), wt[:, 0])
    return run


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _gelu(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    y = x + b
    return 0.5 * y * (1.0 + np.tanh(GELU_C * (y + 0.044715 * y * y * y)))


def _max_pool(a: Sequence[int]) -> Baseline:
    n, c, h, w, r, stride, pad = a
    return lambda x: _windows(x, r, stride, pad, -np.inf).max(axis=(-2, -1))


def _embedding(a: Sequence[int]) -> Baseline:
    rows = a[0]
    ids = np.random.default_rng(0).integers(0, a[2], rows)
    return lambda word, pos, seg: word[ids] + pos[:rows] + seg[0]


# op -> (input shapes from the layer's workload args, the numpy function of those inputs)
BASELINES: dict[str, tuple[Callable[[Sequence[int]], list[tuple[int, ...]]], Callable[[Sequence[int]], Baseline]]] = {
    "conv2d": (lambda a: [(a[0], a[1], a[2], a[3]), (a[4], a[1], a[5], a[5])], conv2d_im2col),
    "depthwise_conv2d": (lambda a: [(a[0], a[1], a[2], a[3]), (a[1], 1, a[4], a[4])], depthwise_einsum),
    "dense": (lambda a: [(a[0], a[2]), (a[2], a[1])], lambda a: np.matmul),
    "dense_bias_relu": (lambda a: [(a[0], a[2]), (a[2], a[1]), (a[1],)],
                        lambda a: lambda x, wt, b: np.maximum(x @ wt + b, 0.0)),
    "batch_matmul": (lambda a: [(a[0], a[1], a[3]), (a[0], a[3], a[2])], lambda a: np.matmul),
    "batch_matmul_nt": (lambda a: [(a[0], a[1], a[3]), (a[0], a[2], a[3])],
                        lambda a: lambda x, y: np.matmul(x, y.transpose(0, 2, 1))),
    "softmax": (lambda a: [(a[0], a[1])], lambda a: _softmax),
    "layer_norm": (lambda a: [(a[0], a[1]), (a[1],), (a[1],)], lambda a: _layernorm),
    "bias_add": (lambda a: [(a[0], a[1]), (a[1],)], lambda a: np.add),
    "bias_gelu": (lambda a: [(a[0], a[1]), (a[1],)], lambda a: _gelu),
    "bias_tanh": (lambda a: [(a[0], a[1]), (a[1],)], lambda a: lambda x, b: np.tanh(x + b)),
    "relu": (lambda a: [(a[0], a[1])], lambda a: lambda x: np.maximum(x, 0.0)),
    "relu6": (lambda a: [(a[0], a[1])], lambda a: lambda x: np.clip(x, 0.0, 6.0)),
    "add": (lambda a: [(a[0], a[1]), (a[0], a[1])], lambda a: np.add),
    "add_relu": (lambda a: [(a[0], a[1]), (a[0], a[1])], lambda a: lambda x, y: np.maximum(x + y, 0.0)),
    "max_pool2d": (lambda a: [(a[0], a[1], a[2], a[3])], _max_pool),
    "global_avg_pool": (lambda a: [(a[0], a[1])], lambda a: lambda x: x.mean(1)),
    "embedding": (lambda a: [(a[2], a[1]), (512, a[1]), (2, a[1])], _embedding),
}


def baseline_key(layer: Layer) -> str:
    """Which numpy baseline a layer uses: its operator's, or its workload's for a fused dense/bmm."""
    if layer.op == "dense" and layer.kernel == "dense_bias_relu":
        return "dense_bias_relu"
    if layer.op == "batch_matmul" and layer.kernel.endswith(":batch_matmul_nt"):
        return "batch_matmul_nt"
    return layer.op


def baseline(layer: Layer, seed: int = 0) -> tuple[Baseline, list[np.ndarray]]:
    """The numpy function of a layer and seeded float32 inputs for it."""
    shapes, make = BASELINES[baseline_key(layer)]
    rng = np.random.default_rng(seed)
    return make(layer.args), [rng.standard_normal(s, dtype=np.float32) for s in shapes(layer.args)]


def median_s(fn: Callable[..., Any], arrays: Sequence[np.ndarray], repeat: int = 3, min_s: float = 0.02) -> float:
    """The median of ``repeat`` timings of ``fn(*arrays)``, each of as many calls as last ``min_s``."""
    fn(*arrays)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*arrays)
        if time.perf_counter() - t0 >= min_s or n >= 1 << 20:
            break
        n *= 2
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*arrays)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


Times = dict[tuple[str, tuple[int, ...]], float]  # seconds per call by (baseline, workload args)


def numpy_times(networks: Sequence[NetworkSpec], repeat: int = 3, min_s: float = 0.02) -> Times:
    """Seconds per call of each distinct layer's numpy baseline."""
    out: Times = {}
    for net in networks:
        for layer in net.layers:
            k = (baseline_key(layer), layer.args)
            if k not in out:
                fn, arrays = baseline(layer)
                out[k] = median_s(fn, arrays, repeat, min_s)
    return out


def end_to_end(networks: Sequence[NetworkSpec], tasks: Sequence[Any], numpy_s: Times,
               keys: Sequence[str]) -> list[dict[str, Any]]:
    """Per network and device key: sum of count x best latency (a layer without a tuned result counts
    with its numpy time), next to the same sum of numpy baselines. ``tasks``: TaskSummary objects."""
    out = []
    for net in networks:
        for key in keys:
            ours = numpy = 0.0
            tuned, untuned = 0, []
            for layer in net.layers:
                base = numpy_s.get((baseline_key(layer), layer.args))
                t = next((t for t in tasks if t.device_key == key and t.workload == _name(layer)
                          and tuple(t.shape) == layer.args), None) if layer.kind else None
                if base is not None:
                    numpy += layer.count * base
                if t is not None and t.ok and t.best_s:
                    ours += layer.count * t.best_s
                    tuned += 1
                else:
                    ours += layer.count * (base or 0.0)
                    untuned.append(f"{layer.op}({','.join(map(str, layer.args))})")
            out.append({"network": net.name, "batch": net.batch, "device_key": key, "ours_s": ours,
                        "numpy_s": numpy, "speedup": numpy / ours if ours > 0 else None,
                        "layers": len(net.layers), "tuned": tuned, "not_tuned": untuned})
    return out


def network_sums(spec: Any, tasks: Sequence[Any]) -> list[dict[str, Any]]:
    """A campaign's end-to-end lines (``end_to_end``), numpy timed here; [] without networks."""
    if not spec.networks:
        return []
    return end_to_end(spec.networks, tasks, numpy_times(spec.networks), spec.device_keys)


def _name(layer: Layer) -> str:
    """The workload name a tuned layer's task carries."""
    return layer.workload or layer.kernel
