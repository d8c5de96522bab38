"""Fuzz a real tracker and a real device server (>= 10,000 inputs in all, bounded in time).

No input may crash either process, leave a connection hanging, or grow its memory past a
bound, and every 100 inputs a real job measured end to end proves each still *serves*.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fuzz_run import run_fuzz

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

RSS_GROWTH_MB = 40.0


def _growth(samples: list[float]) -> float:
    # After the first probes the allocator has its working set; growth past that is a leak.
    base = min(samples[: max(3, len(samples) // 10)])
    return max(samples) - base


def test_fuzz_tracker_and_device_server(tmp_path: Path) -> None:
    r = run_fuzz(tmp_path / "farm", tracker_inputs=8800, device_inputs=1500, seed=11)
    assert r.tracker_alive and r.device_alive, "a process died under fuzzing:\n" + r.logs[-6000:]
    assert not r.leaked, f"processes outlived the fuzz run: {r.leaked}"
    for name, st in (("tracker", r.tracker), ("device server", r.device)):
        assert not st.probe_failures, f"{name} stopped serving: {st.probe_failures[:5]}"
        assert st.hangs == 0, f"{name}: {st.hangs} inputs left hanging"
        assert st.probes >= st.inputs // 100
        assert _growth(st.rss_mb) < RSS_GROWTH_MB, f"{name} RSS grew: {st.rss_mb}"
    assert not r.unexpected_results, f"the device ran malformed jobs: {r.unexpected_results[:5]}"
    assert r.inputs >= 10_000
    # the run exercised every kind of hostile input
    cats = {c.split(":")[0] for c in r.tracker.categories}
    assert {"random", "preamble+garbage", "huge-length", "truncated", "bad-json", "wrong-fields", "op-before-auth",
            "device"} <= cats, cats
    assert r.wall_s < 400
