"""trials_total campaigns on a real farm: the scheduler's allocation, resume, starving, budgets per key.

Each test runs real campaigns (embedded tracker and local device servers, local Ray builds, random
search on small matmuls so trials are cheap) and judges the allocation the scheduler made. The pass
threshold of each is stated where it is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.campaign.test_tune import farm, records

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Two matmuls of nearly the same cost; `heavy` is how often the network runs the first.
TWO = "network: two\nlayers:\n  - {{op: dense, shape: [128, 128, 128], count: {heavy}}}\n" \
      "  - {{op: dense, shape: [128, 128, 120], count: 1}}\n"


def spec_text(log: Path, net: Path, total: int, extra: str = "", keys: str = "[local]") -> str:
    return (f"name: {log.stem}\nlog: {log}\ndevice_keys: {keys}\ntuner: random\ntrials_total: {total}\n"
            f"batch_size: 8\nwarmup_trials: 4\nseed: 0\ntransfer: false\n{extra}"
            "timing: {repeat: 2, min_repeat_ms: 5, timeout_s: 20}\n"
            f"workloads:\n  - {{network: {net}}}\n")


def run(text: str, where: Path, second_key: str | None = None) -> Any:
    """One campaign in this process on a real embedded farm (plus a device server of ``second_key``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from farm.campaign.builds import init_ray
    from farm.campaign.config import parse_campaign
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    spec = parse_campaign(text, where / "campaign.yaml")
    init_ray(None, os.cpu_count() or 1)
    extra: subprocess.Popen[bytes] | None = None
    try:
        with EmbeddedFarm(key=spec.device_keys[0]) as f, connect(f.address, token=f.token) as session:
            if second_key:
                extra = subprocess.Popen(
                    [sys.executable, "-m", "rpc.cli", "serve", "--tracker", f.address, "--key", second_key,
                     "--name", f"{second_key}-0"], env=dict(os.environ, FARM_TOKEN=f.token.decode()),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 60
                while not session.client.describe(second_key):
                    assert time.monotonic() < deadline, "the second device server did not register"
                    time.sleep(0.1)
            return CampaignRunner(spec, session, exclusive_timing=True).run()
    finally:
        if extra is not None:
            extra.terminate()
            extra.wait(10)
        ray.shutdown()


def after_warmup(result: Any, key: str = "local") -> Counter[str]:
    """Trials granted per task by the batches after the warm-up."""
    out: Counter[str] = Counter()
    for task, n, why in result.allocation[key]["grants"]:
        if why != "warm-up":
            out[task] += n
    return out


HEAVY, LIGHT = "matmul(128,128,128)@local", "matmul(128,128,120)@local"


@pytest.mark.parametrize("heavy", [10, 1])
def test_allocation_follows_the_gradient(tmp_path: Path, heavy: int) -> None:
    """One task runs ten times as often: after the warm-up it gets the budget. The control, equal
    weights, splits it."""
    net = tmp_path / "two.yaml"
    net.write_text(TWO.format(heavy=heavy))
    result = run(spec_text(tmp_path / "a.jsonl", net, 64), tmp_path)
    alloc = result.allocation["local"]
    assert alloc["spent"] == 64 and result.measured == 64
    assert alloc["grants"][:2] == [[HEAVY, 4, "warm-up"], [LIGHT, 4, "warm-up"]]
    got = after_warmup(result)
    assert sum(got.values()) == 56
    if heavy == 10:
        # Pass: the ten-times task gets at least 6 of the 7 batches after the warm-up.
        assert got[HEAVY] >= 48, alloc["grants"]
    else:
        # Pass (control): neither gets more than 5 of the 7 (with ten times the weight, one gets 6 or 7).
        assert max(got.values()) <= 40 and len(got) == 2, alloc["grants"]
    assert len(records(tmp_path / "a.jsonl")) == 64


def test_resume_keeps_the_allocation(tmp_path: Path) -> None:
    """A rerun with a larger trials_total continues from the log: no second warm-up, the heavy task
    keeps the budget, and nothing is measured twice."""
    net = tmp_path / "two.yaml"
    net.write_text(TWO.format(heavy=10))
    log = tmp_path / "r.jsonl"
    first = run(spec_text(log, net, 32), tmp_path)
    assert first.allocation["local"]["spent"] == 32
    second = run(spec_text(log, net, 64), tmp_path)
    alloc = second.allocation["local"]
    assert second.resumed == 32 and second.measured == 32 and alloc["spent"] == 64
    # Pass: no warm-up batch after the resume, and the heavy task gets at least 3 of the 4 new batches.
    assert all(why != "warm-up" for _, _, why in alloc["grants"]), alloc["grants"]
    assert after_warmup(second)[HEAVY] >= 24, alloc["grants"]
    recs = records(log)
    assert len(recs) == 64
    assert max(Counter((r["workload"]["args"][2], r["config"]["index"]) for r in recs).values()) == 1


ALWAYS_WRONG = '''
from farm import te, template

@template("always_wrong", reference=lambda a: a * 3.0)   # the kernel computes a * 2: never correct
def always_wrong(cfg, n):
    A = te.placeholder((n,), name="A")
    B = te.compute((n,), lambda i: A[i] * 2.0, name="B")
    s = te.create_schedule(B.op)
    cfg.define_knob("a", list(range(8)))
    cfg.define_knob("b", list(range(8)))
    xo, xi = s[B].split(B.op.axis[0], factor=8)
    s[B].vectorize(xi)
    return s, [A, B]
'''


def test_a_task_whose_template_always_fails_is_starved(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "wrong.py").write_text(textwrap.dedent(ALWAYS_WRONG))
    net = tmp_path / "two.yaml"
    net.write_text(TWO.format(heavy=1))
    log = tmp_path / "s.jsonl"
    wrong = "  - {template: k/wrong.py:always_wrong, shape: [4096]}\n"
    (tmp_path / "s.yaml").write_text(spec_text(log, net, 64) + wrong)
    r = farm("tune", str(tmp_path / "s.yaml"), "--json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]  # a task found no correct config
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    tasks = {t["workload"]: t for t in summary["tasks"]}
    failing = tasks["always_wrong"]
    # Pass: the failing task gets its warm-up and one more batch (starved after warm-up + batch = 12
    # failures in a row), no more; the budget it did not use goes to the others, all 64 spent.
    assert failing["trials"] == 12 and failing["errors"] == 12 and "starved" in failing["error"], failing
    assert summary["allocation"]["local"]["starved"] == ["always_wrong(4096)@local"]
    assert sum(t["trials"] for t in summary["tasks"]) == 64
    assert all(t["ok"] for name, t in tasks.items() if name != "always_wrong")
    assert "budget local: 64/64 trials" in r.stdout and "end to end two batch 1 on local" in r.stdout, r.stdout
    outcomes = Counter(x["result"]["outcome"] for x in records(log) if x["workload"]["name"] == "always_wrong")
    assert outcomes == {"WRONG_ANSWER": 12}


def test_budgets_are_kept_per_device_key(tmp_path: Path) -> None:
    """Two device keys, one trials_total: each key spends exactly its own budget."""
    net = tmp_path / "two.yaml"
    net.write_text(TWO.format(heavy=3))
    log = tmp_path / "k.jsonl"
    result = run(spec_text(log, net, 24, keys="[local, other]"), tmp_path, second_key="other")
    assert {k: a["spent"] for k, a in result.allocation.items()} == {"local": 24, "other": 24}
    per_key = Counter(x["device"]["key"] for x in records(log))
    # Pass: exactly 24 records per key, and every task of each key was warmed up on its own key.
    assert per_key == {"local": 24, "other": 24}, per_key
    for key in ("local", "other"):
        warm = [t for t, _, why in result.allocation[key]["grants"] if why == "warm-up"]
        assert sorted(warm) == sorted(t.task for t in result.tasks if t.device_key == key)
    assert {(n["network"], n["device_key"]) for n in result.networks} == {("two", "local"), ("two", "other")}
