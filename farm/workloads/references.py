"""numpy references of the built-in workloads, by name: what a device checks outputs against.

numpy only: a device server imports this without the templates, config spaces or compiler.
Each function takes the workload's shape values and its input arrays and returns the outputs in
float64 (the comparison scales its tolerance by the reference's magnitude).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Reference = Callable[[Sequence[int], Sequence[np.ndarray]], list[np.ndarray]]


def conv_out_size(h: int, r: int, stride: int, pad: int) -> int:
    """Output extent of a convolution along one axis."""
    return (h + 2 * pad - r) // stride + 1


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def matmul(a: Sequence[int], ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [_f64(ins[0]) @ _f64(ins[1])]


def dense_bias_relu(a: Sequence[int], ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.maximum(_f64(ins[0]) @ ins[1] + ins[2], 0.0)]


def batch_matmul(a: Sequence[int], ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.matmul(_f64(ins[0]), _f64(ins[1]))]


def _windows(x: np.ndarray, r: int, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(_f64(x), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def conv2d(a: Sequence[int], ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    n, c, h, w, k, r, stride, pad = a
    win = _windows(ins[0], r, stride, pad)
    return [np.einsum("ncyxij,kcij->nkyx", win, _f64(ins[1]), optimize=True)]


def depthwise_conv2d(a: Sequence[int], ins: Sequence[np.ndarray]) -> list[np.ndarray]:
    n, c, h, w, r, stride, pad = a
    win = _windows(ins[0], r, stride, pad)
    return [np.einsum("ncyxij,cij->ncyx", win, _f64(ins[1][:, 0]), optimize=True)]


REFERENCES: dict[str, Reference] = {
    "matmul": matmul,
    "dense_bias_relu": dense_bias_relu,
    "batch_matmul": batch_matmul,
    "conv2d": conv2d,
    "depthwise_conv2d": depthwise_conv2d,
}


def reference_for(name: str) -> Reference | None:
    """The numpy reference of a built-in workload, or None for a name without one."""
    return REFERENCES.get(name)
