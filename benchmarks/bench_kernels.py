#!/usr/bin/env python3
"""Kernels side by side with numpy on this machine, tuned here first.

1. Tune: every case is tuned live by a campaign on the embedded farm (an
   in-process tracker, one local device server, builds on a local Ray), for
   ``--target`` (default: this host), ``--trials`` per case. ``--log`` keeps
   the campaign's records; a rerun resumes from the records of that log this
   host measured for this target and skips, saying so, those from any other
   machine or target (someone else's optimum is not this machine's).
2. Compare: numpy's GFLOPS (matmul: ``a @ b``; conv2d: im2col + matmul), the
   template's default config, a hand-picked config derived from the target's
   vector lanes and registers, and the tuned one (the campaign's top configs,
   re-timed here in a selection round of their own). Rounds alternate numpy and
   kernels so machine noise hits both; medians are reported. ``<case>_vs_<ref>``
   is the better of hand and tuned (picked in the selection round).
3. Peak: the cores' measured FMA peak (peak.py) and the best kernel's share of it.

    python benchmarks/bench_kernels.py [--quick] [--json] [--trials N] [--log LOG] [--target T]
"""
from __future__ import annotations

import os

# numpy's BLAS is the baseline: run as a script, drop before numpy loads the settings that make
# OpenBLAS pick a kernel or cache size other than this host's (set for another machine, or to pin one).
# The one exception is this script's own re-run for a narrower --target (see match_blas_to_target).
_BLAS_RERUN = "KERNELFARM_BENCH_BLAS_CORE"
OPENBLAS_ENV_UNSET = sorted(k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                            if __name__ == "__main__" and _BLAS_RERUN not in os.environ
                            and os.environ.pop(k, None) is not None)

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak import measured_peak_gflops  # noqa: E402

from farm.campaign.sinks import FileSink  # noqa: E402
from farm.errors import TargetError  # noqa: E402
from farm.log import LogRecord  # noqa: E402
from farm.runtime.buffers import seeded_inputs  # noqa: E402
from farm.runtime.loader import LoadedKernel  # noqa: E402
from farm.target import Target, local_target  # noqa: E402
from farm.workloads.registry import build_workload, get_workload  # noqa: E402
from farm.workloads.space import ConfigSpace  # noqa: E402

CASES = [  # name in the JSON, workload, shape, numpy baseline kind
    ("matmul_512", "matmul", (512, 512, 512), "matmul"),
    ("matmul_1024", "matmul", (1024, 1024, 1024), "matmul"),
    ("dense_bias_relu", "dense_bias_relu", (512, 1024, 1024), "dense"),
    ("batch_matmul", "batch_matmul", (16, 128, 128, 128), "matmul"),
    ("conv2d_3x3", "conv2d", (1, 64, 56, 56, 64, 3, 1, 1), "im2col"),
    ("conv2d_1x1", "conv2d", (1, 256, 56, 56, 64, 1, 1, 0), "im2col"),
]
SETTLE_S = 0.3
SELECT_ROUNDS = 3
QUICK_TRIALS, FULL_TRIALS = 48, 256


# --- hand-picked configs, derived from the target -------------------------------------

def register_tile(lanes: int, registers: int, rows: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)) -> tuple[int, int]:
    """(MR, NR) of a GEMM micro-kernel: MR x NR/lanes accumulators, NR/lanes vectors of B
    and one broadcast of A live in registers, one register spare. The most accumulators
    (FMAs per loaded value) win; among equals, the fewest loads (MR + NR/lanes)."""
    fits = [(mr, nv) for nv in (1, 2, 3, 4) for mr in rows if mr * nv + nv + 1 <= registers - 1]
    mr, nv = max(fits, key=lambda t: (t[0] * t[1], -(t[0] + t[1])))
    return mr, nv * lanes


