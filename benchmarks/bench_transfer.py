#!/usr/bin/env python3
"""Transfer across real devices: tuned live here, with and without another machine's records.

The replay datasets in benchmarks/data/ (see its README) were measured on another machine, named in
each record's fingerprint (a Zen 4 with AVX-512 for the committed ones). Handing them to a tuner on
this host is therefore a genuine cross-device transfer: other cores, caches and clock, often another
vector width. This benchmark measures what that transfer buys, live.

For each task (``--tasks``; default matmul 512³ and conv2d 3×3 64→64 56², ``--quick`` matmul only) and
each seed (``--seeds``), two campaigns tune it on the embedded farm, as ``farm tune`` does (an
in-process tracker, one local device server under a key of this benchmark's own, builds on a local
Ray, real compile and measurement, builds and timing taking turns), with the xgb tuner at batch 8 and
the same seed:

* cold: a fresh log, nothing to learn from but its own measurements;
* transfer: the same, but the campaign starts with the source records as history (what
  ``transfer: true`` does with a shared log that holds them). The matmul source is the same shape
  measured on the other machine, plus matmul 384³ from there; the conv2d sources are other shapes
  from there (other shape *and* other machine).

The two modes alternate, cold first for even seeds, transfer first for odd ones, so a drift in the
machine's load falls on both.

Source records. Knob options follow the target (vector lanes, registers), so a record may not exist
on this host: each record is looked up by its knob values in this host's space for its own shape.
Those that map are handed to the tuner unchanged (their own device key, target and fingerprint): the
xgb tuner's transfer expert ranks candidates with them and never counts them as this task's trials or
results; the benchmark checks that (the campaign loaded none as its own) and stops if it did. Those
that do not map are skipped. Both counts are printed per source.

Trials to 95%. Each run's configs are taken in proposal order: trial 1 is the template's default
config (every campaign measures it first), then the configs in the order the tuner proposed them
(not the order they finished). What a campaign measured is not what a config is worth: on a shared
machine the same kernel times 30-50% apart a minute apart (clock and neighbours), so the best of
hundreds of campaign timings is a lucky one, a bar no other run reaches however good its configs.
So after the campaigns every config any run measured at >= 60% of the best campaign timing is built
again and re-timed side by side on the farm's device, ``RETIME_ROUNDS`` rounds in a shuffled order
(the campaigns' timing options), and its median is its worth; configs below that floor count as 0. The bar is 95%
of the best re-timed config; a run's trials-to-95% is the first trial at which its best so far
reaches it, and a run that never does counts as the budget + 1 ("never" in the table). The same
figures from the campaigns' own timings are printed (and in the JSON, ``campaign_timed``) beside
them. Reported: the median per mode,
transfer/cold, the worst seed of each mode (a user runs one campaign, not a median), the best of the
first batch (does the source help before anything here is measured?) and the transfer expert's share
of the proposals (a misleading source's share should shrink), and the 1-minute load average around
each run (other work on the cores slows what a run measures, so it cannot reach a bar set by a run in
a quiet spell). With --json the GFLOPS and config indices of every trial come last. If cold tuning
reaches 95% within its first batch on most seeds, that task cannot show transfer: the benchmark says
so (try ``--tasks dense`` or ``conv2d_1x1``, harder spaces).

    python benchmarks/bench_transfer.py [--quick] [--json] [--trials N] [--seeds N] [--tasks a,b] [--target T]

``--target`` tunes code for another target this host runs (``'llvm -mcpu=haswell'`` on an AVX-512
host: AVX2 code, 16 registers, as an AVX2 machine would): the sources' AVX-512 knob values then map
only where the narrower space offers them. On a host of the sources' own CPU the default target is
no cross-device transfer at all.

Goals (matmul): transfer_over_cold_trials_to_95 <= 0.7; transfer_over_cold_worst (the worse ratio of
the tasks run) <= 1.1; cold_worst_trials_to_95 <= 48. The last line with --json is one JSON object.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farm.campaign.driver import CampaignRunner  # noqa: E402
from farm.campaign.sinks import FileSink  # noqa: E402
from farm.errors import FarmError, TargetError  # noqa: E402
from farm.log import LogRecord, load_log  # noqa: E402
from farm.records.measure import RunOptions  # noqa: E402
from farm.target import local_target  # noqa: E402
from farm.workloads.registry import get_workload  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
KEY = "bench-transfer-here"  # the embedded farm's device key: no source record may carry it (see load_sources)
BATCH = 8
GOAL = 0.95
RETIME_FLOOR = 0.6  # of the best campaign timing: configs below it cannot be near the best (noise is < 40%)
RETIME_ROUNDS = 3
TIMING = RunOptions(repeat=3, min_repeat_ms=30, timeout_s=20)  # the campaigns' and the re-timing's
GOALS = {"transfer_over_cold_trials_to_95": 0.7, "transfer_over_cold_worst": 1.1, "cold_worst_trials_to_95": 48}


@dataclass(frozen=True)
class TaskDef:
    workload: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]  # files in benchmarks/data/, measured on another machine


TASKS = {
    "matmul": TaskDef("matmul", (512, 512, 512), ("matmul_512x512x512_2t.jsonl.gz", "matmul_384x384x384_2t.jsonl.gz")),
    "conv2d": TaskDef("conv2d", (1, 64, 56, 56, 64, 3, 1, 1),
                      ("conv2d_1x64x40x40x32x3x1x1.jsonl.gz", "conv2d_1x32x28x28x64x3x1x1.jsonl.gz")),
    # Harder spaces, for a task whose cold runs reach 95% within their first batch here.
    "dense": TaskDef("dense_bias_relu", (512, 1024, 1024), ("dense_bias_relu_256x768x512_2t.jsonl.gz",)),
    "conv2d_1x1": TaskDef("conv2d", (1, 256, 56, 56, 64, 1, 1, 0), ("conv2d_1x128x28x28x128x1x1x0.jsonl.gz",)),
}
QUICK: dict[str, Any] = {"tasks": "matmul", "seeds": 3, "trials": 64}
FULL: dict[str, Any] = {"tasks": "matmul,conv2d", "seeds": 5, "trials": 128}


# --- source records ------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _space(workload: str, shape: tuple[int, ...], target: str) -> Any:
    return get_workload(workload).space(shape, target)


def maps_here(rec: LogRecord, target: str) -> bool:
    """The record's config exists, by its knob values, in this host's space for the record's own
    shape. (``ConfigSpace.locate`` falls back to the raw index when the values are not offered,
    which on another target names an unrelated config: a record without a match is skipped instead.)"""
    if not rec.knobs:
        return False
    try:
        _space(rec.workload, tuple(rec.args), target).from_json({"knobs": rec.knobs})
    except (FarmError, ValueError, KeyError, TypeError):
        return False
    return True


def load_sources(files: tuple[str, ...], target: str, key: str = KEY,
                 data: Path | None = None) -> tuple[list[LogRecord], dict[str, dict[str, Any]]]:
    """The records of ``files`` (in ``data``, default benchmarks/data/) that map onto this host's
    spaces, and per file what was mapped, what skipped and which machines measured them."""
    data = data or DATA
    kept: list[LogRecord] = []
    counts: dict[str, dict[str, Any]] = {}
    for name in files:
        recs = load_log(data / name).records
        if not recs:
            raise FileNotFoundError(f"transfer source {data / name} is missing or empty")
        if clash := [r for r in recs if r.device_key == key]:
            # The tuner tells its own records from others' by device key: these would count as this host's.
            raise ValueError(f"{name}: {len(clash)} records carry this benchmark's device key {key!r}")
        ok = [r for r in recs if maps_here(r, target)]
        kept += ok
        counts[name] = {"mapped": len(ok), "skipped": len(recs) - len(ok),
                        "measured_on": sorted({str((r.fingerprint or {}).get("cpu_name", "?")) for r in recs})}
    return kept, counts


class SourceSink(FileSink):
    """A fresh campaign log that starts with the source records as its history (never written to it)."""

    def __init__(self, path: Path, sources: list[LogRecord]) -> None:
        super().__init__(path)
        self.sources = sources

    def load(self) -> list[LogRecord]:
        return list(self.sources) + super().load()


class TracedRunner(CampaignRunner):
    """A campaign that also keeps its tuner's proposals in order and what it took from history as its own."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.proposed: list[int] = []
        self.loaded_as_own = 0
        self.tuner: Any = None

    def _make_task(self, *args: Any, **kw: Any) -> Any:
        task = super()._make_task(*args, **kw)
        tuner = self.tuner = task.tuner
        self.loaded_as_own = max(task.done_trials, tuner.trials, len(tuner.results))
        self.proposed.extend(task.pending)  # the template's default, measured first
        propose = tuner.propose

        def traced(n: int) -> list[int]:  # on the proposer's thread, one proposal at a time
            picks = propose(n)
            self.proposed.extend(picks)
            return picks

        tuner.propose = traced
        return task


