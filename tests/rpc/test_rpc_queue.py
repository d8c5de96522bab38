"""The tracker's queue logic, without sockets or clocks."""
from __future__ import annotations

import random

from farm.records.measure import Outcome
from rpc.queue import (
    Dispatch,
    DropDevice,
    JobDone,
    JobFailed,
    JobSpec,
    LeaseFailed,
    LeaseGranted,
    SchedulerQueue,
)

OK = {"outcome": "OK", "costs": [0.001]}


def dispatches(actions):
    return [(a.device_id, a.job_id) for a in actions if isinstance(a, Dispatch)]


def test_priority_then_arrival():
    q = SchedulerQueue()
    for i, prio in enumerate([0, 5, 0, 5, 1]):
        assert q.submit(JobSpec(f"j{i}", "k", "c", priority=prio), now=0) == []
    order = []
    acts = q.add_device("d", "k", now=0)
    while acts:
        (dev, job), = dispatches(acts)
        order.append(job)
        acts = [a for a in q.finish(dev, job, OK, now=1) if isinstance(a, Dispatch)]
    assert order == ["j1", "j3", "j4", "j0", "j2"]


def test_keys_are_independent_and_fair():
    q = SchedulerQueue()
    q.add_device("a1", "A", now=0)
    q.add_device("b1", "B", now=0)
    for i in range(100):
        q.submit(JobSpec(f"a{i}", "A", "c"), now=0)
    acts = q.submit(JobSpec("b0", "B", "c"), now=0)
    # The flood on A does not delay B's job at all.
    assert dispatches(acts) == [("b1", "b0")]


def test_device_lost_requeues_then_gives_up():
    q = SchedulerQueue(max_retries=1)
    q.submit(JobSpec("j", "k", "c"), now=0)
    assert dispatches(q.add_device("d1", "k", now=0)) == [("d1", "j")]
    q.add_device("d2", "k", now=0)
    acts = q.remove_device("d1", now=1, reason="eof")
    assert dispatches(acts) == [("d2", "j")]  # requeued at once onto the free device
    acts = q.remove_device("d2", now=2, reason="eof")
    (done,) = [a for a in acts if isinstance(a, JobDone)]
    assert done.result["outcome"] == Outcome.DEVICE_LOST and "2 attempt" in done.result["message"]
    assert q.jobs == {}


def test_requeued_job_keeps_its_place():
    q = SchedulerQueue()
    q.add_device("d1", "k", now=0)
    q.submit(JobSpec("first", "k", "c"), now=0)
    q.submit(JobSpec("second", "k", "c"), now=0)
    q.add_device("d2", "k", now=0)  # runs "second"
    acts = q.remove_device("d1", now=1, reason="killed")
    assert dispatches(acts) == []
    q.submit(JobSpec("third", "k", "c"), now=1)
    acts = q.finish("d2", "second", OK, now=2)
    assert dispatches(acts) == [("d2", "first")]


def test_stale_result_ignored():
    q = SchedulerQueue()
    q.add_device("d1", "k", now=0)
    q.submit(JobSpec("j", "k", "c"), now=0)
    q.remove_device("d1", now=1, reason="x")
    assert q.finish("d1", "j", OK, now=2) == []
    q.add_device("d2", "k", now=2)
    assert q.finish("d2", "other", OK, now=2) == []


def test_queue_deadline_and_heartbeat_and_wedged_device():
    q = SchedulerQueue(heartbeat_timeout=5)
    q.submit(JobSpec("late", "nokey", "c", queue_deadline=3), now=0)
    (failed,) = q.tick(now=4)
    assert isinstance(failed, JobFailed) and failed.error["type"] == "DeadlineExceeded"
    assert "0 device(s)" in failed.error["message"]
    q.add_device("d", "k", now=0)
    q.heartbeat("d", now=4)
    assert q.tick(now=8) == []
    acts = q.tick(now=10)
    assert DropDevice("d", "heartbeat lapsed") in acts and "d" not in q.devices
    q.add_device("w", "k", now=20)
    q.submit(JobSpec("j", "k", "c", run_budget_s=2), now=20)
    q.heartbeat("w", now=23)
    acts = q.tick(now=23)
    assert DropDevice("w", "job ran past its run budget") in acts


