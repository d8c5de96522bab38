"""A real campaign (`farm tune --tracker`, real Ray builds, real CPU device servers as
processes) while the farm is attacked: device servers SIGKILLed at random moments (some
restarted), the tracker killed and restarted, a device's connection cut mid-upload, a
slow device, and candidates that segfault, hang or write out of bounds.

Afterwards every planned trial is in the log exactly once, each with the outcome its
fault demands (rebuilt here to recompute the content hash that selected the fault), the
campaign finished by itself, and no process outlived the run.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from farm.records.measure import Outcome
from tests.chaos.chaos_backend import fault_for, parse_faults
from tests.support.chaos_campaign import FAULT_RATES, WORKLOADS, run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

EXPECTED = {"segfault": "RUNTIME_ERROR", "oob": "RUNTIME_ERROR", "hang": "RUN_TIMEOUT"}


def test_campaign_survives_faults(tmp_path: Path) -> None:
    trials = 24
    r = run_chaos(tmp_path, trials=trials, seed=3)
    detail = f"events {dict(r.events)} outcomes {dict(r.outcomes)}\n{r.stderr_tail}"
    assert not r.hung, "the campaign did not finish: " + detail
    assert r.returncode == 0, detail
    assert not r.leaked, f"processes outlived the chaos run: {r.leaked}"
    assert r.trials_planned == trials * len(WORKLOADS)
    assert (r.lost, r.duplicated, r.trials_logged) == (0, 0, r.trials_planned), detail
    # Every fault kind of the process/network sort actually happened.
    assert r.events["tracker_restart"] >= 1 and r.events["device_sigkill"] >= 1, detail
    assert r.events["upload_cut"] >= 1, detail
    # One re-dial may cover two restarts (the second came while the driver was still backing off).
    assert r.summary["reconnects"] >= 1, r.summary
    assert all(t["trials"] == trials for t in r.summary["tasks"]), r.summary

    # Each candidate's outcome is the one its injected fault demands.
    from farm.workloads.registry import build_workload

    faults = parse_faults(FAULT_RATES)
    seen: Counter[str] = Counter()
    for rec in r.records:
        outcome = rec["result"]["outcome"]
        assert outcome in {o.value for o in Outcome}
        art = build_workload(rec["workload"]["name"], rec["workload"]["args"], str(rec["config"]["index"]),
                             rec["target"]).artifact
        fault = fault_for(art.hash, faults)
        seen[fault or "none"] += 1
        if fault is not None:
            assert outcome == EXPECTED[fault], (fault, rec["result"])
        else:
            # A healthy candidate is measured, unless the devices it ran on kept dying under it.
            assert outcome in ("OK", "DEVICE_LOST"), rec["result"]
    assert seen["segfault"] + seen["oob"] + seen["hang"] >= 1, seen
    assert r.outcomes["OK"] >= len(r.records) // 2, r.outcomes
