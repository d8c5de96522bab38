#!/usr/bin/env python3
"""Whole-network figures (issue #16): the task scheduler against round-robin, and the network against numpy.

1. Tune: ResNet-18's convolution and dense layers at batch 1 (configs/networks/resnet18.yaml,
   ``ops: [conv2d, dense]``: 11 convolutions and the classifier's matmul, weighted by how often the
   network runs each) on the embedded farm, xgb, one ``trials_total`` budget, twice with the same
   seed: ``scheduler: gradient`` (Ansor's) and ``scheduler: round_robin``. Both warm up with one
   batch of 4 per task, then batches of 8. Each campaign's estimated end-to-end latency (sum of
   count x best latency so far) is recorded after every trial.
2. Re-time: each layer's numpy baseline (conv2d as im2col + matmul, dense as ``@``), timed here, and
   both campaigns' three fastest configs of the layer (``--top``; the fastest again counts: the best of
   many noisy timings is optimistic), re-timed on the same farm, in rounds that alternate the
   three; each side's best round counts (medians of rounds are reported beside it): on a shared
   machine a round another process interrupts is slower by a time slice or more.
   The two campaigns advance in alternating chunks (the warm-up, then four chunks of whole batches;
   each chunk resumes its campaign from its log, which continues the allocation), so the machine's
   load, which drifts, falls on both alike.
3. Figures:
   - ``scheduler_over_roundrobin_latency``: end-to-end latency (sum of count x latency) of the
     scheduler's picks over round-robin's at equal budget, re-timed (median over seeds; goal <= 0.9;
     the campaigns' own estimates are in ``per_seed``);
   - ``scheduler_trials_to_roundrobin_final``: the fraction of the budget after which the scheduler's
     estimate is at or below round-robin's final one (median over seeds; goal <= 0.6; null: never);
   - ``network_speedup_over_numpy``: numpy's per-layer baselines summed with the weights / the
     scheduler's picks, re-timed (median over seeds; goal >= 1.5);
   - ``scheduler_over_roundrobin_latency_by_budget``: the campaigns' own estimates of scheduler over
     round-robin after a quarter, half, three quarters and all of the budget (median over seeds).
     A budget large enough for every task lets round-robin converge too (full run, 800 trials for
     12 tasks: within 1-2% of the scheduler at the end), so the scheduler's lead shows mid-budget.

--quick: 160 trials each way, seed 0, 5 re-timing rounds (about 6 minutes on 2 cores). Full: 800 trials each
way, seeds 0-2, 7 rounds (about an hour). Each campaign times a config as the median of 5 repeats of >= 20 ms.

    python benchmarks/bench_network.py [--quick] [--json] [--trials N] [--seeds N] [--log-dir DIR] [--plot FILE]
"""
from __future__ import annotations

import os

# numpy's BLAS is part of the baseline: drop the settings that make OpenBLAS pick a kernel or cache size
# other than this host's (as bench_kernels.py does).
OPENBLAS_ENV_UNSET = sorted(k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                            if __name__ == "__main__" and os.environ.pop(k, None) is not None)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farm.records.measure import RunOptions  # noqa: E402

KEY = "local"
POLICIES = ("gradient", "round_robin")
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
GOALS = {"scheduler_over_roundrobin_latency": ("<=", 0.9), "scheduler_trials_to_roundrobin_final": ("<=", 0.6),
         "network_speedup_over_numpy": (">=", 1.5)}


def campaign_yaml(policy: str, trials: int, seed: int) -> str:
    # transfer: false keeps a campaign resumed in chunks the same as one run straight through (a fresh
    # log has nothing to transfer at the start; a resumed chunk would otherwise seed models from its own
    # campaign's other shapes).
    return (f"name: bench_network_{policy}_{seed}\ntuner: xgb\ntrials_total: {trials}\nscheduler: {policy}\n"
            f"warmup_trials: 4\nbatch_size: 8\nseed: {seed}\nexclusive_timing: true\nbuild_timeout_s: 120\n"
            "transfer: false\ntiming: {repeat: 5, min_repeat_ms: 20, timeout_s: 20}\n"
            "workloads:\n  - {network: resnet18, batch: 1, ops: [conv2d, dense]}\n")


