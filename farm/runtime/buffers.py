"""Kernel buffers: argument checks, aligned arrays, seeded inputs and the output comparison."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from farm.errors import ArgumentError
from farm.records.artifact import ArgSpec


def check_array(a: Any, spec: ArgSpec) -> None:
    if not isinstance(a, np.ndarray):
        raise ArgumentError(f"argument {spec.name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(spec.dtype):
        raise ArgumentError(f"argument {spec.name}: dtype {a.dtype}, kernel expects {spec.dtype}")
    if tuple(a.shape) != tuple(spec.shape):
        raise ArgumentError(f"argument {spec.name}: shape {tuple(a.shape)}, kernel expects {tuple(spec.shape)}")
    if not a.flags.c_contiguous:
        raise ArgumentError(f"argument {spec.name}: array is not C-contiguous (use np.ascontiguousarray)")
    if spec.role == "out" and not a.flags.writeable:
        raise ArgumentError(f"argument {spec.name}: output array is read-only")


def aligned_empty(shape: Sequence[int], dtype: str, align: int = 64) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(n + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dt).reshape(shape)


def seeded_inputs(specs: Sequence[ArgSpec], seed: int) -> list[np.ndarray]:
    """Inputs drawn from a seeded generator; outputs zeroed. 64-byte aligned."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        a = aligned_empty(s.shape, s.dtype)
        if s.role == "out":
            a[...] = 0
        elif np.dtype(s.dtype).kind == "f":
            a[...] = rng.uniform(-1.0, 1.0, size=s.shape).astype(s.dtype)
        else:
            a[...] = rng.integers(-4, 5, size=s.shape).astype(s.dtype)
        out.append(a)
    return out


def compare(got: np.ndarray, want: np.ndarray, rtol: float) -> str | None:
    """None if close, else a message. Scaled max-norm: robust to float32 reduction order."""
    if got.shape != want.shape:
        return f"shape {got.shape} != reference {want.shape}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.all(np.isfinite(g) == np.isfinite(w)):
        return "non-finite values where the reference has finite ones (or the reverse)"
    fin = np.isfinite(w)
    scale = max(float(np.max(np.abs(w[fin]))) if fin.any() else 0.0, 1e-6)
    err = float(np.max(np.abs(g[fin] - w[fin]))) if fin.any() else 0.0
    if err > rtol * scale:
        bad = int(np.argmax(np.abs(g - w) * fin))
        return (f"max abs error {err:.3g} exceeds {rtol:g} x max|ref| ({scale:.3g}); "
                f"first bad element flat index {bad}: got {g.flat[bad]:.6g}, want {w.flat[bad]:.6g}")
    return None
