#!/usr/bin/env python3
"""Bring-your-own-kernel figures: user kernels tuned here, then timed against numpy.

1. Tune: one campaign on the embedded farm (an in-process tracker, one local
   device server, builds on a local Ray), xgb, ``--trials`` per kernel:
   - row softmax 1024x1000 (configs/kernels/softmax.py:rowsoftmax, a template);
   - layer norm 512x768, eps 1e-5 (configs/kernels/ops.py:layernorm, template-free);
   - matmul 512^3, twice: the template-free space (configs/kernels/ops.py:matmul_auto)
     and the hand-written built-in ``matmul`` template, at the same budget.
   The kernels enter the campaign as a YAML file names them (``parse_campaign``), so
   the device checks every candidate against its reference; every record must be OK
   and checked, and the counts are reported.
2. Re-time, on the same farm: each kernel's top configs by campaign time are
   measured again in a selection round of their own; the winner then alternates
   with numpy over several rounds (medians of medians), because this machine is
   noisy. Those jobs are checked too.
3. Figures: ``softmax_over_numpy`` and ``layernorm_over_numpy`` (numpy time / ours,
   goal >= 1.0), ``auto_over_template_matmul_512`` (template time / template-free
   time, goal >= 0.9), per-kernel medians in ms, ``seconds_per_trial``, every round's median.
   Exit status 1 when a record or re-timing job is not OK and checked, or numpy's formula
   disagrees with the kernel's compute (its naive schedule, run here); the figures still print.

--quick re-times 3 candidates per kernel over 5 rounds of 5 repeats of >= 50 ms (else 5, 9, 7,
150 ms); it tunes the same 64 trials per kernel.

    python benchmarks/bench_byok.py [--quick] [--json] [--trials N] [--log LOG] [--top K]

numpy runs its elementwise work on one thread; the farm's kernels use every core
(``a @ b``, shown for scale, runs OpenBLAS's threads).
"""
from __future__ import annotations

import os

# numpy's BLAS is the matmul scale: run as a script, drop before numpy loads the settings that make
# OpenBLAS pick a kernel or cache size other than this host's (as bench_kernels.py does).
OPENBLAS_ENV_UNSET = sorted(k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                            if __name__ == "__main__" and os.environ.pop(k, None) is not None)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from farm.campaign.baselines import median_s
from farm.campaign.sinks import FileSink  # noqa: E402
from farm.log import LogRecord  # noqa: E402
from farm.records.measure import MeasureResult, RunOptions  # noqa: E402
from farm.runtime.buffers import compare, seeded_inputs  # noqa: E402
from farm.target import Target  # noqa: E402

KERNELS = ROOT / "configs" / "kernels"
# Per kernel, --quick included: the four tasks' 256 trials take about 4-5 minutes on 2 cores (about
# 1 s per trial), under the ~8 minutes past which --quick would tune fewer.
TRIALS = 64
KEY = "local"
SETTLE_S = 0.3
EPS = 1e-5


@dataclass(frozen=True)
class Case:
    """One kernel of the campaign: how the YAML names it, and its figures' prefix."""

    name: str  # prefix in the JSON
    kind: str  # the campaign entry's key: template | compute | name (a built-in)
    kernel: str  # FILE.py:function, or a built-in's name
    shape: tuple[int, ...]
    label: str  # for the table


CASES = (
    Case("softmax", "template", f"{KERNELS / 'softmax.py'}:rowsoftmax", (1024, 1000), "rowsoftmax (template)"),
    Case("layernorm", "compute", f"{KERNELS / 'ops.py'}:layernorm", (512, 768), "layernorm (template-free)"),
    Case("matmul_auto_512", "compute", f"{KERNELS / 'ops.py'}:matmul_auto", (512, 512, 512),
         "matmul_auto (template-free)"),
    Case("matmul_template_512", "name", "matmul", (512, 512, 512), "matmul (built-in template)"),
)


# --- numpy baselines (the formulas, float32) ---------------------------------------------

