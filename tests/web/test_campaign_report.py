"""The campaign's reporter (farm.campaign.report): best effort, rate-limited, never in the way.

Against fakes: at most one report per second (the final one at once), a dead, slow or
refusing tracker costs the campaign's thread nothing and raises nothing, curves are thinned
to the wire's bound. Against a real tracker: the page's API shows the campaign, and after a
tracker restart the campaign shows again within 5 s of re-dialling it.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from farm.campaign.report import CampaignReporter, compose, thin
from farm.client.session import connect
from rpc.errors import BadRequest, ConnectionLost
from rpc.fields import MAX_CURVE_POINTS, MAX_REPORT_TASKS
from tests.web.support import LoopTracker, loop_tracker


def task(name: str = "matmul(64,64,64)@web", done: int = 0, budget: int = 8, finished: bool = False) -> Any:
    history = [(i + 1, float(min(i, 5))) for i in range(done)]
    return SimpleNamespace(name=name, wl=SimpleNamespace(name="matmul"), key="web", budget=budget, done_trials=done,
                           errors=0, in_flight=1, best_gflops=history[-1][1] if history else 0.0, best_s=None,
                           finished=finished, error="", history=history)


class FakeClient:
    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.reports: list[dict[str, Any]] = []

    def call(self, op: str, timeout: float | None = None, **request: Any) -> dict[str, Any]:
        assert op == "campaign_report" and timeout is not None and timeout <= 5
        if self.behaviour == "lost":
            raise ConnectionLost("tracker connection lost")
        if self.behaviour == "old":
            raise BadRequest("unknown op 'campaign_report'")
        if self.behaviour == "slow":
            time.sleep(timeout)
            raise TimeoutError
        self.reports.append(request)
        return {}


def session_of(client: FakeClient) -> Any:
    return SimpleNamespace(client=client)


def wait_for(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def test_one_report_a_second_and_the_final_one_at_once() -> None:
    fake = FakeClient()
    rep = CampaignReporter("c", lambda: session_of(fake), every_s=1.0, host="laptop")
    tasks = [task(done=1)]
    t0 = time.monotonic()
    for n in range(50):
        tasks[0] = task(done=1 + n // 10)
        rep(tasks, {})
    assert time.monotonic() - t0 < 0.5
    assert wait_for(lambda: len(fake.reports) == 1)
    tasks[0] = task(done=8, finished=True)
    rep(tasks, {})  # within the second, but final
    rep.close()
    assert len(fake.reports) == 2 and fake.reports[-1]["finished"] is True
    first = fake.reports[0]
    assert first["name"] == "c" and first["host"] == "laptop" and len(first["run"]) == 16
    (t,) = first["tasks"]
    assert t["task"] == "matmul(64,64,64)@web" and t["done"] == 1 and t["curve"] == [[1.0, 0.0]]
    assert fake.reports[-1]["tasks"][0]["curve"][-1] == [8.0, 5.0]


def test_a_dead_slow_or_old_tracker_never_reaches_the_campaign() -> None:
    for behaviour in ("lost", "slow", "old"):
        fake = FakeClient(behaviour)
        rep = CampaignReporter("c", lambda f=fake: session_of(f), every_s=0.0, timeout_s=0.5, quiet_s=60)
        t0 = time.monotonic()
        for n in range(20):
            rep([task(done=n)], {})
        assert time.monotonic() - t0 < 0.3, behaviour  # the campaign's thread never waits
        t0 = time.monotonic()
        rep.close(wait_s=0.2)
        assert time.monotonic() - t0 < 0.5, behaviour  # nor does its end wait long
        assert wait_for(lambda r=rep: r.failed >= 1) and rep.sent == 0, behaviour
        if behaviour == "old":
            assert rep.failed == 1  # refused once: quiet for a minute
    broken = CampaignReporter("c", lambda: (_ for _ in ()).throw(RuntimeError("no session yet")), every_s=0)
    broken([task(done=1)], {})
    broken([object()], {})  # not even a task: logged, not raised
    broken.close()


def test_reports_follow_the_session_the_campaign_holds() -> None:
    first, second = FakeClient(), FakeClient()
    holder = {"s": session_of(first)}
    rep = CampaignReporter("c", lambda: holder["s"], every_s=0.0)
    rep([task(done=1)], {})
    assert wait_for(lambda: len(first.reports) == 1)
    holder["s"] = session_of(second)  # the campaign re-dialled
    rep([task(done=2)], {})
    assert wait_for(lambda: len(second.reports) == 1)
    rep.close()


def test_curves_and_tasks_are_thinned_to_the_wire_bounds() -> None:
    steps = [(i + 1, float(i // 50)) for i in range(5000)]
    pts = thin(steps)
    assert len(pts) <= MAX_CURVE_POINTS and pts[0] == [1.0, 0.0] and pts[-1] == [5000.0, 99.0]
    improvements = {i + 1 for i in range(1, 5000) if steps[i][1] != steps[i - 1][1]}
    assert improvements <= {int(p[0]) for p in pts}  # every improvement kept
    noisy = [(i + 1, float(i)) for i in range(1000)]  # an improvement at every trial
    assert len(thin(noisy)) <= MAX_CURVE_POINTS and thin(noisy)[-1] == [1000.0, 999.0]
    assert thin(steps[:10]) == [[float(t), g] for t, g in steps[:10]]
    fake = FakeClient()
    rep = CampaignReporter("c", lambda: session_of(fake), every_s=0.0)
    rep([task(name=f"t{i}", done=3) for i in range(MAX_REPORT_TASKS + 10)], {})
    rep.close()
    assert len(fake.reports[0]["tasks"]) == MAX_REPORT_TASKS


def test_compose_calls_each_progress_callback() -> None:
    seen: list[str] = []
    both = compose(lambda t, s: seen.append("a"), None, lambda t, s: seen.append("b"))
    assert both is not None
    both([], {})
    assert seen == ["a", "b"] and compose(None, None) is None


def _campaigns(lt: LoopTracker) -> list[dict[str, Any]]:
    return list(lt.api("/api/campaigns")["campaigns"])


def test_the_page_shows_a_campaign_again_within_5s_of_its_redial_after_a_tracker_restart() -> None:
    lt = LoopTracker()
    port, token = int(lt.address.rsplit(":", 1)[1]), lt.token
    session = connect(lt.address, token=token, max_outage_s=0)
    holder = {"s": session}
    rep = CampaignReporter("restart-me", lambda: holder["s"], every_s=0.2)
    stop = threading.Event()
    done = [0]

    def campaign() -> None:  # the driver's loop: progress every 0.1 s, one more trial now and then
        while not stop.is_set():
            done[0] += 1
            rep([task(done=min(done[0] // 3 + 1, 8))], {})
            time.sleep(0.1)

    th = threading.Thread(target=campaign, daemon=True)
    th.start()
    lt2 = None
    try:
        assert wait_for(lambda: any(c["name"] == "restart-me" for c in _campaigns(lt)))
        lt.close()  # the tracker goes away; the reporter's sends fail quietly
        time.sleep(0.5)
        lt2 = LoopTracker(token=token, port=port)
        holder["s"] = connect(lt2.address, token=token, max_outage_s=0)  # the campaign re-dials (campaign.link)
        t_redial = time.monotonic()
        assert wait_for(lambda: any(c["name"] == "restart-me" and c["state"] == "running" for c in _campaigns(lt2)),
                        timeout=5.0), "the campaign did not show again within 5 s of its re-dial"
        assert time.monotonic() - t_redial < 5.0
        (c,) = _campaigns(lt2)
        assert c["tasks"][0]["points"] >= 1 and rep.failed >= 1
    finally:
        stop.set()
        th.join(5)
        rep.close()
        session.close()
        holder["s"].close()
        if lt2 is not None:
            lt2.close()


def test_a_campaign_on_a_real_tracker_shows_its_progress() -> None:
    with loop_tracker() as lt, connect(lt.address, token=lt.token, max_outage_s=0) as session:
        rep = CampaignReporter("live", lambda: session, every_s=0.0)
        rep([task(done=3), task(name="conv@web", done=2)], {})
        assert wait_for(lambda: bool(_campaigns(lt)))
        (c,) = _campaigns(lt)
        assert c["trials_done"] == 5 and c["budget"] == 16 and [t["points"] for t in c["tasks"]] == [3, 2]
        rep([task(done=8, finished=True), task(name="conv@web", done=8, finished=True)], {})
        rep.close()
        assert wait_for(lambda: _campaigns(lt)[0]["state"] == "finished")
