"""What the farm survives, measured with real processes on loopback (issue 8).

    python benchmarks/bench_reliability.py --quick --json

Five parts, run one after another (never two heavy runs at once on a small machine):

1. chaos: a real campaign (`farm tune --tracker`, Ray builds, CPU device servers) while
   device servers are SIGKILLed (some restarted), the tracker is killed and restarted,
   a device's connection is cut mid-upload, one device is slow, and candidates segfault,
   hang or write out of bounds. Counts trials planned / logged / lost / duplicated.
2. fuzz: hostile inputs at a real tracker and a real device server, with an end-to-end
   probe every 100 inputs; counts frames fuzzed, crashes and hangs.
3. load: one tracker, 64 device-server processes (a 1 ms kernel), 4 concurrent clients;
   jobs/s, p50/p99 job latency, tracker CPU seconds and RSS.
4. wire: every field of every op of the wire table (rpc.fields) with hostile values (NaN,
   +-inf, 1e308, negatives, wrong types, huge strings), at the table, at a real tracker and
   at a real device server; each must be a BadRequest naming the field, and after each op a
   control job's queue deadline must still fire (``deadline_poisoned`` counts ops after which
   it did not).
5. restart: a re-dialling session (``farm.connect``) keeps measurements in flight while the
   tracker is SIGKILLed and restarted; ``measure_lost_on_restart`` counts those that never
   came back measured, or came back to the wrong job.
6. http: the load run again (a tracker with ``--http``, 64 device servers, 4 campaigns that
   also send a campaign_report every second) in alternating rounds without and with 10 HTTP
   pollers doing what the live page does each second; ``http_p99_ms`` is the pollers' API
   latency, ``dispatch_p99_ratio_with_pollers`` the median over ABBA pairs of the campaigns'
   p99 job latency with pollers over without (tests/web/load_http.py).

The last line with --json is one JSON object (keys: faults_injected, trials_planned,
trials_logged, lost, duplicated, crashes, hangs, frames_fuzzed, load_*, tracker_*,
wire_fields_fuzzed, deadline_poisoned, measure_lost_on_restart, restart_*, http_p99_ms,
dispatch_p99_ratio_with_pollers, http_*).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def chaos(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.support.chaos_campaign import run_chaos

    r = run_chaos(workdir, trials=20 if quick else 32, seed=3)
    return {
        "faults_injected": r.faults_injected, "fault_events": dict(r.events), "trials_planned": r.trials_planned,
        "trials_logged": r.trials_logged, "lost": r.lost, "duplicated": r.duplicated,
        "chaos_outcomes": dict(r.outcomes), "chaos_wall_s": round(r.wall_s, 1),
        "chaos_reconnects": r.summary.get("reconnects"), "chaos_resubmitted": r.summary.get("resubmitted"),
        "chaos_crashes": int(r.returncode not in (0, None) or bool(r.leaked)), "chaos_hangs": int(r.hung),
        "chaos_leaked": len(r.leaked),
    }


def fuzz(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.support.fuzz_run import run_fuzz

    r = run_fuzz(workdir, tracker_inputs=8000 if quick else 20000, device_inputs=2000 if quick else 5000)
    growth = {name: round(max(st.rss_mb) - min(st.rss_mb[:3]), 1) if st.rss_mb else None
              for name, st in (("tracker", r.tracker), ("device", r.device))}
    return {
        "frames_fuzzed": r.inputs, "fuzz_probes": r.tracker.probes + r.device.probes,
        "fuzz_probe_failures": len(r.tracker.probe_failures) + len(r.device.probe_failures),
        "fuzz_crashes": r.crashes, "fuzz_hangs": r.hangs, "fuzz_rss_growth_mb": growth,
        "fuzz_wall_s": round(r.wall_s, 1), "fuzz_leaked": len(r.leaked),
    }


def load(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.support.load import run_load

    r = run_load(workdir, devices=64, clients=4, duration_s=15.0 if quick else 30.0)
    return {
        "load_devices": r.devices, "load_clients": r.clients, "load_jobs": r.jobs, "load_failed": r.failed,
        "load_jobs_per_s": round(r.jobs_per_s, 1), "load_p50_ms": round(r.p50_ms, 2),
        "load_p99_ms": round(r.p99_ms, 2), "tracker_cpu_s": round(r.tracker_cpu_s, 2),
        "tracker_cpu_share": round(r.tracker_cpu_s / r.duration_s, 3) if r.duration_s else None,
        "tracker_rss_mb": round(r.tracker_rss_mb, 1), "load_startup_s": round(r.startup_s, 1),
        "load_crashes": int(not r.tracker_alive), "load_leaked": len(r.leaked),
    }


def wire(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.support.fuzz_fields import run_wire_fuzz

    r = run_wire_fuzz(workdir)
    return {
        "wire_fields_fuzzed": r.sent, "wire_rules_checked": r.rules_checked,
        "wire_wrong_answers": len(r.wrong_answers), "wire_ops": r.tracker.ops + r.device.ops,
        "deadline_poisoned": r.tracker.deadline_poisoned,
        "wire_deadline_max_s": round(max(r.tracker.deadline_s, default=0.0), 2),
        "wire_crashes": int(not (r.tracker_alive and r.device_alive) or bool(r.leaked)),
        "wire_hangs": int(not r.probe_ok), "wire_wall_s": round(r.wall_s, 1),
    }


def restart(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.rpc.restart import run_restarts

    r = run_restarts(workdir, jobs=8 if quick else 24, restarts=2 if quick else 4)
    return {
        "measure_lost_on_restart": r.lost + r.wrong, "restart_jobs": r.jobs, "restart_restarts": 2 if quick else 4,
        "restart_reconnects": r.reconnects, "restart_resubmitted": r.resubmitted,
        "restart_wall_s": round(r.wall_s, 1), "restart_crashes": int(bool(r.leaked)),
    }


def http(workdir: Path, quick: bool) -> dict[str, Any]:
    from tests.web.load_http import run_http_load

    r = run_http_load(workdir, devices=64, campaigns=4, pollers=10, pairs=6 if quick else 10,
                      round_s=5.0 if quick else 8.0)
    return {
        "http_p99_ms": round(r.http_p99_ms, 2), "http_p50_ms": round(r.http_p50_ms, 2),
        "http_requests": r.http_requests, "http_errors": r.http_errors, "http_over_50ms": r.http_over_50ms,
        "dispatch_p99_ratio_with_pollers": round(r.ratio, 3), "http_pair_ratios": [round(x, 3) for x in r.ratios],
        "http_rounds": [{k: round(v, 2) if isinstance(v, float) else v for k, v in rd.items()} for rd in r.rounds],
        "http_startup_s": round(r.startup_s, 1), "http_crashes": int(not r.tracker_alive or bool(r.leaked)),
    }


# Parts in the order they run. Another part (e.g. "cli" -> cli_tracebacks, the CLI's error paths)
# joins by adding its function here and its crash/hang counts to CRASH_KEYS / HANG_KEYS.
PARTS = {"chaos": chaos, "fuzz": fuzz, "load": load, "wire": wire, "restart": restart, "http": http}
CRASH_KEYS = ("chaos_crashes", "fuzz_crashes", "load_crashes", "wire_crashes", "restart_crashes", "http_crashes")
HANG_KEYS = ("chaos_hangs", "fuzz_hangs", "wire_hangs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller budgets (a few minutes in all)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object on its own line")
    ap.add_argument("--only", choices=list(PARTS), action="append", help="run only these parts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # fuzzed peers hang up mid-write by design
    parts = args.only or list(PARTS)
    out: dict[str, Any] = {"quick": args.quick}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kf-reliability-") as tmp:
        for name, fn in PARTS.items():
            if name in parts:
                t = time.monotonic()
                res = fn(Path(tmp) / name, args.quick)
                out.update(res)
                print(
                    f"{name}: {time.monotonic() - t:.0f}s " + ", ".join(f"{k}={v}" for k, v in res.items()), flush=True
                )
    out["crashes"] = sum(int(out.get(k, 0)) for k in CRASH_KEYS)
    out["hangs"] = sum(int(out.get(k, 0)) for k in HANG_KEYS)
    out.setdefault("faults_injected", 0)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    for k in ("trials_planned", "trials_logged", "lost", "duplicated", "frames_fuzzed", "wire_fields_fuzzed",
              "deadline_poisoned", "measure_lost_on_restart"):
        out.setdefault(k, 0)
    must_be_zero = ("lost", "duplicated", "crashes", "hangs", "deadline_poisoned", "measure_lost_on_restart")
    print(" ".join(f"{k}={out[k]}" for k in must_be_zero) + " (must all be 0)", flush=True)
    if args.json:
        print(json.dumps(out))
    ok = all(out[k] == 0 for k in must_be_zero) and out.get("wire_wrong_answers", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
