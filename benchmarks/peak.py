"""The cores' peak float32 FLOP/s, measured: independent FMA chains in vector registers.

Theory is lanes x 2 (FMA) x FMAs issued per cycle x clock x cores; the measured
figure is what the same cores reach on a loop with no memory traffic, run on
every core at once (ctypes releases the GIL), so it includes the real clock.

The loop is sized from the host's target (``Target.simd``), not from one ISA:
enough chains to cover FMA latency x pipes, never more than the vector registers
hold beside the loop's operands (``devices.fingerprint.fma_chains``). 16 chains
of 8-lane FMAs fit AVX-512's 32 registers but spill on AVX2's 16, and a spilling
loop measures a "peak" below what numpy reaches. Every vector width up to the
widest is timed and the best one counts (some cores issue narrower FMAs faster,
or at a higher clock).

    python benchmarks/peak.py [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.fingerprint import FmaLoop, fma_chains  # noqa: E402
from farm.target import Simd, Target  # noqa: E402


def chains_for(simd: Simd) -> int:
    """The peak loop's chain count for a vector unit."""
    return fma_chains(simd.registers, simd.fmas_in_flight)


def _all_cores(loop: FmaLoop, steps: int, n: int) -> float:
    """Wall time of ``n`` threads each running ``steps`` of the loop (ctypes releases the GIL)."""
    ths = [threading.Thread(target=loop.fn, args=(steps,)) for _ in range(n)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.perf_counter() - t0


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def measured_peak_gflops(threads: int | None = None, seconds: float = 0.5, tries: int = 3) -> dict[str, Any]:
    """Best of ``tries`` runs of about ``seconds`` each, per vector width, one core and all cores."""
    simd = Target.host().simd()
    chains = chains_for(simd)
    n = threads or host_cores()
    best: dict[str, Any] = {}
    by_lanes: dict[int, float] = {}
    for lanes in sorted({x for x in (simd.lanes_f32 // 2, simd.lanes_f32) if x >= 4} or {simd.lanes_f32}):
        loop = FmaLoop(lanes, chains)
        rate = loop.best_rate(seconds, tries)  # steps per second on one core
        steps = max(1, int(rate * seconds))
        wall = min(_all_cores(loop, steps, n) for _ in range(tries))
        fig = {"lanes": lanes, "peak_1core_gflops": rate * loop.flops_per_step / 1e9,
               "peak_gflops": n * steps * loop.flops_per_step / wall / 1e9}
        by_lanes[lanes] = fig["peak_gflops"]
        if fig["peak_gflops"] > best.get("peak_gflops", 0.0):
            best = fig
    return {**best, "by_lanes": by_lanes, "cores": n, "chains": chains, "vector_registers": simd.registers,
            "fma_latency": simd.fma_latency, "fma_pipes": simd.fma_pipes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    args = ap.parse_args(argv)
    pk = measured_peak_gflops(seconds=args.seconds)
    if args.json:
        print(json.dumps(pk))
    else:
        print(f"peak {pk['peak_gflops']:.1f} GFLOPS on {pk['cores']} cores ({pk['peak_1core_gflops']:.1f} on one): "
              f"{pk['chains']} independent {pk['lanes']}-lane FMA chains per core, {pk['vector_registers']} vector "
              f"registers, nominal FMA latency {pk['fma_latency']} x {pk['fma_pipes']} pipes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
