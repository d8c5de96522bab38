"""Bad input gives clear errors, never a crash of the interpreter."""
from __future__ import annotations

import numpy as np
import pytest

import farm
from farm import te
from farm.errors import ArgumentError, ConfigError, LowerError, ScheduleError, TargetError


def _mm(m: int = 8, n: int = 8, k: int = 8):  # type: ignore[no-untyped-def]
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    kk = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, kk] * b[kk, j], axis=kk), name="C")
    return a, b, c


def test_wrong_axis_for_a_primitive() -> None:
    a, b, c = _mm()
    a2, b2, c2 = _mm()
    s = te.create_schedule(c.op)
    with pytest.raises(ScheduleError, match="does not belong"):
        s[c].split(c2.op.axis[0], factor=2)


def test_split_of_an_already_split_axis() -> None:
    a, b, c = _mm()
    s = te.create_schedule(c.op)
    i = c.op.axis[0]
    s[c].split(i, factor=2)
    with pytest.raises(ScheduleError, match="already split"):
        s[c].split(i, factor=4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_split_factor(bad: object) -> None:
    a, b, c = _mm()
    s = te.create_schedule(c.op)
    with pytest.raises(ScheduleError):
        s[c].split(c.op.axis[0], factor=bad)  # type: ignore[arg-type]


def test_primitive_misuse() -> None:
    a, b, c = _mm()
    s = te.create_schedule(c.op)
    i, j = c.op.axis
    (k,) = c.op.reduce_axis
    with pytest.raises(ScheduleError, match="reduction"):
        s[c].vectorize(k)
    with pytest.raises(ScheduleError, match="reduction"):
        s[c].parallel(k)
    with pytest.raises(ScheduleError, match="not adjacent"):
        s[c].fuse(i, k)
    with pytest.raises(ScheduleError, match="thread tag"):
        s[c].bind(i, "warp.x")
    with pytest.raises(ScheduleError, match="reduction and cannot be inlined"):
        s[c].compute_inline()
    with pytest.raises(ScheduleError, match="placeholder"):
        s[a]


def test_lowering_errors() -> None:
    a, b, c = _mm()
    s = te.create_schedule(c.op)
    with pytest.raises(LowerError, match="not among the build arguments"):
        farm.lower(s, [a, b])
    with pytest.raises(LowerError, match="not a build argument"):
        farm.lower(s, [a, c])


def test_call_time_errors() -> None:
    a, b, c = _mm(8, 8, 8)
    mod = farm.build(te.create_schedule(c.op), [a, b, c])
    good = [np.zeros((8, 8), "float32") for _ in range(3)]
    with pytest.raises(ArgumentError, match="shape"):
        mod(good[0], np.zeros((8, 9), "float32"), good[2])
    with pytest.raises(ArgumentError, match="dtype"):
        mod(good[0], good[1], np.zeros((8, 8), "float64"))
    with pytest.raises(ArgumentError, match="C-contiguous"):
        mod(np.zeros((8, 16), "float32")[:, ::2], good[1], good[2])
    with pytest.raises(ArgumentError, match="takes 3 arrays"):
        mod(good[0], good[1])
    with pytest.raises(ArgumentError, match="numpy array"):
        mod(good[0], good[1], [[0.0] * 8] * 8)
    ro = np.zeros((8, 8), "float32")
    ro.setflags(write=False)
    with pytest.raises(ArgumentError, match="read-only"):
        mod(good[0], good[1], ro)


@pytest.mark.parametrize("text", ["", "gpu", "llvm -mcpu", "llvm -mtriple=nonsense-xx", "llvm -foo=1", "cuda -arch=80"])
def test_bad_targets(text: str) -> None:
    with pytest.raises(TargetError):
        farm.Target.parse(text)


def test_bad_configs_and_shapes() -> None:
    from farm.workloads.registry import build_workload, get_workload

    with pytest.raises(ConfigError, match="unknown workload"):
        get_workload("nope")
    with pytest.raises(ConfigError, match="takes 3 shape values"):
        build_workload("matmul", (8, 8))
    with pytest.raises(ConfigError, match="unknown knob"):
        build_workload("matmul", (8, 8, 8), '{"knobs": {"tile_q": [1]}}')
    with pytest.raises(ConfigError, match="not one of its options"):
        build_workload("matmul", (8, 8, 8), '{"knobs": {"order": 7}}')
    with pytest.raises(ConfigError, match="outside the space"):
        build_workload("matmul", (8, 8, 8), "99999999999")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_workload("matmul", (8, 8, 8), "{oops")
    with pytest.raises(ConfigError, match="does not fit"):
        build_workload("conv2d", (1, 1, 2, 2, 1, 5, 1, 0))


def test_cross_target_module_is_not_callable_here() -> None:
    a, b, c = _mm()
    mod = farm.build(
        te.create_schedule(c.op), [a, b, c], target="llvm -mtriple=aarch64-linux-gnu -mcpu=generic -mattr=+neon"
    )
    assert mod.artifact.code[:4] == b"\x7fELF"
    with pytest.raises(ArgumentError, match="does not run on this host"):
        mod(*[np.zeros((8, 8), "float32")] * 3)
