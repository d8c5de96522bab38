"""The tracker's scheduling logic as a plain object: events in, actions out.

No sockets, no clocks, no asyncio: every event carries ``now`` and returns the
actions the tracker must carry out (send a job to a device, reply to a client,
drop a silent device). That makes it unit-testable and lets the benchmark drive
it with 1,000 simulated devices.

Rules:
  * one queue per device key, ordered by priority (higher first) then arrival;
  * a job goes to a free, unleased device of its key; a requeued job keeps its
    place (priority, arrival), so it runs next rather than last;
  * a device that vanishes (connection lost or heartbeat lapsed) has its jobs
    requeued, each at most ``max_retries`` times, then answered DEVICE_LOST;
  * a lease takes one idle device of a key out of the pool for one client;
    jobs submitted under the lease go only to it, first come first served;
  * budgets: a pending job or lease request past its queue deadline is failed
    with DeadlineExceeded; a running job past its run budget (the device's own
    hard timeout plus grace) means the device is wedged, and it is dropped.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from farm.records.measure import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """What a client asked for, as far as scheduling is concerned."""

    job_id: str
    key: str
    client_id: str
    priority: int = 0
    queue_deadline: float | None = None  # absolute time; None: wait forever
    run_budget_s: float = 60.0  # device hard timeout + grace
    lease_id: str | None = None


@dataclass(frozen=True)
class Dispatch:
    device_id: str
    job_id: str


@dataclass(frozen=True)
class JobDone:
    """Relay a result (a MeasureResult in JSON form) to the submitting client."""

    job_id: str
    client_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class JobFailed:
    """The job produced no measurement; ``error`` is a wire error (rpc.errors)."""

    job_id: str
    client_id: str
    error: dict[str, str]


@dataclass(frozen=True)
class LeaseGranted:
    lease_id: str
    client_id: str
    device_id: str


@dataclass(frozen=True)
class LeaseFailed:
    lease_id: str
    client_id: str
    error: dict[str, str]


@dataclass(frozen=True)
class DropDevice:
    device_id: str
    reason: str


Action = Dispatch | JobDone | JobFailed | LeaseGranted | LeaseFailed | DropDevice


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    seq: int
    attempts: int = 0
    device_id: str | None = None
    started: float = 0.0
    state: str = "pending"  # pending | running | done
    is_lease: bool = False  # a lease request waiting in the key's queue

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.spec.priority, self.seq)


@dataclass(eq=False)
class _Device:
    device_id: str
    key: str
    capacity: int
    fingerprint: dict[str, Any]
    name: str
    joined: float
    last_seen: float
    running: set[str] = field(default_factory=set)
    lease_id: str | None = None
    busy_s: float = 0.0
    jobs_done: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass(eq=False)
class _Lease:
    lease_id: str
    client_id: str
    device_id: str
    jobs: deque[str] = field(default_factory=deque)


def _err(type_: str, message: str) -> dict[str, str]:
    return {"type": type_, "message": message}


def _check_finite(*times: float | None) -> None:
    for t in times:
        if t is not None and not math.isfinite(t):
            raise ValueError(f"deadline {t!r} is not a finite time")


class SchedulerQueue:
    """Per-key priority queues, devices, leases. See the module docstring."""

    def __init__(self, max_retries: int = 2, heartbeat_timeout: float = 10.0) -> None:
        self.max_retries = max_retries
        self.heartbeat_timeout = heartbeat_timeout
        self._seq = itertools.count()
        self.jobs: dict[str, _Job] = {}
        self.devices: dict[str, _Device] = {}
        self.leases: dict[str, _Lease] = {}
        self._pending: dict[str, list[tuple[int, int, str]]] = {}  # key -> heap
        self._free: dict[str, dict[str, None]] = {}  # key -> ordered set of devices with a free slot
        self._queue_deadlines: list[tuple[float, str]] = []
        self._run_deadlines: list[tuple[float, str, int]] = []
        self.completed = 0

    # ---- devices -------------------------------------------------------
    def add_device(
        self,
        device_id: str,
        key: str,
        now: float,
        capacity: int = 1,
        fingerprint: dict[str, Any] | None = None,
        name: str = "",
    ) -> list[Action]:
        if device_id in self.devices:
            raise ValueError(f"device {device_id} already registered")
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.devices[device_id] = _Device(device_id, key, capacity, fingerprint or {}, name or device_id, now, now)
        self._free.setdefault(key, {})[device_id] = None
        return self._pump(key, now)

    def heartbeat(self, device_id: str, now: float) -> None:
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.last_seen = now

    def remove_device(self, device_id: str, now: float, reason: str) -> list[Action]:
        """The device is gone: requeue (or give up on) what it was running."""
        dev = self.devices.pop(device_id, None)
        if dev is None:
            return []
        self._free.get(dev.key, {}).pop(device_id, None)
        actions: list[Action] = []
        if dev.lease_id is not None:
            actions += self._break_lease(dev.lease_id, f"device {dev.name} lost: {reason}")
        for job_id in sorted(dev.running, key=lambda j: self.jobs[j].seq):
            job = self.jobs[job_id]
            job.attempts += 1
            job.device_id = None
            if not job.spec.client_id:  # its client left: nobody wants a retry
                del self.jobs[job_id]
            elif job.spec.lease_id is not None or job.attempts > self.max_retries:
                # A lease job is bound to its device; others ran out of retries.
                job.state = "done"
                del self.jobs[job_id]
                msg = f"device {dev.name} lost ({reason}) after {job.attempts} attempt(s)"
                result = {"outcome": Outcome.DEVICE_LOST.value, "message": msg, "device_key": dev.key}
                actions.append(JobDone(job_id, job.spec.client_id, result))
            else:
                log.info("requeue %s (attempt %d) after losing %s", job_id, job.attempts, dev.name)
                job.state = "pending"
                heapq.heappush(self._pending.setdefault(dev.key, []), (*job.sort_key, job_id))
        return actions + self._pump(dev.key, now)

    # ---- jobs ----------------------------------------------------------
    def submit(self, spec: JobSpec, now: float) -> list[Action]:
        if spec.job_id in self.jobs:
            raise ValueError(f"duplicate job id {spec.job_id}")
        # The wire is checked (rpc.fields), but one NaN in a deadline heap would stop every
        # deadline behind it, so the heap's own entrance refuses it too.
        _check_finite(spec.queue_deadline, spec.run_budget_s)
        job = _Job(spec, next(self._seq))
        if spec.lease_id is not None:
            lease = self.leases.get(spec.lease_id)
            if lease is None or lease.client_id != spec.client_id:
                return [JobFailed(spec.job_id, spec.client_id, _err("NoSuchLease", f"no lease {spec.lease_id}"))]
            self.jobs[spec.job_id] = job
            lease.jobs.append(spec.job_id)
            return self._pump_lease(lease, now)
        self.jobs[spec.job_id] = job
        heapq.heappush(self._pending.setdefault(spec.key, []), (*job.sort_key, spec.job_id))
        if spec.queue_deadline is not None:
            heapq.heappush(self._queue_deadlines, (spec.queue_deadline, spec.job_id))
        return self._pump(spec.key, now)

    def finish(self, device_id: str, job_id: str, result: dict[str, Any], now: float) -> list[Action]:
        """A device reported a result. Stale reports (job requeued meanwhile) are ignored."""
        return self._end(device_id, job_id, now, result=result)

    def refuse(self, device_id: str, job_id: str, error: dict[str, str], now: float) -> list[Action]:
        """The device refused the job (a field it could not accept): the client gets the error."""
        return self._end(device_id, job_id, now, error=error)

    def _end(self, device_id: str, job_id: str, now: float, *, result: dict[str, Any] | None = None,
             error: dict[str, str] | None = None) -> list[Action]:
        dev = self.devices.get(device_id)
        job = self.jobs.get(job_id)
        if dev is None or job is None or job.device_id != device_id or job_id not in dev.running:
            log.info("ignoring stale report on %s from %s", job_id, device_id)
            return []
        dev.running.discard(job_id)
        dev.busy_s += now - job.started
        dev.last_seen = now
        dev.jobs_done += 1
        outcome = str(result.get("outcome", "")) if result is not None else str((error or {}).get("type"))
        if outcome != Outcome.OK.value:
            dev.errors += 1
            dev.last_error = f"{outcome}: {str((result or error or {}).get('message', ''))[:200]}"
        job.state = "done"
        del self.jobs[job_id]
        self.completed += 1
        actions: list[Action] = []
        if job.spec.client_id:  # empty: the client left; nobody to tell
            actions.append(JobDone(job_id, job.spec.client_id, result) if result is not None
                           else JobFailed(job_id, job.spec.client_id, error or {}))
        return actions + self._slot_freed(dev, now)

    # ---- leases --------------------------------------------------------
    def request_lease(
        self, lease_id: str, client_id: str, key: str, now: float, priority: int = 0, deadline: float | None = None
    ) -> list[Action]:
        if lease_id in self.jobs or lease_id in self.leases:
            raise ValueError(f"duplicate lease id {lease_id}")
        _check_finite(deadline)
        spec = JobSpec(lease_id, key, client_id, priority, deadline)
        job = _Job(spec, next(self._seq), is_lease=True)
        self.jobs[lease_id] = job
        heapq.heappush(self._pending.setdefault(key, []), (*job.sort_key, lease_id))
        if deadline is not None:
            heapq.heappush(self._queue_deadlines, (deadline, lease_id))
        return self._pump(key, now)

    def release_lease(self, lease_id: str, now: float) -> list[Action]:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            pending = self.jobs.get(lease_id)
            if pending is not None and pending.is_lease:  # released before it was granted
                del self.jobs[lease_id]
            return []
        actions = self._fail_jobs(lease.jobs, "JobCancelled", "lease released")
        dev = self.devices.get(lease.device_id)
        if dev is None:
            return actions
        dev.lease_id = None
        if len(dev.running) < dev.capacity:
            self._free.setdefault(dev.key, {})[dev.device_id] = None
        return actions + self._pump(dev.key, now)

    # ---- clients and time ---------------------------------------------
    def client_gone(self, client_id: str, now: float) -> list[Action]:
        """Cancel the client's pending work and leases; running jobs finish unreported."""
        actions: list[Action] = []
        for lease in [le for le in self.leases.values() if le.client_id == client_id]:
            actions += self.release_lease(lease.lease_id, now)
        for job_id, job in list(self.jobs.items()):
            if job.spec.client_id != client_id:
                continue
            if job.state == "pending":
                del self.jobs[job_id]  # lazily skipped in the heaps
            else:
                job.spec = replace(job.spec, client_id="")
        return [a for a in actions if getattr(a, "client_id", None) != client_id]

    def tick(self, now: float) -> list[Action]:
        """Expire queue deadlines, wedged jobs and silent devices."""
        actions: list[Action] = []
        while self._queue_deadlines and self._queue_deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._queue_deadlines)
            job = self.jobs.get(job_id)
            if job is None or job.state != "pending":
                continue
            del self.jobs[job_id]
            n_dev = sum(1 for d in self.devices.values() if d.key == job.spec.key)
            msg = f"waited past its queue deadline for key {job.spec.key!r} ({n_dev} device(s) registered)"
            if job.is_lease:
                actions.append(LeaseFailed(job_id, job.spec.client_id, _err("DeadlineExceeded", "lease " + msg)))
            else:
                actions.append(JobFailed(job_id, job.spec.client_id, _err("DeadlineExceeded", "job " + msg)))
        wedged: set[str] = set()
        while self._run_deadlines and self._run_deadlines[0][0] <= now:
            _, job_id, attempt = heapq.heappop(self._run_deadlines)
            job = self.jobs.get(job_id)
            if job is not None and job.state == "running" and job.attempts == attempt and job.device_id:
                wedged.add(job.device_id)
        for device_id in sorted(wedged):
            actions.append(DropDevice(device_id, "job ran past its run budget"))
            actions += self.remove_device(device_id, now, "job ran past its run budget")
        silent = [d.device_id for d in self.devices.values() if now - d.last_seen > self.heartbeat_timeout]
        for device_id in silent:
            actions.append(DropDevice(device_id, "heartbeat lapsed"))
            actions += self.remove_device(device_id, now, "heartbeat lapsed")
        return actions

    # ---- internals -----------------------------------------------------
    def _start(self, job: _Job, dev: _Device, now: float) -> Dispatch:
        job.state = "running"
        job.device_id = dev.device_id
        job.started = now
        dev.running.add(job.spec.job_id)
        heapq.heappush(self._run_deadlines, (now + job.spec.run_budget_s, job.spec.job_id, job.attempts))
        return Dispatch(dev.device_id, job.spec.job_id)

    def _pump(self, key: str, now: float) -> list[Action]:
        """Hand pending work of ``key`` to its free devices, best first."""
        heap = self._pending.get(key)
        free = self._free.get(key)
        actions: list[Action] = []
        while heap and free:
            job = self.jobs.get(heap[0][2])
            if job is None or job.state != "pending":
                heapq.heappop(heap)  # cancelled or expired: lazy deletion
                continue
            if job.is_lease:
                idle = next((d for d in free if not self.devices[d].running), None)
                if idle is None:
                    break  # the lease waits for a whole device; jobs behind it wait too
                heapq.heappop(heap)
                del self.jobs[job.spec.job_id]
                del free[idle]
                dev = self.devices[idle]
                dev.lease_id = job.spec.job_id
                self.leases[dev.lease_id] = _Lease(dev.lease_id, job.spec.client_id, idle)
                actions.append(LeaseGranted(dev.lease_id, job.spec.client_id, idle))
                continue
            heapq.heappop(heap)
            dev = self.devices[next(iter(free))]
            actions.append(self._start(job, dev, now))
            if len(dev.running) >= dev.capacity:
                del free[dev.device_id]
        return actions

    def _pump_lease(self, lease: _Lease, now: float) -> list[Action]:
        dev = self.devices[lease.device_id]
        actions: list[Action] = []
        while lease.jobs and len(dev.running) < dev.capacity:
            actions.append(self._start(self.jobs[lease.jobs.popleft()], dev, now))
        return actions

    def _slot_freed(self, dev: _Device, now: float) -> list[Action]:
        if dev.lease_id is not None:
            return self._pump_lease(self.leases[dev.lease_id], now)
        self._free.setdefault(dev.key, {})[dev.device_id] = None
        return self._pump(dev.key, now)

    def _fail_jobs(self, job_ids: deque[str], type_: str, message: str) -> list[Action]:
        actions: list[Action] = []
        while job_ids:
            job = self.jobs.pop(job_ids.popleft(), None)
            if job is not None:
                actions.append(JobFailed(job.spec.job_id, job.spec.client_id, _err(type_, message)))
        return actions

    def _break_lease(self, lease_id: str, reason: str) -> list[Action]:
        lease = self.leases.pop(lease_id)
        actions = self._fail_jobs(lease.jobs, "NoSuchLease", f"lease {lease_id} broken: {reason}")
        actions.append(
            LeaseFailed(lease_id, lease.client_id, _err("NoSuchLease", f"lease {lease_id} broken: {reason}"))
        )
        return actions

    # ---- reporting -----------------------------------------------------
    def summary(self, now: float) -> dict[str, Any]:
        """Keys with free/busy/leased/pending counts, and per-device health (``rpc.report``)."""
        from rpc.report import summarize

        return summarize(self, now)
