"""Pipeline depth follows free devices: one task with batch_size 1 keeps several devices busy.

A real embedded farm (in-process tracker, three local CPU device servers) and a
local Ray; the tracker's busy counters (the campaign's idle timeline) show more
than one device working at once, which a depth of just the batch size cannot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ray


def _spec(log: Path, trials: int, batch: int, min_repeat_ms: int, extra: str = "") -> str:
    """A random-search campaign on matmul 64^3 (extra: more top-level YAML lines)."""
    return (f"name: {log.stem}\nlog: {log}\ntuner: random\ntrials: {trials}\nbatch_size: {batch}\n"
            f"transfer: false\n{extra}timing: {{repeat: 2, min_repeat_ms: {min_repeat_ms}, timeout_s: 20}}\n"
            "workloads:\n  - {name: matmul, shape: [64, 64, 64]}\n")


def _run(spec_text: str, servers: int, runner_cls: Any = None) -> Any:
    """One campaign on a real embedded farm and a local Ray (shut down after)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from farm.campaign.builds import init_ray
    from farm.campaign.config import parse_campaign
    from farm.campaign.driver import CampaignRunner
    from farm.campaign.embedded import EmbeddedFarm
    from farm.client.session import connect

    spec = parse_campaign(spec_text)
    assert not ray.is_initialized()
    init_ray(None, 1)
    try:
        with EmbeddedFarm(servers=servers) as farm, connect(farm.address, token=farm.token) as session:
            return (runner_cls or CampaignRunner)(spec, session).run()
    finally:
        ray.shutdown()


def test_free_devices_deepen_the_pipeline(tmp_path: Path) -> None:
    result = _run(_spec(tmp_path / "depth.jsonl", 10, 1, 300), servers=3)
    assert result.measured == 10
    tl = result.idle_timeline
    # busy device-seconds per wall second between samples: above 1 means devices worked in parallel
    rates = [(b1 - b0) / (t1 - t0) for (t0, b0, _), (t1, b1, _) in zip(tl, tl[1:]) if t1 - t0 > 0.2]
    assert rates and max(rates) > 1.3, rates


@pytest.mark.parametrize("exclusive", [True, False])
def test_exclusive_timing_never_builds_while_a_device_times(tmp_path: Path, exclusive: bool) -> None:
    """exclusive_timing: builds and timing take turns (the embedded farm's device
    shares its cores with the builders); without it, builds overlap timing."""
    from farm.campaign.driver import CampaignRunner

    overlaps: list[int] = []  # builds in flight whenever a job was submitted

    class Watched(CampaignRunner):
        def _submit(self, t, idx, built, tries, out):  # type: ignore[no-untyped-def]
            overlaps.append(sum(len(x.builds) + len(x.pending) for x in self.tasks))
            super()._submit(t, idx, built, tries, out)

    result = _run(_spec(tmp_path / "turns.jsonl", 24, 4, 100, f"exclusive_timing: {str(exclusive).lower()}\n"),
                  servers=1, runner_cls=Watched)
    assert result.measured == 24
    recs = [line for line in (tmp_path / "turns.jsonl").read_text().splitlines() if line.strip()]
    assert len(recs) == 24  # every trial logged once, as without turns
    if exclusive:
        assert overlaps and max(overlaps) == 0, overlaps
    else:
        assert max(overlaps) > 0, overlaps  # the control: pipelined builds do overlap timing