def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * g + b


def np_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "softmax": np_softmax, "layernorm": np_layernorm, "matmul_auto_512": np_matmul}


# --- tuning --------------------------------------------------------------------------------------

def campaign_yaml(trials: int, seed: int, min_repeat_ms: float) -> str:
    """The campaign, written as a user would: kernels by FILE.py:function."""
    lines = ["name: bench_byok", "tuner: xgb", f"trials: {trials}", "batch_size: 8", f"seed: {seed}",
             "exclusive_timing: true", "build_timeout_s: 120",
             f"timing: {{repeat: 3, min_repeat_ms: {min_repeat_ms:g}, timeout_s: 20}}", "workloads:"]
    lines += [f"  - {{{c.kind}: {json.dumps(c.kernel)}, shape: {list(c.shape)}}}" for c in CASES]
    return "\n".join(lines) + "\n"


def tune(spec: Any, session: Any, sink: Any) -> Any:
    """Run the campaign on the farm ``session`` talks to (as ``farm tune`` does on its embedded farm)."""
    # As `farm tune` starts a local Ray: token authentication asked for explicitly (a new local Ray
    # turns it on anyway; left unset, the driver and its cluster disagree). Read when Ray is imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from farm.campaign.builds import init_ray
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.progress import Progress
    from farm.workloads.loader import kernel_dirs

    # Builds and timing take turns: builds may use every core. The kernels' directory reaches
    # Ray's workers as `farm tune` ships it (runtime_env py_modules).
    init_ray(None, os.cpu_count() or 1, kernel_dirs(w.workload for w in spec.workloads))
    try:
        return CampaignRunner(spec, session, Progress(), sink=sink, exclusive_timing=True).run()
    finally:
        ray.shutdown()  # its idle workers would share the cores with the timings below


def audit(recs: list[LogRecord], cases: dict[str, Any]) -> tuple[dict[str, list[int]], list[str]]:
    """Per case [records, OK, checked], and a line for each record that is not both."""
    counts: dict[str, list[int]] = {}
    bad: list[str] = []
    for name, (wl, shape, wl_hash) in cases.items():
        mine = [r for r in recs if r.workload == wl.name and r.args == shape and r.workload_hash == wl_hash]
        counts[name] = [len(mine), sum(r.ok for r in mine), sum(bool(r.ok and r.checked) for r in mine)]
        bad += [f"{name} config {r.config_index}: {r.outcome.value} checked={r.checked} {r.message[:160]}"
                for r in mine if not (r.ok and r.checked)]
    return counts, bad


# --- re-timing on the farm -------------------------------------------------------------------------

class FarmTimer:
    """Times built configs on the farm's device, each job checked against the kernel's reference."""

    def __init__(self, session: Any, options: RunOptions) -> None:
        self.session, self.options = session, options
        self.jobs = self.ok = self.checked = 0
        self.bad: list[str] = []

    def median_s(self, art: Any, ref: Any, what: str) -> float:
        res: MeasureResult = self.session.submit(art, key=KEY, options=self.options, reference=ref).result(
            4 * self.options.timeout_s + 60)
        self.jobs += 1
        self.ok += res.ok
        self.checked += bool(res.ok and res.checked)
        if not (res.ok and res.checked):
            self.bad.append(f"re-time {what}: {res.outcome.value} checked={res.checked} {res.message[:160]}")
            return float("inf")
        return res.median_s


def candidates(wl: Any, shape: tuple[int, ...], wl_hash: str, recs: list[LogRecord], target: str,
               top: int, options: RunOptions) -> tuple[list[tuple[dict[str, Any], Any]], Any]:
    """The case's ``top`` fastest distinct configs in the campaign, built here, and their reference."""
    from farm.client.reference import workload_reference
    from farm.log import query
    from farm.workloads.registry import build_workload

    best = query.top_k(recs, top, workload=wl.name, args=list(shape), workload_hash=wl_hash)
    arts = [(r.config, build_workload(wl, shape, r.config, target).artifact) for r in best]
    ref = workload_reference(wl, shape, arts[0][1], target, options) if arts else None
    return [(cfg, art.with_reference(ref)) for cfg, art in arts], ref