def chunks(trials: int, tasks: int, warmup: int = 4, batch: int = 8, n: int = 4) -> list[int]:
    """trials_total at the end of each chunk: the warm-up, then ``n`` chunks of whole batches."""
    w = min(trials, tasks * warmup)
    step = max(batch, -(-(trials - w) // (n * batch)) * batch)
    return sorted({min(trials, w + step * i) for i in range(n + 1)} - {0})


@contextlib.contextmanager
def local_ray() -> Any:
    """A local Ray for the builds, as `farm tune` starts one; shut down before anything else is timed."""
    # Token authentication asked for explicitly, as `farm tune` does for a local Ray (read when Ray is imported).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from farm.campaign.builds import init_ray

    init_ray(None, os.cpu_count() or 1)  # builds and timing take turns: builds may use every core
    try:
        yield
    finally:
        ray.shutdown()  # its idle workers would share the cores with what is timed next


def tune(spec: Any, session: Any) -> Any:
    """One campaign (or the next chunk of one: it resumes from its log) on the farm ``session`` talks to."""
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.progress import Progress

    before = os.getloadavg()[0]
    result = CampaignRunner(spec, session, Progress(every_s=30.0), exclusive_timing=True).run()
    result.loadavg = [round(before, 2), round(os.getloadavg()[0], 2)]  # the machine's load around it
    return result


def curve(spec: Any) -> list[list[float]]:
    """[trials, estimated end-to-end latency] after each trial of a campaign, from its log (in log order,
    across the chunks it ran in): what `farm plot --network` draws."""
    from farm.export.plot import network_curve
    from farm.log import load_log

    weights = {(w.name, w.shape): w.weight for w in spec.workloads}
    c = network_curve(load_log(spec.log).records, weights, device=KEY)
    return [[n, s] for n, s in zip(c.trials, c.latency_s)]


def trials_to_reach(curve: list[list[float]], level: float) -> int | None:
    """The first trial count at which the estimated latency is at or below ``level``."""
    return next((int(n) for n, s in curve if s <= level * (1 + 1e-9)), None)


def latency_at(curve: list[list[float]], trials: int) -> float | None:
    """The estimated end-to-end latency after ``trials`` (None before every task has one)."""
    return next((s for n, s in reversed(curve) if n <= trials), None)


def ratio_by_budget(sched: list[list[float]], rr: list[list[float]], trials: int,
                    fractions: tuple[float, ...] = BUDGET_FRACTIONS) -> dict[str, float | None]:
    """Scheduler over round-robin, each as its campaign estimated it, after each fraction of the budget:
    where the scheduler's lead is (mid-budget, while round-robin still spreads trials over tasks that
    have converged) and where both have converged (the end of a budget large enough for every task)."""
    out: dict[str, float | None] = {}
    for f in fractions:
        a, b = latency_at(sched, int(f * trials)), latency_at(rr, int(f * trials))
        out[f"{f:g}"] = round(a / b, 4) if a and b else None
    return out


def best_artifacts(session: Any, spec: Any, top: int) -> dict[tuple[str, tuple[int, ...]], list[Any]]:
    """Each layer's ``top`` best configs of a campaign (by its own timings), built for the farm's device.
    The best of many noisy measurements is optimistic (a config timed once in a lucky moment wins), so
    re-timing a few of the fastest and keeping the fastest again treats both campaigns alike."""
    from farm.log import load_log
    from farm.workloads.registry import build_workload

    target = session.target(KEY)
    records = load_log(spec.log).records
    out = {}
    for ly in spec.networks[0].layers:
        mine = sorted((r for r in records if r.workload == ly.workload and tuple(r.args) == tuple(ly.args) and r.ok),
                      key=lambda r: r.median_s)
        picked: dict[int, Any] = {}
        for r in mine:
            picked.setdefault(r.config_index, r)
            if len(picked) == top:
                break
        out[(ly.workload, ly.args)] = [build_workload(ly.workload, ly.args, r.config, target).artifact
                                       for r in picked.values()]
    return out


def retime(session: Any, layers: Any, contenders: dict[str, dict[Any, Any]], rounds: int,
           options: RunOptions) -> dict[str, dict[Any, list[float]]]:
    """Seconds per call of each layer's numpy baseline and of each contender's kernel for it, on the farm's
    device, per round: ``rounds`` rounds that alternate them (rotating the order, so load drift hits all alike)."""
    from farm.campaign.baselines import baseline, median_s

    times: dict[str, dict[Any, list[float]]] = {name: {} for name in ["numpy", *contenders]}
    for n in range(rounds):
        for ly in layers:
            k = (ly.workload, ly.args)
            order = ["numpy", *contenders]
            order = order[n % len(order):] + order[:n % len(order)]
            for name in order:
                if name == "numpy":
                    fn, arrays = baseline(ly)
                    t = median_s(fn, arrays, options.repeat, options.min_repeat_ms / 1e3)
                    time.sleep(0.2)  # OpenBLAS's threads spin a while after a call: let them park first
                else:  # the fastest of the contender's configs for the layer, this round
                    ts = []
                    for art in contenders[name][k]:
                        res = session.submit(art, key=KEY, options=options).result(4 * options.timeout_s + 60)
                        if not (res.ok and res.checked):
                            raise RuntimeError(f"re-timing {name} {ly.workload}{ly.args}: {res.outcome.value} "
                                               f"{res.message[:200]}")
                        ts.append(res.median_s)
                    t = min(ts)
                times[name].setdefault(k, []).append(t)
    return times


def best_of(times: dict[str, dict[Any, list[float]]], stat: Any = min) -> dict[str, dict[Any, float]]:
    """Per contender and layer, one figure of its rounds: the best round by default. On a shared machine a
    round that another process interrupts is slower by a time slice or more (OpenBLAS's threads wait for
    each other), so the best round is each side's own speed; the medians are reported beside it."""
    return {name: {k: stat(v) for k, v in per.items()} for name, per in times.items()}


def weighted(layers: Any, times: dict[Any, float]) -> float:
    return sum(ly.count * times[(ly.workload, ly.args)] for ly in layers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="160 trials each way, one seed (default 800, 3 seeds)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    ap.add_argument("--trials", type=int, help="trials_total of each campaign")
    ap.add_argument("--seeds", type=int, help="seeds 0..N-1, each tuned both ways")
    ap.add_argument("--log-dir", help="keep the campaigns' logs here (default: a temporary directory)")
    ap.add_argument("--top", type=int, default=3, help="re-time each campaign's N fastest configs of a layer and "
                    "keep the fastest (default 3)")
    ap.add_argument("--plot", help="draw both estimated end-to-end curves of the first seed into this image")
    args = ap.parse_args(argv)
    trials = args.trials or (160 if args.quick else 800)
    seeds = args.seeds or (1 if args.quick else 3)
    rounds = 5 if args.quick else 7
    tmp = None if args.log_dir else Path(tempfile.mkdtemp(prefix="kf-bench-network-"))
    logs = Path(args.log_dir) if args.log_dir else Path(tmp or ".")
    logs.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, trials, seeds, rounds, logs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, trials: int, seeds: int, rounds: int, logs: Path) -> int:
    from devices.fingerprint import cpu_fingerprint
    from farm.campaign.config import parse_campaign
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    t_start = time.monotonic()
    host = cpu_fingerprint(probe=False)
    fig: dict[str, Any] = {"host": host["cpu_name"], "cores": host["cores"],
                           "network": "resnet18 conv2d + dense, batch 1", "trials_each_way": trials,
                           "seeds": seeds, "warmup_trials": 4, "batch_size": 8,
                           "openblas_env_unset": OPENBLAS_ENV_UNSET}
    runs: dict[tuple[str, int], Any] = {}
    specs: dict[tuple[str, int], Any] = {}
    problems: list[str] = []
    walls: dict[tuple[str, int], float] = {}
    loads: dict[tuple[str, int], list[float]] = {}
    with EmbeddedFarm() as farm, connect(farm.address, token=farm.token) as session:
        for seed in range(seeds):
            with local_ray():
                # The two campaigns advance in alternating chunks (each resumes from its own log), so
                # the machine's load, which drifts, falls on both alike.
                bounds = chunks(trials, 12)
                for c, bound in enumerate(bounds):
                    for policy in (POLICIES if (seed + c) % 2 == 0 else POLICIES[::-1]):
                        spec = parse_campaign(campaign_yaml(policy, bound, seed),
                                              ROOT / "benchmarks" / "bench_network.yaml")
                        spec = spec.with_overrides(log=str(logs / f"{policy}_seed{seed}.jsonl"))
                        print(f"bench_network: seed {seed}, {policy}: up to {bound} of {trials} trials over "
                              f"{len(spec.workloads)} tasks", file=sys.stderr, flush=True)
                        specs[(policy, seed)] = spec
                        runs[(policy, seed)] = res = tune(spec, session)
                        walls[(policy, seed)] = walls.get((policy, seed), 0.0) + res.wall_s
                        loads.setdefault((policy, seed), []).extend(res.loadavg)
            problems += [f"{p} seed {seed}: {t.task}: {t.error or 'no correct config'}"
                         for p in POLICIES for t in runs[(p, seed)].tasks if not t.ok]
        # Re-time each policy's picks and numpy in alternating rounds: the campaigns ran one after the
        # other, and a machine whose load drifts in between would otherwise decide the comparison.
        options = RunOptions(repeat=5, min_repeat_ms=50, timeout_s=30)
        loadavg = os.getloadavg()[0]
        layers = specs[("gradient", 0)].networks[0].layers
        rounds_s = [retime(session, layers, {p: best_artifacts(session, specs[(p, seed)], args.top)
                                             for p in POLICIES}, rounds, options) for seed in range(seeds)]
        retimed = [best_of(r) for r in rounds_s]
        medians = [best_of(r, statistics.median) for r in rounds_s]
        fig["loadavg_1m_retime"] = [round(loadavg, 2), round(os.getloadavg()[0], 2)]

    per_seed = []
    for seed in range(seeds):
        a, b = (runs[(p, seed)].allocation[KEY] for p in POLICIES)
        sched, rr = (curve(specs[(p, seed)]) for p in POLICIES)
        s_final, r_final = sched[-1][1], rr[-1][1]
        n = trials_to_reach(sched, r_final)
        ours, theirs = (weighted(layers, retimed[seed][p]) for p in POLICIES)
        med = {p: weighted(layers, medians[seed][p]) for p in ("numpy", *POLICIES)}
        per_seed.append({
            "seed": seed, "scheduler_ms": round(ours * 1e3, 3), "roundrobin_ms": round(theirs * 1e3, 3),
            "ratio": round(ours / theirs, 4), "numpy_ms": round(weighted(layers, retimed[seed]["numpy"]) * 1e3, 3),
            "median_rounds_ms": {p: round(v * 1e3, 3) for p, v in med.items()},
            "median_rounds_ratio": round(med["gradient"] / med["round_robin"], 4),
            "median_rounds_speedup_over_numpy": round(med["numpy"] / med["gradient"], 3),
            "campaign_scheduler_ms": round(s_final * 1e3, 3), "campaign_roundrobin_ms": round(r_final * 1e3, 3),
            "campaign_ratio": round(s_final / r_final, 4), "scheduler_trials_to_roundrobin_final": n,
            "campaign_ratio_by_budget": ratio_by_budget(sched, rr, trials),
            "spent": [a["spent"], b["spent"]], "loadavg_1m": [loads[(p, seed)] for p in POLICIES],
            "wall_s": [round(walls[(p, seed)], 1) for p in POLICIES],
            "scheduler_trials_per_task": _trials(runs[("gradient", seed)]),
            "roundrobin_trials_per_task": _trials(runs[("round_robin", seed)]),
        })
    fig["per_seed"] = per_seed
    fig["scheduler_over_roundrobin_latency"] = round(statistics.median(s["ratio"] for s in per_seed), 4)
    # The same ratio from the campaigns' own timings (each task's best measurement while tuning).
    fig["scheduler_over_roundrobin_latency_campaign"] = round(statistics.median(s["campaign_ratio"]
                                                                                for s in per_seed), 4)
    fig["scheduler_over_roundrobin_latency_by_budget"] = {
        f"{f:g}": _median([s["campaign_ratio_by_budget"][f"{f:g}"] for s in per_seed]) for f in BUDGET_FRACTIONS}
    reach = [s["scheduler_trials_to_roundrobin_final"] for s in per_seed]
    fig["scheduler_trials_to_roundrobin_final"] = (
        round(statistics.median(reach) / trials, 4) if all(r is not None for r in reach) else None)
    ours_s = statistics.median(weighted(layers, r["gradient"]) for r in retimed)
    numpy_s = statistics.median(weighted(layers, r["numpy"]) for r in retimed)
    fig["network_ours_ms"] = round(ours_s * 1e3, 3)
    fig["network_numpy_ms"] = round(numpy_s * 1e3, 3)
    fig["network_speedup_over_numpy"] = round(numpy_s / ours_s, 3) if ours_s > 0 else None
    fig["layers"] = {f"{ly.workload}({','.join(map(str, ly.args))})": {
        "count": ly.count, **{f"{p}_ms": round(retimed[0][p][(ly.workload, ly.args)] * 1e3, 4)
                              for p in ("numpy", *POLICIES)},
        "rounds_ms": {p: [round(x * 1e3, 3) for x in rounds_s[0][p][(ly.workload, ly.args)]]
                      for p in ("numpy", *POLICIES)}} for ly in layers}
    fig["numpy_rounds"] = rounds
    fig["goals_missed"] = [k for k, (op, g) in GOALS.items()
                           if fig[k] is None or (fig[k] > g if op == "<=" else fig[k] < g)]
    if args.plot:
        _plot(args.plot, specs, trials, numpy_s)
    fig["wall_s"] = round(time.monotonic() - t_start, 1)
    print_table(fig)
    for p in problems:
        print(f"bench_network: FAILED: {p}", file=sys.stderr)
    if args.json:
        print(json.dumps(fig))
    return 1 if problems else 0


def _median(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return round(statistics.median(known), 4) if known else None


def _trials(result: Any) -> dict[str, int]:
    return {f"{t.workload}({','.join(map(str, t.shape))})": t.trials for t in result.tasks}


def _plot(path: str, specs: dict[tuple[str, int], Any], trials: int, numpy_s: float) -> None:
    from farm.export.plot import NetworkCurve, plot_network

    curves = [NetworkCurve(f"{p.replace('_', '-')} (seed 0)", [int(n) for n, _ in c], [v for _, v in c])
              for p in POLICIES for c in [curve(specs[(p, 0)])]]
    plot_network(curves, path, title=f"ResNet-18 conv + dense, batch 1: {trials} trials each way",
                 numpy_s=numpy_s)


def print_table(fig: dict[str, Any]) -> None:
    print(f"{'seed':>4} {'scheduler ms':>13} {'round-robin ms':>15} {'ratio':>7} {'numpy ms':>9} "
          f"{'trials to match':>16}   (sum of count x latency of each policy's best configs, re-timed "
          "alternately; the campaigns' own estimates are in the JSON)")
    for s in fig["per_seed"]:
        reach = s["scheduler_trials_to_roundrobin_final"]
        print(f"{s['seed']:>4} {s['scheduler_ms']:13.3f} {s['roundrobin_ms']:15.3f} {s['ratio']:7.3f} "
              f"{s['numpy_ms']:9.3f} {reach if reach is not None else 'never':>16}")
    print(f"{'layer (seed 0)':<34} {'count':>5} {'scheduler':>10} {'round-robin':>12} {'numpy':>9}  "
          f"(ms, best of {fig['numpy_rounds']} rounds; every round in the JSON)")
    for name, r in fig["layers"].items():
        print(f"{name:<34} {r['count']:>5} {r['gradient_ms']:10.3f} {r['round_robin_ms']:12.3f} {r['numpy_ms']:9.3f}")
    by = fig["scheduler_over_roundrobin_latency_by_budget"]
    print("scheduler / round-robin after each share of the budget, as the campaigns estimated it (median): "
          + ", ".join(f"{k}: {v if v is not None else 'n/a'}" for k, v in by.items()))
    print(f"network: ours {fig['network_ours_ms']:.3f} ms, numpy {fig['network_numpy_ms']:.3f} ms "
          f"(load average while re-timing: {fig['loadavg_1m_retime']})")
    for k, (op, g) in GOALS.items():
        v = fig[k]
        print(f"{k}: {v if v is not None else 'n/a'} (goal {op} {g}) {'MISSED' if k in fig['goals_missed'] else 'met'}")


if __name__ == "__main__":
    sys.exit(main())
