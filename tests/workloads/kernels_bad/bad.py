"""Kernels that fail in each way a user's can (for tests/workloads/test_user_kernels.py)."""
from farm import te, template


@template("raises")
def raises(cfg, n):
    A = te.placeholder((n,), name="A")
    cfg.define_knob("x", [1, 2])
    raise ValueError("the user's bug")  # line 9
    return A


@template("no_schedule")
def no_schedule(cfg, n):
    A = te.placeholder((n,), name="A")
    B = te.compute((n,), lambda i: A[i] + 1.0, name="B")
    return [A, B]


@template("empty_space")
def empty_space(cfg, n):
    A = te.placeholder((n,), name="A")
    B = te.compute((n,), lambda i: A[i] + 1.0, name="B")
    cfg.define_knob("nothing", [])  # line 24
    return te.create_schedule(B.op), [A, B]


def plain_compute(n):
    A = te.placeholder((n,), name="A")
    return [A, te.compute((n,), lambda i: A[i] * 3.0, name="B")]
