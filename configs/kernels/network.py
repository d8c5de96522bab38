"""Template-free kernels for the operators of the network presets (configs/networks/) that have no
built-in workload: attention's Q @ K^T, elementwise epilogues, pooling. Only the compute is written;
the farm generates each schedule space. Elementwise operators take a 2-D view of their tensor
(rows, columns): an NCHW activation is (N*C, H*W), a transformer's is (tokens, hidden).
"""
from farm import compute, te

GELU_C = 0.7978845608028654  # sqrt(2 / pi), the tanh approximation of GELU (BERT's gelu_new)


@compute("batch_matmul_nt")
def batch_matmul_nt(b, m, n, k):
    """C[q] = A[q] @ B[q].T: attention scores Q @ K^T, keys stored [tokens, head size] as they come."""
    A = te.placeholder((b, m, k), name="A")
    B = te.placeholder((b, n, k), name="B")
    r = te.reduce_axis((0, k), name="r")
    return [A, B, te.compute((b, m, n), lambda q, i, j: te.sum(A[q, i, r] * B[q, j, r], axis=r), name="C")]


@compute("bias_add")
def bias_add(m, n):
    """Y = X + bias[j]: a dense layer's bias when no ReLU follows (the GEMM is matmul)."""
    X = te.placeholder((m, n), name="X")
    b = te.placeholder((n,), name="bias")
    return [X, b, te.compute((m, n), lambda i, j: X[i, j] + b[j], name="Y")]


@compute("bias_gelu")
def bias_gelu(m, n):
    """Y = gelu(X + bias), tanh approximation: BERT's feed-forward activation."""
    X = te.placeholder((m, n), name="X")
    b = te.placeholder((n,), name="bias")

    def f(i, j):
        x = X[i, j] + b[j]
        return 0.5 * x * (1.0 + te.tanh(GELU_C * (x + 0.044715 * x * x * x)))

    return [X, b, te.compute((m, n), f, name="Y")]


@compute("bias_tanh")
def bias_tanh(m, n):
    """Y = tanh(X + bias): BERT's pooler."""
    X = te.placeholder((m, n), name="X")
    b = te.placeholder((n,), name="bias")
    return [X, b, te.compute((m, n), lambda i, j: te.tanh(X[i, j] + b[j]), name="Y")]


@compute("relu")
def relu(m, n):
    """Y = max(X, 0)."""
    X = te.placeholder((m, n), name="X")
    return [X, te.compute((m, n), lambda i, j: te.maximum(X[i, j], 0.0), name="Y")]


@compute("relu6")
def relu6(m, n):
    """Y = min(max(X, 0), 6): MobileNet-V2's activation."""
    X = te.placeholder((m, n), name="X")
    return [X, te.compute((m, n), lambda i, j: te.minimum(te.maximum(X[i, j], 0.0), 6.0), name="Y")]


@compute("add")
def add(m, n):
    """Y = X + R: a residual connection."""
    X = te.placeholder((m, n), name="X")
    R = te.placeholder((m, n), name="R")
    return [X, R, te.compute((m, n), lambda i, j: X[i, j] + R[i, j], name="Y")]


@compute("add_relu")
def add_relu(m, n):
    """Y = max(X + R, 0): ResNet's residual connection and the ReLU after it."""
    X = te.placeholder((m, n), name="X")
    R = te.placeholder((m, n), name="R")
    return [X, R, te.compute((m, n), lambda i, j: te.maximum(X[i, j] + R[i, j], 0.0), name="Y")]


@compute("max_pool2d")
def max_pool2d(n, c, h, w, r, stride, pad):
    """NCHW max pooling, an r x r window; padding never wins (it is -inf)."""
    X = te.placeholder((n, c, h, w), name="X")
    oh, ow = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - r) // stride + 1
    ry = te.reduce_axis((0, r), name="ry")
    rx = te.reduce_axis((0, r), name="rx")

    def f(b, ch, y, x):
        iy, ix = y * stride + ry - pad, x * stride + rx - pad
        inside = te.all_of(iy >= 0, iy < h, ix >= 0, ix < w)
        return te.max(te.select(inside, X[b, ch, te.maximum(iy, 0) - te.maximum(iy - (h - 1), 0),
                                          te.maximum(ix, 0) - te.maximum(ix - (w - 1), 0)], -3.0e38),
                      axis=[ry, rx])

    return [X, te.compute((n, c, oh, ow), f, name="Y")]


@compute("global_avg_pool")
def global_avg_pool(m, hw):
    """Y[i] = mean of X[i, :]: global average pooling over (N*C, H*W)."""
    X = te.placeholder((m, hw), name="X")
    k = te.reduce_axis((0, hw), name="k")
    return [X, te.compute((m,), lambda i: te.sum(X[i, k] / float(hw), axis=k), name="Y")]