# --- one campaign ----------------------------------------------------------------------------

def tune_once(session: Any, task: TaskDef, mode: str, seed: int, trials: int, sources: list[LogRecord],
              workdir: Path, target: str | None = None) -> dict[str, Any]:
    """One campaign; its per-trial GFLOPS in proposal order and where its proposals came from."""
    from farm.campaign.config import CampaignSpec, WorkloadSpec

    log = workdir / f"{task.workload}_{'x'.join(map(str, task.shape))}_{mode}_{seed}.jsonl"
    spec = CampaignSpec(
        name=f"bench-transfer-{mode}-{seed}", workloads=(WorkloadSpec(task.workload, task.shape),), log=log,
        device_keys=(KEY,), tuner="xgb", trials=trials, batch_size=BATCH, seed=seed, transfer=mode == "transfer",
        exclusive_timing=True, timing=TIMING, build_timeout_s=120, target=target)
    runner = TracedRunner(spec, session, sink=SourceSink(log, sources if mode == "transfer" else []),
                          exclusive_timing=True)
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    runner.run()
    seconds = time.monotonic() - t0
    if runner.loaded_as_own:
        raise RuntimeError(f"{mode} seed {seed}: the campaign counted {runner.loaded_as_own} source records as its "
                           "own measurements; transfer records must only rank")
    got = {r.config_index: (r.gflops if r.ok else 0.0) for r in load_log(log).records if r.device_key == KEY}
    order = [i for i in runner.proposed if i in got]
    by = getattr(runner.tuner, "picked_by", {})
    return {"gflops": [got[i] for i in order], "configs": order,
            "expert": [by.get(i, "default" if n == 0 else "random") for n, i in enumerate(order)],
            "seconds": round(seconds, 1), "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]}


# --- figures ---------------------------------------------------------------------------------

def trials_to(gflops: list[float], bar: float, budget: int) -> int:
    """First 1-based trial whose best so far reaches ``bar``; ``budget + 1`` if none does."""
    best = 0.0
    for n, g in enumerate(gflops, 1):
        best = max(best, g)
        if best >= bar:
            return n
    return budget + 1


def transfer_share(experts: list[str]) -> list[float]:
    """Per batch of proposals (after the default): the transfer expert's share of it."""
    props = experts[1:]
    return [round(sum(e == "transfer" for e in props[i:i + BATCH]) / len(props[i:i + BATCH]), 3)
            for i in range(0, len(props), BATCH)]


def summarize(runs: dict[str, dict[int, dict[str, Any]]], trials: int, key: str = "gflops") -> dict[str, Any]:
    """Trials to 95% of the best of any run, per mode and seed, and what they say; ``key``: each run's
    GFLOPS per trial in proposal order (``gflops``: as the campaign timed them; ``retimed``)."""
    runs = {m: {s: dict(r, gflops=r[key]) for s, r in by.items()} for m, by in runs.items()}
    best = max(max(r["gflops"], default=0.0) for m in runs.values() for r in m.values())
    bar = GOAL * best
    first = BATCH + 1  # the default and one batch
    out: dict[str, Any] = {"best_gflops": round(best, 2), "bar_gflops": round(bar, 2)}
    for mode, by_seed in runs.items():
        t = [trials_to(by_seed[s]["gflops"], bar, trials) for s in sorted(by_seed)]
        out[mode] = {"trials_to_95": t, "median": statistics.median(t), "worst": max(t),
                     "never": sum(x > trials for x in t),
                     "first_batch_best_fraction": statistics.median(
                         max(by_seed[s]["gflops"][:first], default=0.0) / best if best else 0.0 for s in by_seed),
                     "seconds": round(sum(r["seconds"] for r in by_seed.values()), 1),
                     # other work on the machine slows what a run measures: the 1-minute load at its start and end
                     "loadavg_1m": [by_seed[s].get("loadavg") for s in sorted(by_seed)]}
    cold, tr = out["cold"], out["transfer"]
    out["transfer_over_cold"] = round(tr["median"] / cold["median"], 3)
    out["cold_within_first_batch"] = sum(x <= first for x in cold["trials_to_95"])
    shares = [transfer_share(r["expert"]) for r in runs["transfer"].values()]
    n = max((len(s) for s in shares), default=0)
    out["transfer_share_per_batch"] = [round(statistics.median(s[b] for s in shares if b < len(s)), 3)
                                       for b in range(n)]
    return out


def retime(session: Any, task: TaskDef, runs: dict[str, dict[int, dict[str, Any]]], target: str, seed: int = 0,
           floor: float = RETIME_FLOOR, rounds: int = RETIME_ROUNDS) -> dict[int, float]:
    """GFLOPS of every config some run timed at >= ``floor`` x the best campaign timing, built again and
    timed side by side on the farm's device, as the campaigns timed them (``TIMING``, checked):
    ``rounds`` rounds, each in its own shuffled order, the median of each config."""
    import random

    from farm.workloads.registry import build_workload

    best = max(max(r["gflops"], default=0.0) for by in runs.values() for r in by.values())
    picked = sorted({c for by in runs.values() for r in by.values() for c, g in zip(r["configs"], r["gflops"])
                     if g >= floor * best})
    built = {c: build_workload(task.workload, task.shape, str(c), target).artifact for c in picked}
    flops = get_workload(task.workload).flops(task.shape)
    times: dict[int, list[float]] = {c: [] for c in picked}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(picked)
        rng.shuffle(order)
        for c in order:
            res = session.submit(built[c], key=KEY, options=TIMING).result(4 * TIMING.timeout_s + 60)
            if not (res.ok and res.checked):
                raise RuntimeError(f"re-timing config {c} of {task.workload}: {res.outcome.value} {res.message[:200]}")
            times[c].append(res.median_s)
    return {c: flops / statistics.median(t) / 1e9 for c, t in times.items()}


def fmt(t: int, trials: int) -> str:
    return "never" if t > trials else str(t)


def print_task(name: str, task: TaskDef, res: dict[str, Any], seeds: list[int], trials: int) -> None:
    src = res["sources"]
    ct = res["campaign_timed"]
    print(f"\n{name}: {task.workload} {','.join(map(str, task.shape))}; best config re-timed {res['best_gflops']:.1f} "
          f"GFLOPS, 95% = {res['bar_gflops']:.1f} (the campaigns' best timing {ct['best_gflops']:.1f}); {trials} "
          f"trials, batch {BATCH}; {res['retimed_configs']} configs re-timed side by side in "
          f"{res['retime_seconds']:.0f}s")
    for f, c in src.items():
        print(f"  source {f} (measured on {', '.join(c['measured_on'])}): {c['mapped']} records map onto this "
              f"host's space for their shape (used to rank), {c['skipped']} skipped")
    print(f"  {'seed':>6} {'cold':>8} {'transfer':>9}   {'cold':>8} {'transfer':>9}   (trials to 95%, in proposal "
          "order: re-timed | as the campaigns timed them)")
    for n, s in enumerate(seeds):
        print(f"  {s:>6} {fmt(res['cold']['trials_to_95'][n], trials):>8} "
              f"{fmt(res['transfer']['trials_to_95'][n], trials):>9}   {fmt(ct['cold']['trials_to_95'][n], trials):>8} "
              f"{fmt(ct['transfer']['trials_to_95'][n], trials):>9}")
    c, t = res["cold"], res["transfer"]
    print(f"  {'median':>6} {c['median']:>8g} {t['median']:>9g}   {ct['cold']['median']:>8g} "
          f"{ct['transfer']['median']:>9g}   transfer/cold {res['transfer_over_cold']:.2f} | "
          f"{ct['transfer_over_cold']:.2f}")
    print(f"  {'worst':>6} {fmt(c['worst'], trials):>8} {fmt(t['worst'], trials):>9}   "
          f"{fmt(ct['cold']['worst'], trials):>8} {fmt(ct['transfer']['worst'], trials):>9}")
    print(f"  best of the first {BATCH + 1} trials / best of any run (median): "
          f"cold {c['first_batch_best_fraction']:.2f}, transfer {t['first_batch_best_fraction']:.2f}; "
          f"seconds: cold {c['seconds']:.0f}, "
          f"transfer {t['seconds']:.0f}")
    print(f"  transfer expert's share of each batch (median over seeds): {res['transfer_share_per_batch']}")
    print(f"  load average (1 min) at each run's start and end, by seed: cold {c['loadavg_1m']}, "
          f"transfer {t['loadavg_1m']}")
    if res["cold_within_first_batch"] * 2 > len(seeds):
        print(f"  note: cold tuning reached 95% within its first batch on {res['cold_within_first_batch']} of "
              f"{len(seeds)} seeds: this task cannot show transfer here; swap it for a harder one "
              "(--tasks dense or conv2d_1x1)")


def run(task_names: list[str], seeds: list[int], trials: int, target: str) -> dict[str, Any]:
    # A local Ray as `farm tune` starts one: token authentication asked for explicitly (read at import).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from farm.campaign.builds import init_ray
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    sources = {n: load_sources(TASKS[n].sources, target) for n in task_names}
    results: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="kf-bench-transfer-"))
    init_ray(None, os.cpu_count() or 1)  # builds and timing take turns: builds may use every core
    try:
        with EmbeddedFarm(key=KEY) as farm, connect(farm.address, token=farm.token) as session:
            for name in task_names:
                runs: dict[str, dict[int, dict[str, Any]]] = {"cold": {}, "transfer": {}}
                for s in seeds:
                    for mode in ("cold", "transfer") if s % 2 == 0 else ("transfer", "cold"):
                        r = tune_once(session, TASKS[name], mode, s, trials, sources[name][0], workdir, target)
                        runs[mode][s] = r
                        print(f"{name} seed {s} {mode}: {len(r['gflops'])} trials, best "
                              f"{max(r['gflops'], default=0):.1f} GFLOPS, {r['seconds']:.0f}s, load average "
                              f"{r['loadavg'][0]:.1f} -> {r['loadavg'][1]:.1f}", file=sys.stderr)
                t1 = time.monotonic()
                worth = retime(session, TASKS[name], runs, target)
                for by in runs.values():
                    for r in by.values():
                        r["retimed"] = [worth.get(c, 0.0) for c in r["configs"]]
                res = summarize(runs, trials, "retimed")
                res["campaign_timed"] = {k: v for k, v in summarize(runs, trials).items()
                                         if k != "transfer_share_per_batch"}
                res["retimed_configs"] = len(worth)
                res["retime_seconds"] = round(time.monotonic() - t1, 1)
                res["sources"] = sources[name][1]
                res["gflops_per_trial"] = {m: {str(s): [round(g, 2) for g in r["gflops"]] for s, r in rs.items()}
                                           for m, rs in runs.items()}
                res["retimed_per_trial"] = {m: {str(s): [round(g, 2) for g in r["retimed"]] for s, r in rs.items()}
                                            for m, rs in runs.items()}
                res["configs_per_trial"] = {m: {str(s): r["configs"] for s, r in rs.items()} for m, rs in runs.items()}
                results[name] = res
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"matmul only, {QUICK['seeds']} seeds x {QUICK['trials']} "
                    "trials per mode (about 6 minutes)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    ap.add_argument("--trials", type=int, help=f"budget per campaign (default {FULL['trials']}, --quick "
                    f"{QUICK['trials']})")
    ap.add_argument("--seeds", type=int, help=f"seeds 0..N-1 per mode (default {FULL['seeds']}, --quick "
                    f"{QUICK['seeds']})")
    ap.add_argument("--tasks", help=f"comma-separated, of {', '.join(TASKS)} (default {FULL['tasks']}, --quick "
                    f"{QUICK['tasks']})")
    ap.add_argument("--target", help="target to tune for, e.g. 'llvm -mcpu=haswell' (AVX2 code: the Zen 4's AVX-512 "
                    "records then transfer across vector widths); default this host's CPU; it must run here")
    a = ap.parse_args(argv)
    d = QUICK if a.quick else FULL
    trials = a.trials if a.trials is not None else int(d["trials"])
    nseeds = a.seeds if a.seeds is not None else int(d["seeds"])
    names = (a.tasks or str(d["tasks"])).split(",")
    errors = [f"unknown task(s) {', '.join(n for n in names if n not in TASKS)}; known: {', '.join(TASKS)}"
              ] if any(n not in TASKS for n in names) else []
    if trials <= BATCH:
        errors.append(f"--trials must be more than one batch ({BATCH}), got {trials}")
    if nseeds < 1:
        errors.append(f"--seeds must be >= 1, got {nseeds}")
    try:
        tgt = local_target(a.target)
    except TargetError as e:
        errors.append(str(e))
    if errors:
        print("bench_transfer: error: " + "; ".join(errors), file=sys.stderr)
        return 2
    from devices.fingerprint import cpu_fingerprint

    host = cpu_fingerprint(probe=False)
    target = str(tgt)
    seeds = list(range(nseeds))
    t0 = time.monotonic()
    load = [round(os.getloadavg()[0], 2)]
    results = run(names, seeds, trials, target)
    load.append(round(os.getloadavg()[0], 2))
    for name in names:
        print_task(name, TASKS[name], results[name], seeds, trials)
    mm = results.get("matmul")
    figures: dict[str, Any] = {
        "transfer_over_cold_trials_to_95": mm["transfer_over_cold"] if mm else None,
        "transfer_over_cold_worst": max(r["transfer_over_cold"] for r in results.values()),
        "cold_worst_trials_to_95": mm["cold"]["worst"] if mm else None,
        "host": host["cpu_name"], "cores": host["cores"], "target": target, "tasks": names, "seeds": seeds,
        "trials": trials, "batch": BATCH, "loadavg_1m": load, "seconds": round(time.monotonic() - t0, 1),
        "per_task": {n: {k: v for k, v in r.items() if not k.endswith("_per_trial")} for n, r in results.items()},
    }
    print()
    for k, goal in GOALS.items():
        v = figures[k]
        verdict = "n/a (matmul not run)" if v is None else ("met" if v <= goal else "MISSED")
        print(f"{k} = {v}  (goal <= {goal}: {verdict})")
    if max(load) > 1.5 * host["cores"]:
        print(f"warning: load average up to {max(load):.1f} on {host['cores']} cores: other work shared the cores "
              "with these campaigns (timings noisy, trials-to-95% less so)", file=sys.stderr)
    if a.json:
        # In proposal order, per task, mode and seed: the GFLOPS and the config indices, for a closer look.
        figures["gflops_per_trial"] = {n: r["gflops_per_trial"] for n, r in results.items()}
        figures["configs_per_trial"] = {n: r["configs_per_trial"] for n, r in results.items()}
        figures["retimed_per_trial"] = {n: r["retimed_per_trial"] for n, r in results.items()}
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