def test_lease_exclusive_and_release():
    q = SchedulerQueue()
    q.add_device("d1", "k", now=0)
    acts = q.request_lease("L", "alice", "k", now=0)
    assert acts == [LeaseGranted("L", "alice", "d1")]
    assert q.submit(JobSpec("bob1", "k", "bob"), now=0) == []  # pool is empty now
    assert dispatches(q.submit(JobSpec("a1", "k", "alice", lease_id="L"), now=0)) == [("d1", "a1")]
    acts = q.submit(JobSpec("x", "k", "bob", lease_id="L"), now=0)
    assert isinstance(acts[0], JobFailed) and acts[0].error["type"] == "NoSuchLease"
    q.submit(JobSpec("a2", "k", "alice", lease_id="L"), now=0)
    assert dispatches(q.finish("d1", "a1", OK, now=1)) == [("d1", "a2")]
    q.finish("d1", "a2", OK, now=1)
    assert dispatches(q.release_lease("L", now=2)) == [("d1", "bob1")]


def test_lease_waits_for_idle_device_and_breaks_on_loss():
    q = SchedulerQueue()
    q.add_device("d1", "k", now=0)
    q.submit(JobSpec("j", "k", "c"), now=0)
    assert q.request_lease("L", "alice", "k", now=0) == []
    acts = q.finish("d1", "j", OK, now=1)
    assert acts[-1] == LeaseGranted("L", "alice", "d1")
    q.submit(JobSpec("a", "k", "alice", lease_id="L"), now=1)
    acts = q.remove_device("d1", now=2, reason="eof")
    assert any(isinstance(a, LeaseFailed) for a in acts)
    assert any(isinstance(a, JobDone) and a.result["outcome"] == Outcome.DEVICE_LOST for a in acts)


def test_client_gone_cancels_pending_and_drops_results():
    q = SchedulerQueue()
    q.add_device("d", "k", now=0)
    q.submit(JobSpec("run", "k", "c"), now=0)
    q.submit(JobSpec("wait", "k", "c"), now=0)
    q.submit(JobSpec("other", "k", "c2"), now=0)
    assert q.client_gone("c", now=1) == []
    acts = q.finish("d", "run", OK, now=2)
    assert acts == [Dispatch("d", "other")]  # no reply to the gone client, its pending job skipped


def test_capacity_and_summary():
    q = SchedulerQueue()
    q.add_device("d", "k", now=0, capacity=2, fingerprint={"cpu": "x"})
    for i in range(3):
        q.submit(JobSpec(f"j{i}", "k", "c"), now=0)
    s = q.summary(now=10)
    assert s["keys"]["k"] == {"devices": 1, "free": 0, "busy": 1, "leased": 0, "pending": 1}
    q.finish("d", "j0", {"outcome": "RUNTIME_ERROR", "message": "SIGSEGV"}, now=10)
    (dev,) = q.summary(now=10)["devices"]
    assert dev["errors"] == 1 and dev["last_error"].startswith("RUNTIME_ERROR")
    assert dev["utilization"] == 1.0


def test_random_events_keep_invariants():
    rng = random.Random(7)
    q = SchedulerQueue(max_retries=1)
    next_dev = 0
    answered: set[str] = set()
    submitted: set[str] = set()
    for step in range(4000):
        r = rng.random()
        acts = []
        if r < 0.1:
            acts = q.add_device(f"d{next_dev}", rng.choice("AB"), now=step, capacity=rng.randint(1, 2))
            next_dev += 1
        elif r < 0.15 and q.devices:
            acts = q.remove_device(rng.choice(sorted(q.devices)), now=step, reason="x")
        elif r < 0.6:
            jid = f"j{step}"
            submitted.add(jid)
            acts = q.submit(JobSpec(jid, rng.choice("AB"), "c", priority=rng.randint(0, 3)), now=step)
        else:
            busy = [(d, j) for d, dev in q.devices.items() for j in dev.running]
            if busy:
                d, j = rng.choice(busy)
                acts = q.finish(d, j, OK, now=step)
        for a in acts:
            if isinstance(a, (JobDone, JobFailed)):
                assert a.job_id not in answered
                answered.add(a.job_id)
        for dev in q.devices.values():
            assert len(dev.running) <= dev.capacity
            for j in dev.running:
                assert q.jobs[j].device_id == dev.device_id
    # Every job is either answered or still known to the queue: nothing is lost.
    assert submitted == answered | (submitted & set(q.jobs))
