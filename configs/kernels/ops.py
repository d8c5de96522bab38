"""Template-free kernels: only the compute is written; the farm generates the schedule space."""
from farm import compute, te


@compute("layernorm")
def layernorm(n, d):
    """Y = (X - mean) / sqrt(var + 1e-5) * gamma + beta, over the last axis."""
    X = te.placeholder((n, d), name="X")
    gamma = te.placeholder((d,), name="gamma")
    beta = te.placeholder((d,), name="beta")
    k1 = te.reduce_axis((0, d), name="k1")
    mean = te.compute((n,), lambda i: te.sum(X[i, k1] / float(d), axis=k1), name="mean")
    k2 = te.reduce_axis((0, d), name="k2")
    var = te.compute((n,), lambda i: te.sum((X[i, k2] - mean[i]) * (X[i, k2] - mean[i]) / float(d), axis=k2),
                     name="var")
    Y = te.compute((n, d), lambda i, j: (X[i, j] - mean[i]) / te.sqrt(var[i] + 1e-5) * gamma[j] + beta[j], name="Y")
    return [X, gamma, beta, Y]


@compute("matmul_nt")
def matmul_nt(m, n, k):
    """C = A @ B.T (B stored row-major as [n, k], as attention's keys are)."""
    A = te.placeholder((m, k), name="A")
    B = te.placeholder((n, k), name="B")
    r = te.reduce_axis((0, k), name="r")
    return [A, B, te.compute((m, n), lambda i, j: te.sum(A[i, r] * B[j, r], axis=r), name="C")]


@compute("matmul_auto")
def matmul_auto(m, n, k):
    """C = A @ B with no template: the generated space against the hand-written matmul template."""
    A = te.placeholder((m, k), name="A")
    B = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="r")
    return [A, B, te.compute((m, n), lambda i, j: te.sum(A[i, r] * B[r, j], axis=r), name="C")]