def hand_knobs(workload: str, target: Target) -> dict[str, Any]:
    """The hand-picked config of a workload for a target's vector lanes and registers
    (knob values; :func:`fit_to_space` maps them onto one shape's space)."""
    lanes, regs = target.vector_lanes_f32, target.num_vector_registers
    if workload in ("matmul", "dense_bias_relu", "batch_matmul"):
        mr, nr = register_tile(lanes, regs)
        return {"tile_i": [-1, 4 if workload == "batch_matmul" else 8, mr], "tile_j": [-1, 1, nr],
                "tile_k": [-1, 4], "order": 1, "unroll": 2, "pack_b": 1, "parallel": 1}
    if workload == "conv2d":
        # Output channels in vectors (pack_k): 2 rows x XR columns of one vector each, half the registers as
        # accumulators (enough independent FMAs for two pipes), one weight vector, broadcast inputs. A shape
        # whose K the lanes do not divide falls back to the NCHW layout: KR channels x one vector of columns.
        kr = max(k for k in (1, 2, 4, 8) if k + 2 <= regs - 1)
        return {"tile_k": [-1, kr], "tile_y": [-1, 2], "tile_x": [-1, max(1, regs // 4)], "tile_rc": [-1, 8],
                "order": 0, "unroll": 2, "pad_inline": 0, "parallel": 2, "pack_k": lanes}
    if workload == "depthwise_conv2d":
        return {"tile_y": [-1, 2], "tile_x": [-1, lanes], "unroll": 1, "pad_inline": 0, "parallel": 1}
    return {}


def fit_to_space(space: ConfigSpace, knobs: dict[str, Any]) -> dict[str, Any]:
    """``{"knobs": ...}`` of the space's config nearest to ``knobs``: a split factor the
    shape does not allow becomes the nearest one allowed (by ratio), a knob not given
    (or not offered) its first option."""
    out: dict[str, Any] = {}
    for name, knob in space.knobs.items():
        opts = [knob.encode(o) for o in knob.options]
        want = knobs.get(name)
        if want in opts:
            out[name] = want
        elif knob.kind == "split" and isinstance(want, list):
            def distance(o: list[int], w: list[int] = want) -> float:
                return sum(abs(math.log2(a) - math.log2(b)) for a, b in zip(o[1:], w[1:]))
            out[name] = min(opts, key=distance)
        else:
            out[name] = opts[0]
    return {"knobs": out}


def hand_config(workload: str, shape: tuple[int, ...], target: Target) -> dict[str, Any]:
    return fit_to_space(get_workload(workload).space(shape, target), hand_knobs(workload, target))


# --- which logged records apply here ---------------------------------------------------

@functools.lru_cache(maxsize=256)
def _target_key(text: str) -> tuple[str, str, frozenset[str]] | None:
    try:
        t = Target.parse(text)
    except TargetError:
        return None
    return t.triple, t.cpu, frozenset(filter(None, t.features.split(",")))


def applies_here(rec: LogRecord, target: Target, host: dict[str, Any]) -> bool:
    """A record counts here only if it was built for this target and measured on a CPU
    like this host's (same LLVM CPU name and ISA features)."""
    fp = rec.fingerprint or {}
    return (fp.get("cpu_name") == host["cpu_name"] and sorted(fp.get("cpu_features") or []) == host["cpu_features"]
            and _target_key(rec.target) == _target_key(str(target)))


class HostLog(FileSink):
    """The benchmark campaign's log: appended to as any campaign's, but resumed (and
    transferred) only from the records :func:`applies_here`."""

    def __init__(self, path: Path, target: Target, host: dict[str, Any]) -> None:
        super().__init__(path)
        self.target, self.host = target, host

    def load(self) -> list[LogRecord]:
        recs = super().load()
        keep, skip = [], []
        for r in recs:
            (keep if applies_here(r, self.target, self.host) else skip).append(r)
        if skip:
            others = sorted({str((r.fingerprint or {}).get("cpu_name", "?")) for r in skip})
            print(f"log {self.path}: skipping {len(skip)} of {len(recs)} records measured on another "
                  f"machine or for another target (CPUs: {', '.join(others)}); reusing {len(keep)} measured on this "
                  f"host ({self.host['cpu_name']}) for {self.target}", file=sys.stderr)
        elif keep:
            print(f"log {self.path}: reusing {len(keep)} records measured on this host", file=sys.stderr)
        return keep


# --- tuning --------------------------------------------------------------------------------

def tune(cases: list[tuple[str, str, tuple[int, ...], str]], target: Target, trials: int, log: Path,
         host: dict[str, Any], seed: int) -> Any:
    """One campaign over the cases on the embedded farm (as ``farm tune`` runs one)."""
    import ray

    from farm.campaign.builds import init_ray
    from farm.campaign.config import CampaignSpec, WorkloadSpec
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.embedded import EmbeddedFarm
    from farm.campaign.progress import Progress
    from farm.client.session import connect
    from farm.records.measure import RunOptions

    spec = CampaignSpec(
        name="bench-kernels", workloads=tuple(WorkloadSpec(wl, shape) for _, wl, shape, _ in cases), log=log,
        tuner="xgb", trials=trials, batch_size=8, seed=seed, target=str(target), exclusive_timing=True,
        timing=RunOptions(repeat=3, min_repeat_ms=30, timeout_s=20), build_timeout_s=120)
    init_ray(None, os.cpu_count() or 1)  # builds and timing take turns: builds may use every core
    try:
        with EmbeddedFarm() as farm, connect(farm.address, token=farm.token) as session:
            return CampaignRunner(spec, session, Progress(), sink=HostLog(log, target, host),
                                  exclusive_timing=True).run()
    finally:
        ray.shutdown()  # its idle workers would share the cores with the timings below


def top_configs(recs: list[LogRecord], workload: str, shape: tuple[int, ...], k: int) -> list[dict[str, Any]]:
    """The k fastest distinct configs of a case among records that apply here."""
    from farm.log import query as logquery

    seen: set[int] = set()
    out = []
    for r in logquery.top_k(recs, 4 * k, workload=workload, args=list(shape)):
        if r.config_index not in seen:
            seen.add(r.config_index)
            out.append(r.config)
    return out[:k]


# --- timing ----------------------------------------------------------------------------------

def numpy_fn(kind: str, arrays: list[np.ndarray], shape: tuple[int, ...]) -> Callable[[], Any]:
    if kind == "matmul":
        a, b = arrays[0], arrays[1]
        return lambda: a @ b
    if kind == "dense":
        a, b, bias = arrays[0], arrays[1], arrays[2]
        return lambda: np.maximum(a @ b + bias, 0)
    n, c, h, w, k, r, stride, pad = shape
    x, wt = arrays[0], arrays[1]
    wm = wt.reshape(k, c * r * r)

    def im2col() -> np.ndarray:
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(2, 3))[:, :, ::stride, ::stride]
        oh, ow = win.shape[2], win.shape[3]
        cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * r * r, oh * ow)
        return np.stack([wm @ cols[i] for i in range(n)])
    return im2col


