"""Network files: a model's distinct operator shapes with their occurrence counts, expanded into tasks.

    network: resnet18                       # configs/networks/resnet18.yaml
    layers:
      - {op: conv2d, shape: [3, 224, 224, 64, 7, 2, 3], count: 1}    # C,H,W,K,R,stride,pad per sample
      - {op: dense, shape: [1, 1000, 512], bias: true, count: 1}      # rows per sample, N, K

Shapes are per sample; a campaign entry ``{network: resnet18, batch: 1}`` scales them by its batch.
Each operator maps to a workload (``OPS``): a built-in template, a template-free compute of
``configs/kernels/`` (or the layer's own ``kernel: FILE.py:function``), or none ("not tuned": its
numpy time still counts in the end-to-end sum). Errors name the network file's line and field.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from farm.yamlconf import (
    Ctx,
    LocatedConfigError,
    compose,
    describe,
    read_bool,
    read_choice,
    read_int,
    read_str,
    unknown,
)

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "configs" / "networks"
KERNELS = ROOT / "configs" / "kernels"
_NET = f"{KERNELS / 'network.py'}"
ACTIVATIONS = ("none", "relu", "gelu", "tanh")
LAYER_KEYS = ("op", "shape", "count", "name", "bias", "activation", "transpose_b", "kernel")


class NetworkConfigError(LocatedConfigError):
    """A problem in a network file, located by file, line and field."""


@dataclass(frozen=True)
class Layer:
    """One distinct operator shape of a network, at the campaign's batch.

    ``kind``/``kernel`` say what tunes it, as a campaign entry would ("name" with a built-in's name,
    "template"/"compute" with FILE.py:function); kind "" is not tuned. ``args`` are the workload's
    shape values; ``count`` how often the network runs it (its weight)."""

    op: str
    label: str
    count: int
    kind: str
    kernel: str
    args: tuple[int, ...]
    where: str  # network file:line
    base: Path  # the directory a layer's own kernel path is relative to
    workload: str = ""  # the name its task's workload registered (set when the campaign resolves it)


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    batch: int
    layers: tuple[Layer, ...]
    path: Path


@dataclass(frozen=True)
class OpKind:
    params: tuple[str, ...]  # the shape a layer gives, per sample
    to: Callable[[int, Sequence[int], dict[str, Any]], list[tuple[str, str, str, tuple[int, ...]]]]
    # (op, kind, kernel, workload args) per workload the layer becomes; kind "" is not tuned
    doc: str


def _flat(batch: int, s: Sequence[int]) -> tuple[int, int]:
    """An elementwise operator's 2-D view: rows = batch x first dim, columns = the rest."""
    return batch * s[0], math.prod(s[1:]) if len(s) > 1 else 1


