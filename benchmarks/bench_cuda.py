"""CUDA matmul benchmark: the farm's CUDA template vs cuBLAS (through cupy / torch).

    python benchmarks/bench_cuda.py [--quick] [--json] [--sizes 1024,2048] [--random N]

For each square size, a handful of hand-picked "tuned-ish" configs of the CUDA
matmul template (plus ``--random N`` random ones) are built, checked against
numpy and timed on the GPU through ``devices.cuda.CudaBackend`` (CUDA events,
TVM time_evaluator semantics); the best is reported next to ``cupy.matmul`` and
``torch.matmul`` (fp32, TF32 off) when those are importable — their columns are
left out otherwise. Without a GPU it says so and exits 0.

The last line printed is one JSON object with every number (``--json``: only it).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TUNED = [  # (threads y, rows per thread), (threads x, cols per thread), BK
    ((16, 8), (16, 8), 8),
    ((16, 4), (16, 8), 8),
    ((8, 8), (16, 8), 8),
    ((8, 8), (32, 4), 8),
    ((16, 4), (16, 4), 16),
]


def _knobs(ti: tuple[int, int], tj: tuple[int, int], bk: int) -> dict[str, Any]:
    return {"knobs": {"tile_i": [-1, *ti], "tile_j": [-1, *tj], "tile_k": [-1, bk], "stage_a": 1, "stage_b": 1,
                      "vec": 4, "unroll": 1}}


def _time_library(fn: Callable[[], Any], sync: Callable[[], None], event: Callable[[], Any],
                  min_ms: float = 50.0, repeat: int = 5) -> float:
    """Median seconds per call, timed with the library's own CUDA events."""
    fn()
    sync()
    number = 1
    while True:
        s, e = event(), event()
        s.record()
        for _ in range(number):
            fn()
        e.record()
        e.synchronize()
        ms = _elapsed(s, e)
        if ms >= min_ms or number >= 1 << 16:
            break
        number = max(number * 2, int(number * min_ms / max(ms, 1e-3) * 1.1))
    out = []
    for _ in range(repeat):
        s, e = event(), event()
        s.record()
        for _ in range(number):
            fn()
        e.record()
        e.synchronize()
        out.append(_elapsed(s, e) / 1e3 / number)
    return statistics.median(out)


def _elapsed(s: Any, e: Any) -> float:
    return (
        float(s.elapsed_time(e))
        if hasattr(s, "elapsed_time")
        else float(__import__("cupy").cuda.get_elapsed_time(s, e))
    )


def bench_cupy(n: int) -> float | None:
    try:
        import cupy as cp
    except Exception:  # noqa: BLE001  (a broken CUDA library install just drops the column)
        return None
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    t = _time_library(lambda: cp.matmul(a, b), cp.cuda.Device().synchronize, cp.cuda.Event)
    return 2.0 * n**3 / t / 1e9


def bench_torch(n: int) -> float | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except Exception:  # noqa: BLE001  (a broken CUDA library install just drops the column)
        return None
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    a = torch.randn((n, n), device="cuda", dtype=torch.float32)
    b = torch.randn((n, n), device="cuda", dtype=torch.float32)
    t = _time_library(lambda: torch.matmul(a, b), torch.cuda.synchronize, lambda: torch.cuda.Event(enable_timing=True))
    return 2.0 * n**3 / t / 1e9


def bench_farm(backend: Any, n: int, n_random: int, quick: bool) -> dict[str, Any]:
    from farm.errors import CompileError
    from farm.records.measure import RunOptions
    from farm.workloads.registry import build_workload, get_workload

    target = f"cuda -arch=sm_{min(backend.sm(), 90)}"
    configs: list[Any] = [json.dumps(_knobs(*t)) for t in (TUNED[:2] if quick else TUNED)]
    size = len(get_workload("matmul").space((n, n, n), target))
    rng = random.Random(n)
    configs += [rng.randrange(size) for _ in range(n_random)]
    opts = RunOptions(repeat=3 if quick else 5, min_repeat_ms=20 if quick else 50)
    best: dict[str, Any] = {"gflops": 0.0}
    tried = []
    for cfg in configs:
        t0 = time.perf_counter()
        try:
            mod = build_workload("matmul", (n, n, n), cfg, target)
        except CompileError as e:
            tried.append({"config": cfg, "outcome": "COMPILE_ERROR", "message": str(e)})
            continue
        build_s = time.perf_counter() - t0
        res = backend.run_job(mod.artifact, opts)
        row = {"config": mod.config.to_json()["knobs"], "outcome": res.outcome.value, "gflops": res.gflops,
               "median_us": res.median_s * 1e6 if res.ok else None, "build_s": build_s,
               "registers": res.extra.get("registers"), "message": res.message}
        tried.append(row)
        if res.ok and res.gflops > best["gflops"]:
            best = row
    return {"best": best, "tried": tried}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, two configs each, shorter timing")
    ap.add_argument("--json", action="store_true", help="print only the final JSON object")
    ap.add_argument("--sizes", default="", help="comma-separated square sizes (default 1024,2048,4096)")
    ap.add_argument("--random", type=int, default=0, help="random configs to try besides the tuned ones")
    args = ap.parse_args(argv)
    say: Callable[..., None] = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    sizes = [int(x) for x in args.sizes.split(",") if x] or ([512, 1024] if args.quick else [1024, 2048, 4096])

    from devices.cuda_driver import CudaUnavailable

    try:
        from devices.cuda import CudaBackend

        backend = CudaBackend(key="bench")
    except CudaUnavailable as e:
        say(f"# no GPU: {e}")
        print(json.dumps({"skipped": str(e)}))
        return 0
    fp = backend.describe()
    say(f"# {fp['gpu_name']} (sm_{fp['compute_capability'].replace('.', '')}, {fp['sm_count']} SMs, "
        f"driver {fp['driver_version']})")
    say(f"{'N':>6} {'farm GFLOPS':>12} {'cupy':>8} {'torch':>8}  best config")
    rows = []
    for n in sizes:
        farm = bench_farm(backend, n, args.random, args.quick)
        cp, th = bench_cupy(n), bench_torch(n)
        row: dict[str, Any] = {"n": n, "farm_gflops": farm["best"]["gflops"], "farm_best": farm["best"],
                               "tried": farm["tried"]}
        if cp is not None:
            row["cupy_gflops"] = cp
        if th is not None:
            row["torch_gflops"] = th
        rows.append(row)

        def fmt(v: float | None) -> str:
            return f"{v:8.0f}" if v is not None else f"{'-':>8}"

        say(f"{n:>6} {row['farm_gflops']:12.0f} {fmt(cp)} {fmt(th)}  {farm['best'].get('config')}")
    print(json.dumps({"device": fp, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