def numpy_median_s(fn: Callable[..., Any], arrays: list[np.ndarray], repeat: int, min_s: float) -> float:
    """The median of ``repeat`` timings of ``fn(*arrays)`` (farm.campaign.baselines' clock)."""
    return median_s(fn, arrays, repeat=repeat, min_s=min_s)


# --- the run ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"the same {TRIALS} trials per kernel; fewer "
                    "candidates re-timed, fewer rounds and shorter timings")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    ap.add_argument("--trials", type=int, default=TRIALS, help=f"tuning budget per kernel (default {TRIALS})")
    ap.add_argument("--log", help="keep the campaign's records in this log (e.g. for `farm show ... --config best "
                    "--log LOG`) and resume from those measured on this host for this target (default: a "
                    "temporary log, tuning from scratch)")
    ap.add_argument("--top", type=int, help="configs per kernel re-timed in the selection round "
                    "(default 5, --quick 3)")
    ap.add_argument("--seed", type=int, default=1, help="the campaign's seed")
    args = ap.parse_args(argv)
    if args.trials < 1:
        print(f"bench_byok: error: --trials must be >= 1, got {args.trials}", file=sys.stderr)
        return 2
    rounds, repeat, min_ms = (5, 5, 50.0) if args.quick else (9, 7, 150.0)
    top = args.top or (3 if args.quick else 5)
    t_start = time.monotonic()
    tmp = None if args.log else Path(tempfile.mkdtemp(prefix="kf-bench-byok-"))
    log = Path(args.log) if args.log else Path(tmp or ".") / "bench_byok.jsonl"
    try:
        return run(args, log, rounds, repeat, min_ms, top, t_start)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, log: Path, rounds: int, repeat: int, min_ms: float, top: int,
        t_start: float) -> int:
    from bench_kernels import HostLog, applies_here

    from devices.fingerprint import cpu_fingerprint
    from farm.campaign.config import parse_campaign
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    # The YAML is never written: the name only locates parse errors (kernel paths are absolute).
    spec = parse_campaign(campaign_yaml(args.trials, args.seed, 30), ROOT / "benchmarks" / "bench_byok.yaml")
    spec = spec.with_overrides(log=str(log))
    host = cpu_fingerprint(probe=False)
    figures: dict[str, Any] = {"host": host["cpu_name"], "cores": host["cores"], "tuner": spec.tuner,
                               "trials_per_kernel": spec.trials, "top": top, "rounds": rounds, "repeat": repeat,
                               "min_repeat_ms": min_ms, "openblas_env_unset": OPENBLAS_ENV_UNSET}
    options = RunOptions(repeat=repeat, min_repeat_ms=min_ms, timeout_s=30)
    with EmbeddedFarm() as farm, connect(farm.address, token=farm.token) as session:
        target = session.target(KEY)  # what the campaign builds for: the device's own fingerprint
        figures["target"] = target
        tgt = Target.parse(target)
        result = tune(spec, session, HostLog(log, tgt, host))
        figures["tuning_wall_s"] = round(result.wall_s, 1)
        figures["trials_measured"] = result.measured
        figures["trials_resumed"] = result.resumed
        figures["seconds_per_trial"] = round(result.wall_s / result.measured, 3) if result.measured else None
        failed = [f"{t.task}: {t.error or 'no config ran correctly'}" for t in result.tasks if not t.ok]

        recs = [r for r in FileSink(log).load() if applies_here(r, tgt, host)]
        cases = {c.name: (w.workload, w.shape, w.workload.compute_hash(w.shape, target))
                 for c, w in zip(CASES, spec.workloads)}
        counts, bad = audit(recs, cases)
        figures["records"] = sum(n for n, _, _ in counts.values())
        figures["records_ok"] = sum(ok for _, ok, _ in counts.values())
        figures["records_checked"] = sum(ch for _, _, ch in counts.values())
        figures["records_per_kernel"] = counts  # [records, OK, OK and checked]
        # A space smaller than the budget is tuned whole (the softmax template's has 48 configs).
        figures["space_size"] = {name: len(wl.space(shape, target)) for name, (wl, shape, _) in cases.items()}
        for name, t in zip(cases, result.tasks):  # one task per workload, in the campaign's order
            figures[f"{name}_campaign_best_ms"] = round(t.best_s * 1e3, 4) if t.best_s else None

        timer = FarmTimer(session, options)
        loadavg_start = os.getloadavg()[0]
        picked = select(timer, cases, recs, target, top, options, figures)
        inputs = {name: [a for a, s in zip(seeded_inputs(art.args, 0), art.args) if s.role == "in"]
                  for name, (art, _) in picked.items()}
        mismatch = baseline_check(cases, inputs)
        samples = compare_rounds(timer, picked, inputs, rounds, repeat, min_ms / 1e3)
        figures["loadavg_1m_compare_start"] = round(loadavg_start, 2)
        figures["loadavg_1m_compare_end"] = round(os.getloadavg()[0], 2)
    figures.update({"retime_jobs": timer.jobs, "retime_ok": timer.ok, "retime_checked": timer.checked})

    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items() if v}
    for k, v in ms.items():
        figures[f"{k}_ms"] = round(v, 4)
    # Every round's median, to judge the noise the medians were taken through.
    figures["rounds_ms"] = {k: [round(x * 1e3, 3) for x in v] for k, v in samples.items() if v}

    def ratio(num: str, den: str) -> float | None:
        return round(ms[num] / ms[den], 3) if num in ms and den in ms and ms[den] > 0 else None

    figures["softmax_over_numpy"] = ratio("softmax_numpy", "softmax")
    figures["layernorm_over_numpy"] = ratio("layernorm_numpy", "layernorm")
    figures["auto_over_template_matmul_512"] = ratio("matmul_template_512", "matmul_auto_512")
    goals = {"auto_over_template_matmul_512": 0.9, "softmax_over_numpy": 1.0, "layernorm_over_numpy": 1.0}
    figures["goals_missed"] = [k for k, g in goals.items() if figures[k] is None or figures[k] < g]
    figures["wall_s"] = round(time.monotonic() - t_start, 1)

    print_table(figures, ms, rounds)
    problems = failed + bad + timer.bad + mismatch
    figures["all_ok_and_checked"] = not problems
    for p in problems:
        print(f"bench_byok: FAILED: {p}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    return 1 if problems else 0


def select(timer: FarmTimer, cases: dict[str, Any], recs: list[LogRecord], target: str, top: int,
           options: RunOptions, figures: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Per case, the fastest of its ``top`` campaign configs in a selection round of its own (the
    campaign timed them between builds and refits; a winner's luck there is not carried into the
    figures): its artifact and reference."""
    picked: dict[str, tuple[Any, Any]] = {}
    for name, (wl, shape, wl_hash) in cases.items():
        cands, ref = candidates(wl, shape, wl_hash, recs, target, top, options)
        if not cands:
            continue
        times = [timer.median_s(art, ref, f"{name} config {cfg['index']}") for cfg, art in cands]
        i = min(range(len(cands)), key=times.__getitem__)
        picked[name] = (cands[i][1], ref)
        figures[f"{name}_config"] = cands[i][0]
    return picked


def compare_rounds(timer: FarmTimer, picked: dict[str, tuple[Any, Any]], inputs: dict[str, list[np.ndarray]],
                   rounds: int, repeat: int, min_s: float) -> dict[str, list[float]]:
    """Rounds that alternate numpy and the farm, so the machine's noise hits both: seconds per round."""
    samples: dict[str, list[float]] = {k: [] for k in [*picked, *(f"{n}_numpy" for n in BASELINES)]}
    for _ in range(rounds):
        for name, (art, ref) in picked.items():
            if name in BASELINES:
                samples[f"{name}_numpy"].append(numpy_median_s(BASELINES[name], inputs[name], repeat, min_s))
                # OpenBLAS's workers spin a while after a call: let them park before the farm's turn.
                time.sleep(SETTLE_S)
            samples[name].append(timer.median_s(art, ref, name))
            time.sleep(SETTLE_S)
    return samples


def baseline_check(cases: dict[str, Any], inputs: dict[str, list[np.ndarray]]) -> list[str]:
    """numpy's formula computes what the kernel does: compared with the kernel's naive schedule here."""
    out = []
    for name, fn in BASELINES.items():
        if name not in inputs:
            continue
        wl, shape, _ = cases[name]
        msg = compare(np.asarray(fn(*inputs[name])), wl.reference(shape, inputs[name])[0], 1e-4)
        if msg is not None:
            out.append(f"the numpy baseline of {name} disagrees with the kernel's compute: {msg}")
    return out


def print_table(figures: dict[str, Any], ms: dict[str, float], rounds: int) -> None:
    def cell(key: str) -> str:
        return f"{ms[key]:9.3f}" if key in ms else "        -"

    def r(key: str) -> str:
        return f"{figures[key]:6.3f}" if figures.get(key) is not None else "     -"

    label = {c.name: c.label for c in CASES}
    print(f"{'kernel':<18} {'baseline':<28} {'base ms':>9}   {'ours':<28} {'ours ms':>9}  {'ratio':>6}  goal"
          f"   (ms: medians of {rounds} rounds, each the median of {figures['repeat']} repeats)")
    rows = [("softmax 1024x1000", "numpy", "softmax_numpy", label["softmax"], "softmax", "softmax_over_numpy", 1.0),
            ("layernorm 512x768", "numpy", "layernorm_numpy", label["layernorm"], "layernorm",
             "layernorm_over_numpy", 1.0),
            ("matmul 512^3", label["matmul_template_512"], "matmul_template_512", label["matmul_auto_512"],
             "matmul_auto_512", "auto_over_template_matmul_512", 0.9)]
    for kernel, base, bkey, ours, okey, rkey, goal in rows:
        met = figures.get(rkey) is not None and figures[rkey] >= goal
        print(f"{kernel:<18} {base:<28} {cell(bkey)}   {ours:<28} {cell(okey)}  {r(rkey)}  >={goal:g} "
              f"{'met' if met else 'MISSED'}")
    best = [f"{c.name} {figures[f'{c.name}_campaign_best_ms']}" for c in CASES
            if figures.get(f"{c.name}_campaign_best_ms") is not None]
    print(f"campaign's best while tuning (ms, not re-timed): {', '.join(best)}")
    if "matmul_auto_512_numpy" in ms:
        print(f"for scale: numpy a @ b (OpenBLAS) 512^3 {ms['matmul_auto_512_numpy']:.3f} ms")
    print("ratio: baseline ms / ours ms. numpy's elementwise work runs on one thread, the farm's kernels on "
          f"every core ({figures['cores']}); target {figures['target']}")
    per = ", ".join(f"{k} {n}" + (" (its whole space)" if n == figures["space_size"][k] else "")
                    for k, (n, _, _) in figures["records_per_kernel"].items())
    print(f"tuning: {figures['trials_measured']} trials measured (budget {figures['trials_per_kernel']} per kernel, "
          f"xgb: {per}) in {figures['tuning_wall_s']}s ({figures['seconds_per_trial']}s per trial); records OK "
          f"{figures['records_ok']}/{figures['records']}, checked {figures['records_checked']}/{figures['records']}; "
          f"re-timing jobs OK {figures['retime_ok']}/{figures['retime_jobs']}, checked "
          f"{figures['retime_checked']}/{figures['retime_jobs']}; load average "
          f"{figures['loadavg_1m_compare_start']} -> {figures['loadavg_1m_compare_end']} while comparing")


if __name__ == "__main__":
    sys.exit(main())