def time_py(fn: Callable[[], Any], min_s: float) -> float:
    fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_s:
            return t / n
        n *= 2


def kernel_time(k: LoadedKernel, arrays: list[np.ndarray], min_s: float) -> float:
    return statistics.median(k.time_evaluator(arrays, 1, 3, min_s * 1e3))


def pick_best(kernels: dict[str, LoadedKernel], min_s: float, rounds: int = SELECT_ROUNDS) -> str:
    """The fastest kernel in selection rounds of their own: the campaign timed its candidates
    while others were being compiled and refitted, and the reported figures come from later
    rounds, so the winner's luck here does not inflate them. Several rounds, the candidates in
    turn, medians: on a shared host one timing each picks whoever ran in a quiet moment."""
    arrays = seeded_inputs(next(iter(kernels.values())).artifact.args, seed=1)
    samples: dict[str, list[float]] = {v: [] for v in kernels}
    for _ in range(rounds):
        for v, k in kernels.items():
            samples[v].append(kernel_time(k, arrays, min_s))
    return min(kernels, key=lambda v: statistics.median(samples[v]))


def compare_case(case: str, wl_name: str, shape: tuple[int, ...], base: str, target: Target,
                 tuned: list[dict[str, Any]], rounds: int, min_s: float) -> tuple[dict[str, Any], dict[str, float]]:
    wl = get_workload(wl_name)
    hand = hand_config(wl_name, shape, target)
    kernels = {v: LoadedKernel(build_workload(wl_name, shape, cfg, target).artifact)
               for v, cfg in (("default", "default"), ("hand", hand))}
    candidates = {f"tuned{n}": LoadedKernel(build_workload(wl_name, shape, cfg, target).artifact)
                  for n, cfg in enumerate(tuned)}
    figures: dict[str, Any] = {f"{case}_hand_config": hand["knobs"]}
    if candidates:
        pick = pick_best(candidates, min_s)
        kernels["tuned"] = candidates[pick]
        figures[f"{case}_tuned_config"] = tuned[int(pick[5:])]["knobs"]
    best = pick_best({v: kernels[v] for v in ("hand", "tuned") if v in kernels}, min_s)
    arrays = seeded_inputs(kernels["default"].artifact.args, seed=0)
    npf = numpy_fn(base, arrays, shape)
    samples: dict[str, list[float]] = {"numpy": [], **{v: [] for v in kernels}}
    for _ in range(rounds):
        samples["numpy"].append(time_py(npf, min_s))
        for v, k in kernels.items():
            # OpenBLAS's workers spin for a while after a call returns; let them
            # park so they do not steal the other core from the next measurement.
            time.sleep(SETTLE_S)
            samples[v].append(kernel_time(k, arrays, min_s))
        time.sleep(SETTLE_S)
    gf = {v: wl.flops(shape) / statistics.median(ts) / 1e9 for v, ts in samples.items()}
    ref = "im2col" if base == "im2col" else "numpy"
    figures[f"{case}_numpy_gflops"] = round(gf["numpy"], 2)
    for v in kernels:
        figures[f"{case}_{v}_gflops"] = round(gf[v], 2)
        figures[f"{case}_{v}_vs_{ref}"] = round(gf[v] / gf["numpy"], 3)
    figures[f"{case}_vs_{ref}"] = figures[f"{case}_{best}_vs_{ref}"]
    figures[f"{case}_source"] = best
    return figures, gf


