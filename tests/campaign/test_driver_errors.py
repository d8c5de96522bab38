"""A bug is not a measurement: an exception in the tuner or in collecting a job stops the campaign
with a clear error, and nothing false (no DEVICE_LOST) is written to the log."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from farm.campaign.driver import CampaignError, CampaignRunner
from tests.campaign.test_pipeline_depth import _run, _spec

pytestmark = pytest.mark.ray


def _outcomes(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [json.loads(line)["result"]["outcome"] for line in log.read_text().splitlines() if line.strip()]


class _BuggyTuner(CampaignRunner):
    """The tuner's second proposal raises, as a bug in a tuner would."""

    def _make_tasks(self, records: list[Any]) -> None:
        super()._make_tasks(records)
        for t in self.tasks:
            real, calls = t.tuner.propose, [0]

            def propose(n: int, real: Any = real, calls: list[int] = calls) -> list[int]:
                calls[0] += 1
                if calls[0] >= 2:
                    raise ZeroDivisionError("injected tuner bug")
                return list(real(n))

            t.tuner.propose = propose


class _BuggyCollect(CampaignRunner):
    """Every job's result raises an exception that no farm raises (a bug on our side)."""

    def _submit(self, t: Any, idx: int, built: Any, tries: int, out: list[Any]) -> None:
        super()._submit(t, idx, built, tries, out)
        if idx in t.jobs:
            fl = t.jobs[idx]

            class Broken:
                def done(self) -> bool:
                    return fl.job.done()

                def result(self, timeout: float | None = None) -> Any:
                    raise KeyError("injected collect bug")

            t.jobs[idx] = type(fl)(Broken(), fl.built, fl.tries, fl.gen)


@pytest.mark.parametrize("runner, what", [(_BuggyTuner, "ZeroDivisionError: injected tuner bug"),
                                          (_BuggyCollect, "KeyError")])
def test_a_bug_stops_the_campaign_and_logs_nothing_false(tmp_path: Path, runner: Any, what: str) -> None:
    log = tmp_path / "bug.jsonl"
    with pytest.raises(CampaignError, match=what):
        _run(_spec(log, 12, 2, 20), servers=1, runner_cls=runner)
    outcomes = _outcomes(log)
    assert "DEVICE_LOST" not in outcomes, outcomes
    assert all(o == "OK" for o in outcomes), outcomes  # what was measured before the bug stays, truthfully
