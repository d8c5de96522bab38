"""The shared log under kill -9 and concurrent readers.

A writer process appends batches (each batch written in pieces, as on a slow
disk, so kills land mid-batch) and is SIGKILLed at random moments, again and again; each
restart resumes from what the log holds, as a campaign does. At most the batch
in flight is lost, it is written again on resume, and in the end every record
is there exactly once. Meanwhile readers load the log in a loop: a record they
accept is always whole and correct; only a torn last line is ever skipped.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.log import load_log

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]

WRITER = r"""
import hashlib, sys
from farm.log import LogRecord, LogWriter, load_log
from farm.records.measure import Outcome

path, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def rec(i):
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    return LogRecord(workload="durable", args=(i % 7, 3), target="llvm", device_key="d", config_index=i,
                     knobs={"k": i, "pad": digest * 6}, outcome=Outcome.OK, costs=(1e-3,), gflops=float(i),
                     message=digest)

done = {r.config_index for r in load_log(path).records}   # resume: never measure twice
todo = [i for i in range(total) if i not in done]
import time

class SlowFile:
    # the log file, writing a batch in pieces (a slow disk): a kill lands mid-batch
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        for k in range(0, len(data), 4096):
            self.fh.write(data[k:k + 4096])
            self.fh.flush()
            time.sleep(0.001)
        return len(data)
    def __getattr__(self, name):
        return getattr(self.fh, name)

with LogWriter(path) as w:
    w._fh = SlowFile(w._fh)
    for k in range(0, len(todo), batch):
        n = w.append(rec(i) for i in todo[k:k + batch])
        print(todo[k + n - 1], flush=True)   # acknowledged: durable from here on
        time.sleep(0.002)                    # the next batch is being measured
"""


def expected_message(i: int) -> str:
    import hashlib

    return hashlib.sha256(str(i).encode()).hexdigest()


def _start(path: Path, total: int, batch: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(total), str(batch)], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_kill9_writer_mid_batch_loses_at_most_the_batch(tmp_path: Path) -> None:
    path, total, batch = tmp_path / "log.jsonl", 3000, 40
    rng = random.Random(5)
    kills = torn = 0
    acked: set[int] = set()
    while True:
        p = _start(path, total, batch)
        assert p.stdout is not None
        first = p.stdout.readline()  # it is writing now
        time.sleep(rng.uniform(0.0, 0.15))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        out, _ = p.communicate(timeout=30)
        acked |= {int(x) for x in (first + out).split()}
        loaded = load_log(path)
        have = {r.config_index for r in loaded.records}
        # every acknowledged batch survived the kill
        assert {i for i in acked} <= have
        torn = len(loaded.skipped)
        if p.returncode == 0:
            break
        assert kills < 60, "the writer never finished"
    loaded = load_log(path)
    idx = [r.config_index for r in loaded.records]
    assert sorted(idx) == list(range(total)), "every record exactly once after the resumes"
    assert all(r.message == expected_message(r.config_index) for r in loaded.records)
    assert kills >= 3
    # a torn fragment is a skipped line, never a record; each kill leaves at most one
    assert 1 <= torn <= kills
    print(f"{kills} kills, {torn} torn lines skipped")


def test_readers_racing_a_writer_never_accept_a_partial_record(tmp_path: Path) -> None:
    path, total = tmp_path / "race.jsonl", 4000
    p = _start(path, total, 7)
    reads = partial = 0
    try:
        while p.poll() is None or reads == 0:
            loaded = load_log(path)
            reads += 1
            idx = [r.config_index for r in loaded.records]
            assert idx == list(range(len(idx))), "records in order, none missing before the end"
            for r in loaded.records:
                assert r.message == expected_message(r.config_index) and r.knobs["k"] == r.config_index
            for s in loaded.skipped:  # only the line being written right now
                partial += 1
                assert "torn last line" in s.reason, s
                assert s.lineno == len(idx) + 1, s
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)
    assert p.returncode == 0
    assert len(load_log(path).records) == total
    assert reads >= 5, reads