def blas_core() -> str | None:
    """The kernel family numpy's OpenBLAS runs here (``SkylakeX``, ``Haswell``, ``Zen``...), or None."""
    import ctypes
    import glob

    libdir = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libdir / "*openblas*"))):
        lib = ctypes.CDLL(path)  # already loaded by numpy: this returns the same handle
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return str(fn().decode())
    return None


def blas_core_for(target: Target) -> str | None:
    """The OpenBLAS kernel family of the target's vector ISA when the target is narrower than
    this x86 host (AVX2 code on an AVX-512 host), else None: numpy then runs what the host has."""
    if target.arch != "x86_64" or not Target.host().has("avx512f") or target.implies("avx512f"):
        return None
    if target.implies("avx2") and target.implies("fma"):
        return "Haswell"
    return "Sandybridge" if target.implies("avx") else "Nehalem"


def match_blas_to_target(target: Target, argv: list[str] | None) -> None:
    """Compare like with like: for a --target narrower than this host, run again (once) with
    numpy's OpenBLAS pinned to kernels of the target's width (OPENBLAS_CORETYPE must be set before
    the library loads), so an AVX2 tune on an AVX-512 host is measured against AVX2 BLAS."""
    want = blas_core_for(target)
    if want is None or os.environ.get(_BLAS_RERUN) or argv is not None or blas_core() == want:
        return
    print(f"bench_kernels: target {target.cpu} is narrower than this host: numpy's OpenBLAS runs its {want} "
          "kernels too (re-running with OPENBLAS_CORETYPE)", file=sys.stderr)
    env = {**os.environ, "OPENBLAS_CORETYPE": want, _BLAS_RERUN: want}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_TRIALS} trials per case, fewer rounds and shorter timings (about 6 minutes)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    ap.add_argument("--trials", type=int, help=f"tuning budget per case (default {FULL_TRIALS}, --quick "
                    f"{QUICK_TRIALS}); 0 compares default and hand-picked configs only")
    ap.add_argument("--log", help="keep the campaign's records in this log and resume from those measured on this "
                    "host for this target (default: a temporary log, tuning from scratch)")
    ap.add_argument("--target", help="target to tune and run, e.g. 'llvm -mcpu=haswell' (default: this host's "
                    "CPU); it must run here")
    ap.add_argument("--cases", help="comma-separated subset of case names")
    ap.add_argument("--top", type=int, default=5, help="tuned = fastest of the campaign's top N configs, re-timed")
    ap.add_argument("--seed", type=int, default=1, help="the campaign's seed")
    args = ap.parse_args(argv)
    try:
        target = local_target(args.target)
    except TargetError as e:
        print(f"bench_kernels: error: {e}", file=sys.stderr)
        return 2
    match_blas_to_target(target, argv)
    trials = args.trials if args.trials is not None else (QUICK_TRIALS if args.quick else FULL_TRIALS)
    if trials < 0:
        print(f"bench_kernels: error: --trials must be >= 0, got {trials}", file=sys.stderr)
        return 2
    names = [c[0] for c in CASES]
    wanted = args.cases.split(",") if args.cases else names
    if unknown := [c for c in wanted if c not in names]:
        print(f"bench_kernels: error: unknown case(s) {', '.join(unknown)}; known: {', '.join(names)}",
              file=sys.stderr)
        return 2
    cases = [c for c in CASES if c[0] in wanted]
    rounds, min_s = (5, 0.1) if args.quick else (7, 0.2)

    from devices.fingerprint import cpu_fingerprint

    host = cpu_fingerprint(probe=False)
    figures: dict[str, Any] = {"host": host["cpu_name"], "cores": host["cores"], "target": str(target),
                               "trials": trials, "rounds": rounds,
                               "openblas_env_unset": OPENBLAS_ENV_UNSET, "numpy_blas_core": blas_core()}
    tmp = None if args.log else Path(tempfile.mkdtemp(prefix="kf-bench-kernels-"))
    log = Path(args.log) if args.log else Path(tmp or ".") / "bench_kernels.jsonl"
    try:
        recs: list[LogRecord] = []
        if trials:
            result = tune(cases, target, trials, log, host, args.seed)
            figures["tuning_wall_s"] = round(result.wall_s, 1)
            figures["trials_measured"] = result.measured
            figures["seconds_per_trial"] = round(result.wall_s / result.measured, 3) if result.measured else None
            recs = [r for r in FileSink(log).load() if applies_here(r, target, host)]
        rows = []
        # Other work on the machine hits OpenBLAS's spinning workers harder than our kernels: say how busy it was.
        figures["loadavg_1m_compare_start"] = round(os.getloadavg()[0], 2)
        peaks = [measured_peak_gflops(seconds=0.25, tries=8)]  # before and after: other work only lowers a try
        for case, wl_name, shape, base in cases:
            tuned = top_configs(recs, wl_name, shape, args.top)
            figs, gf = compare_case(case, wl_name, shape, base, target, tuned, rounds, min_s)
            figures.update(figs)
            rows.append((case, shape, gf))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'case':<16} {'shape':<26} {'numpy':>8} {'default':>8} {'hand':>8} {'tuned':>8}  "
          f"{'default/np':>10} {'hand/np':>8} {'tuned/np':>8}   (GFLOPS, median of {rounds} rounds)")
    for case, shape, gf in rows:
        t, npg = gf.get("tuned"), gf["numpy"]
        tuned_g, tuned_r = (f"{t:8.1f}", f"{t / npg:8.3f}") if t else ("       -", "       -")
        print(f"{case:<16} {','.join(map(str, shape)):<26} {npg:8.1f} {gf['default']:8.1f} {gf['hand']:8.1f} "
              f"{tuned_g}  {gf['default'] / npg:10.3f} {gf['hand'] / npg:8.3f} {tuned_r}")
    print("numpy baseline: matmul/batch_matmul = a @ b (OpenBLAS); dense = np.maximum(a @ b + bias, 0); "
          f"conv2d = im2col + matmul in numpy. Target: {target}")
    figures["loadavg_1m_compare_end"] = round(os.getloadavg()[0], 2)
    peaks.append(measured_peak_gflops(seconds=0.25, tries=8))
    pk = max(peaks, key=lambda p: p["peak_gflops"])
    best_ours = max(v for _, _, gf in rows for k, v in gf.items() if k != "numpy")
    best_any = max(best_ours, *(gf["numpy"] for _, _, gf in rows))
    figures.update({"peak_gflops": round(pk["peak_gflops"], 1), "peak_1core_gflops": round(pk["peak_1core_gflops"], 1),
                    "peak_chains": pk["chains"], "peak_lanes": pk["lanes"],
                    "peak_fraction": round(best_any / pk["peak_gflops"], 3),
                    "peak_fraction_ours": round(best_ours / pk["peak_gflops"], 3)})
    narrow = max(p["by_lanes"].get(target.vector_lanes_f32, 0.0) for p in peaks)
    if target.vector_lanes_f32 < pk["lanes"] and narrow > 0:
        # A narrower --target than the host (AVX2 code on an AVX-512 host): the peak its kernels can reach.
        figures.update({"peak_target_gflops": round(narrow, 1),
                        "peak_fraction_ours_target": round(best_ours / narrow, 3)})
        print(f"peak at the target's {target.vector_lanes_f32} lanes: {narrow:.1f} GFLOPS; ours reaches "
              f"{figures['peak_fraction_ours_target']:.2f} of it (numpy's BLAS: {figures['numpy_blas_core']})")
    print(f"peak: {pk['peak_gflops']:.1f} GFLOPS measured on {pk['cores']} cores ({pk['peak_1core_gflops']:.1f} on "
          f"one): {pk['chains']} independent {pk['lanes']}-lane FMA chains per core ({pk['vector_registers']} vector "
          f"registers), no memory traffic; the best kernel here (ours or numpy's) reaches "
          f"{figures['peak_fraction']:.2f} of it, ours {figures['peak_fraction_ours']:.2f}")
    if trials:
        spt = figures["seconds_per_trial"]
        print(f"tuning: {figures['trials_measured']} trials measured in {figures['tuning_wall_s']}s on the embedded "
              f"farm" + (f" ({spt:.2f}s per trial)" if spt else ""))
    busy = max(figures["loadavg_1m_compare_start"], figures["loadavg_1m_compare_end"])
    if busy > 1.5 * host["cores"]:
        print(f"warning: load average {busy:.1f} on {host['cores']} cores while timing: other work shared the cores, "
              "these figures (numpy's most: OpenBLAS's workers spin) say more about it than about the kernels",
              file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