def _dense(batch: int, s: Sequence[int], f: dict[str, Any]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    m, n, k = batch * s[0], s[1], s[2]
    bias, act = f.get("bias", False), f.get("activation", "none")
    if bias and act == "relu":
        return [("dense", "name", "dense_bias_relu", (m, n, k))]
    epilogue = {(True, "none"): "bias_add", (True, "gelu"): "bias_gelu", (True, "tanh"): "bias_tanh",
                (False, "relu"): "relu"}.get((bias, act))
    out = [("dense", "name", "matmul", (m, n, k))]
    if epilogue:  # the GEMM is matmul; its epilogue is an elementwise layer of its own
        out.append((epilogue, "compute", f"{_NET}:{epilogue}", (m, n)))
    return out


def _bmm(batch: int, s: Sequence[int], f: dict[str, Any]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    args = (batch * s[0], s[1], s[2], s[3])
    if f.get("transpose_b"):  # attention's Q @ K^T: keys stored [tokens, head size]
        return [("batch_matmul", "compute", f"{_NET}:batch_matmul_nt", args)]
    return [("batch_matmul", "name", "batch_matmul", args)]


def _compute(fn: str, shape: Callable[[int, Sequence[int]], tuple[int, ...]], kind: str = "compute",
             path: str = _NET, op: str = "") -> Callable[..., list[tuple[str, str, str, tuple[int, ...]]]]:
    def to(batch: int, s: Sequence[int], f: dict[str, Any]) -> list[tuple[str, str, str, tuple[int, ...]]]:
        return [(op or fn, kind, f"{path}:{fn}", shape(batch, s))]
    return to


def _elementwise(fn: str) -> OpKind:
    return OpKind(("C", "H", "W"), _compute(fn, _flat), f"{fn}, elementwise over [C,H,W] or [rows, columns]")


OPS: dict[str, OpKind] = {
    "conv2d": OpKind(("C", "H", "W", "K", "R", "stride", "pad"),
                     lambda b, s, f: [("conv2d", "name", "conv2d", (b, *s))], "NCHW convolution (built-in)"),
    "depthwise_conv2d": OpKind(("C", "H", "W", "R", "stride", "pad"),
                               lambda b, s, f: [("depthwise_conv2d", "name", "depthwise_conv2d", (b, *s))],
                               "NCHW depthwise convolution (built-in)"),
    "dense": OpKind(("rows", "N", "K"), _dense,
                    "rows x K @ K x N; bias + relu: dense_bias_relu, else matmul and an elementwise epilogue"),
    "batch_matmul": OpKind(("heads", "M", "N", "K"), _bmm,
                           "per head M x K @ K x N (transpose_b: keys as N x K, template-free)"),
    "softmax": OpKind(("rows", "columns"), _compute("rowsoftmax", lambda b, s: (b * s[0], s[1]), "template",
                                                    str(KERNELS / "softmax.py"), "softmax"), "row softmax (template)"),
    "layer_norm": OpKind(("rows", "d"), _compute("layernorm", lambda b, s: (b * s[0], s[1]),
                                                 path=str(KERNELS / "ops.py"), op="layer_norm"),
                         "layer norm (template-free)"),
    "max_pool2d": OpKind(("C", "H", "W", "R", "stride", "pad"), _compute("max_pool2d", lambda b, s: (b, *s)),
                         "NCHW max pooling (template-free)"),
    "global_avg_pool": OpKind(("C", "H", "W"), _compute("global_avg_pool", lambda b, s: (b * s[0], s[1] * s[2])),
                              "mean over H x W (template-free)"),
    "embedding": OpKind(("rows", "d", "vocab"), lambda b, s, f: [("embedding", "", "", (b * s[0], s[1], s[2]))],
                        "token + position + segment lookup, summed (not tuned: te has no gather)"),
    **{fn: _elementwise(fn) for fn in ("relu", "relu6", "add", "add_relu", "bias_add", "bias_gelu", "bias_tanh")},
}


def find_network(text: str, base: Path) -> Path:
    """A preset's name (configs/networks/NAME.yaml) or a file path relative to ``base``."""
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        return PRESETS / f"{text}.yaml"
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_network(path: Path, batch: int) -> NetworkSpec:
    """Parse a network file and expand its layers at ``batch``; every error names file:line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise NetworkConfigError(str(path), 0, "(file)", f"cannot read: {e.strerror}") from None
    return parse_network(text, path, batch)


def parse_network(text: str, path: Path, batch: int) -> NetworkSpec:
    ctx = Ctx(path, NetworkConfigError)
    root = compose(text, path, NetworkConfigError)
    if root is None:
        raise NetworkConfigError(str(path), 1, "layers", "the file is empty; expected `network:` and `layers:`")
    top = ctx.mapping(root, "(top level)")
    for k, (knode, _) in top.items():
        if k not in ("network", "layers", "source"):
            raise unknown(ctx, knode, k, k, ("network", "layers", "source"))
    name = read_str(ctx, top["network"][1], "network") if "network" in top else path.stem
    if "layers" not in top:
        raise ctx.error(root, "layers", "missing: list the network's operators")
    lnode = top["layers"][1]
    if not isinstance(lnode, yaml.SequenceNode) or not lnode.value:
        raise ctx.error(lnode, "layers", f"expected a non-empty list, got {describe(ctx, lnode)}")
    layers: list[Layer] = []
    for i, node in enumerate(lnode.value):
        layers += _layer(ctx, node, f"layers[{i}]", batch)
    return NetworkSpec(name, batch, tuple(layers), path)


def _layer(ctx: Ctx, node: yaml.Node, where: str, batch: int) -> list[Layer]:
    m = ctx.mapping(node, where)
    for k, (knode, _) in m.items():
        if k not in LAYER_KEYS:
            raise unknown(ctx, knode, f"{where}.{k}", k, LAYER_KEYS)
    if "op" not in m:
        raise ctx.error(node, f"{where}.op", f"missing (one of: {', '.join(sorted(OPS))})")
    op = read_choice(tuple(sorted(OPS)))(ctx, m["op"][1], f"{where}.op")
    kind = OPS[op]
    if "shape" not in m:
        raise ctx.error(node, f"{where}.shape", f"missing: {op} takes [{', '.join(kind.params)}] per sample")
    snode = m["shape"][1]
    if not isinstance(snode, yaml.SequenceNode):
        raise ctx.error(snode, f"{where}.shape", f"expected a list, got {describe(ctx, snode)}")
    shape = [read_int(0 if kind.params[min(j, len(kind.params) - 1)] == "pad" else 1, 1 << 20)(
        ctx, x, f"{where}.shape[{j}]") for j, x in enumerate(snode.value)]
    flexible = kind.params == ("C", "H", "W") and op != "global_avg_pool"  # elementwise: [C,H,W] or [rows, cols]
    if not (len(shape) == len(kind.params) or (flexible and len(shape) == 2)):
        raise ctx.error(snode, f"{where}.shape", f"{op} takes {len(kind.params)} values "
                        f"[{', '.join(kind.params)}] per sample, got {len(shape)}")
    count = read_int(1, 1_000_000)(ctx, m["count"][1], f"{where}.count") if "count" in m else 1
    flags: dict[str, Any] = {}
    for flag, ops in (("bias", ("dense",)), ("transpose_b", ("batch_matmul",))):
        if flag in m:
            if op not in ops:
                raise ctx.error(m[flag][0], f"{where}.{flag}", f"only for {', '.join(ops)}")
            flags[flag] = read_bool(ctx, m[flag][1], f"{where}.{flag}")
    if "activation" in m:
        if op != "dense":
            raise ctx.error(m["activation"][0], f"{where}.activation", "only for dense")
        flags["activation"] = read_choice(ACTIVATIONS)(ctx, m["activation"][1], f"{where}.activation")
        if not flags.get("bias") and flags["activation"] in ("gelu", "tanh"):
            raise ctx.error(m["activation"][1], f"{where}.activation",
                            f"{flags['activation']} without a bias has no kernel; list it as a layer of its own")
    label = read_str(ctx, m["name"][1], f"{where}.name") if "name" in m else op
    line = f"{ctx.file}:{node.start_mark.line + 1}"
    parts = kind.to(batch, shape, flags)
    if "kernel" in m:  # the layer's own @template/@compute (FILE.py:function, from this file) tunes it
        parts[0] = (parts[0][0], "compute", read_str(ctx, m["kernel"][1], f"{where}.kernel"), parts[0][3])
    return [Layer(p_op, label if n == 0 else f"{label} ({p_op})", count, k, kern, args, line, ctx.path.parent)
            for n, (p_op, k, kern, args) in enumerate(parts)]


def merge_weights(layers: Sequence[Layer]) -> dict[tuple[str, str, tuple[int, ...]], int]:
    """Occurrences per tuned (kind, kernel, args): two layers that become one workload share a task."""
    out: dict[tuple[str, str, tuple[int, ...]], int] = {}
    for ly in layers:
        if ly.kind:
            k = (ly.kind, ly.kernel, ly.args)
            out[k] = out.get(k, 0) + ly.count
    return out

