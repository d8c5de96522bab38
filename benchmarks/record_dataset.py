"""Record a replay dataset: real measurements of a random sample of a config space.

    python benchmarks/record_dataset.py matmul 512,512,512 -n 2000 --threads 2 \
        -o .cache/datasets/matmul_512x512x512_2t.jsonl \
        --gzip benchmarks/data/matmul_512x512x512_2t.jsonl.gz

Every sampled config is built with the real compiler and timed with the real
CpuBackend in this process; each result (failures included) is appended to
``OUT`` as a shared-log record, in batches. Re-running the same command resumes:
configs already in ``OUT`` are not measured again. ``--gzip GZ`` writes the
compressed copy at the end (the committed form, read by ``farm.replay``); keep
the raw ``OUT`` outside the tracked tree (``.cache/`` is ignored).

Timing: repeat=3, min_repeat_ms=5 and one thread by default. The development
host has two cores shared with other work; single-thread timings are the ones
that stay comparable across the hours a recording takes.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devices.cpu import CpuBackend
from devices.fingerprint import cpu_fingerprint
from farm.compiler.builder import build
from farm.errors import FarmError
from farm.log import LogRecord, LogWriter, load_log, measured_indices
from farm.records.measure import MeasureResult, Outcome, RunOptions
from farm.target import Target
from farm.workloads.registry import get_workload, parse_shape

log = logging.getLogger("record_dataset")


def sample_order(n_space: int, n: int, seed: int) -> list[int]:
    """A fixed pseudo-random sample of the space (the same for a resumed run)."""
    rng = random.Random(seed)
    return rng.sample(range(n_space), min(n, n_space))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("shape")
    ap.add_argument("-n", type=int, default=3000, help="configs to sample")
    ap.add_argument("-o", "--out", required=True, help="JSON-lines log to append to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="llvm -mcpu=native")
    ap.add_argument("--device-key", default="cpu-dev")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--min-repeat-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--gzip", metavar="GZ", help="write a gzip'ed copy of OUT here when done")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    wl = get_workload(a.workload)
    args = wl.check_args(parse_shape(a.shape))
    tgt = Target.parse(a.target)
    space = wl.space(args, tgt)
    opts = RunOptions(repeat=a.repeat, min_repeat_ms=a.min_repeat_ms, num_threads=a.threads)
    fp = cpu_fingerprint()
    backend = CpuBackend(a.device_key)
    done = measured_indices(load_log(a.out).records, wl.name, a.device_key, args)
    todo = [i for i in sample_order(len(space), a.n, a.seed) if i not in done]
    log.info("%s %s: space %d, %d already recorded, %d to measure", wl.name, args, len(space), len(done), len(todo))
    t_start = time.time()
    with LogWriter(a.out) as w:
        batch: list[LogRecord] = []
        for n, idx in enumerate(todo, 1):
            cfg = space.get(idx)
            t0 = time.perf_counter()
            build_s = 0.0
            try:
                sch, tensors = wl.instantiate(args, cfg, tgt)
                mod = build(sch, tensors, tgt, name=wl.name, workload=wl.key(args), flops=wl.flops(args))
                build_s = time.perf_counter() - t0
                res = backend.run_job(mod.artifact, opts)
            except FarmError as e:  # a config the compiler rejects is a result, not a crash
                res = MeasureResult.error(Outcome.COMPILE_ERROR, f"{type(e).__name__}: {e}",
                                          flops=wl.flops(args), device_key=a.device_key)
            batch.append(LogRecord.from_measurement(
                workload=wl.name, args=args, target=str(tgt), config=cfg, result=res, options=opts,
                device_key=a.device_key, fingerprint=fp, build_s=build_s, campaign="replay-dataset"))
            if len(batch) >= a.batch or n == len(todo):
                w.append(batch)
                batch = []
                rate = n / max(time.time() - t_start, 1e-9)
                log.info("%d/%d measured (%.1f/s, ~%.0f s left)", n, len(todo), rate, (len(todo) - n) / rate)
    if a.gzip:
        gz = Path(a.gzip)
        with open(a.out, "rb") as src, gzip.open(gz, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        log.info("wrote %s (%d bytes)", gz, gz.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
