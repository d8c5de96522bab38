"""What the live page (``rpc.web``) shows that the scheduler does not keep.

The queue (``rpc.queue``) forgets a device the moment it is lost and keeps no outcomes; the
page must show a lost device as lost for a while, errors per outcome (per device, per
campaign, in all), the recent failures with their message and device, and the campaigns
that report to this tracker. ``FarmView`` keeps exactly that, bounded, fed by the tracker
(``rpc.tracker``) from the same synchronous code that drives the queue:

* a **tombstone** per lost device (by key and name, so a device that comes back replaces
  its own), kept ``tombstone_s`` (an hour; at least ten minutes is promised) and at most
  ``MAX_TOMBSTONES``;
* **counts per outcome** of every result that is not OK, and of every job a device refused;
* the last ``MAX_FAILURES`` **failures**: outcome, message, device, key, campaign;
* **campaigns**, as their last ``campaign_report`` (each report is whole: after a tracker
  restart the next report restores everything the page shows). Their errors by outcome are
  the tracker's own counts of the jobs their connections submitted.

No I/O and no clock of its own: every call carries ``now`` (``time.monotonic()``); wall
times for display come from ``time.time()`` when something happens.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from rpc.queue import Action, DropDevice, JobDone

TOMBSTONE_S = 3600.0
MAX_TOMBSTONES = 1000
MAX_FAILURES = 200
SUMMARY_FAILURES = 20  # in `farm query --json` / /api/summary
MAX_CAMPAIGNS = 32
CAMPAIGN_KEEP_S = 3600.0  # a finished or vanished campaign stays on the page this long
MESSAGE_CHARS = 300
LOST = "DEVICE_LOST"


def fingerprint_summary(fp: dict[str, Any]) -> dict[str, Any]:
    """CPU or GPU, ISA, model, emulated, cores: one line of the devices table."""
    gpu = fp.get("kind") == "cuda" or "gpu_name" in fp
    model = fp.get("gpu_name") if gpu else (fp.get("cpu_model") or fp.get("cpu_name") or fp.get("cpu"))
    isa = fp.get("isa") or str(fp.get("triple") or "").split("-")[0]
    return {"kind": "GPU" if gpu else "CPU", "isa": str(isa or "?")[:40], "model": str(model or "?")[:120],
            "emulated": bool(fp.get("emulated", False)), "cores": fp.get("sm_count" if gpu else "cores")}


@dataclass
class Tombstone:
    device_id: str
    name: str
    key: str
    fingerprint: dict[str, Any]
    jobs_done: int
    errors: dict[str, int]
    reason: str
    lost_at: float  # monotonic
    lost_wall: float
    silent_s: float  # how long it had been silent when it was declared lost

    def to_json(self, now: float) -> dict[str, Any]:
        return {"device_id": self.device_id, "name": self.name, "key": self.key, "state": "lost",
                "reason": self.reason, "lost_s": round(now - self.lost_at, 1), "lost_at": self.lost_wall,
                "last_seen_s": round(now - self.lost_at + self.silent_s, 1), "jobs_done": self.jobs_done,
                "errors_by_outcome": dict(self.errors), "fingerprint_summary": fingerprint_summary(self.fingerprint)}


@dataclass
class Campaign:
    name: str
    run: str = ""
    host: str = ""
    peer: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    elapsed_s: float | None = None
    clients: set[str] = field(default_factory=set)  # its connections still open
    errors: Counter[str] = field(default_factory=Counter)
    first_wall: float = 0.0
    last_report: float = 0.0
    gone_at: float | None = None  # when its last connection closed
    reports: int = 0

    def state(self) -> str:
        return "finished" if self.finished else ("running" if self.clients else "disconnected")

    def brief(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "state": self.state(), "host": self.host, "task_count": len(self.tasks),
                "trials_done": sum(t.get("done", 0) for t in self.tasks),
                "budget": sum(t.get("budget", 0) for t in self.tasks),
                "last_report_s": round(now - self.last_report, 1), "version": self.reports}

    def to_json(self, now: float) -> dict[str, Any]:
        tasks = [{k: v for k, v in t.items() if k != "curve"} | {"points": len(t.get("curve", ()))}
                 for t in self.tasks]
        return self.brief(now) | {
            "run": self.run, "peer": self.peer, "first_report_at": self.first_wall, "reports": self.reports,
            "elapsed_s": self.elapsed_s, "errors": sum(t.get("errors", 0) for t in self.tasks),
            "errors_by_outcome": dict(self.errors),
            "best_gflops": max((t.get("best_gflops", 0.0) for t in self.tasks), default=0.0), "tasks": tasks}


class FarmView:
    """Tombstones, outcome counts, recent failures and campaign reports (see the module doc)."""

    def __init__(self, tombstone_s: float = TOMBSTONE_S) -> None:
        self.tombstone_s = tombstone_s
        self.live: dict[str, Any] = {}  # device id -> the scheduler's record of it (rpc.queue._Device)
        self.device_errors: dict[str, Counter[str]] = {}
        self.errors: Counter[str] = Counter()
        self.failures: deque[dict[str, Any]] = deque(maxlen=MAX_FAILURES)
        self.tombstones: OrderedDict[tuple[str, str], Tombstone] = OrderedDict()  # oldest loss first
        self.campaigns: dict[str, Campaign] = {}
        self.client_campaign: dict[str, str] = {}
        self.client_errors: dict[str, Counter[str]] = {}  # clients that have not reported a campaign (yet)

    # ---- devices ---------------------------------------------------------------------------
    def device_joined(self, device_id: str, dev: Any) -> None:
        self.live[device_id] = dev
        self.tombstones.pop((dev.key, dev.name), None)  # it is back: no longer lost

    def result(self, device_id: str, client_id: str, outcome: str, message: str) -> None:
        """A device ended a job (``outcome``: an Outcome name, or the error type of a refusal)."""
        if outcome == "OK":
            return
        dev = self.live.get(device_id)
        self._count(device_id, client_id, outcome)
        self._fail(outcome, message, dev.name if dev is not None else device_id, dev.key if dev is not None else "",
                   client_id)

    def lost(self, actions: list[Action], now: float) -> None:
        """Tombstones for the devices ``actions`` drop (the scheduler's tick: heartbeat, run budget)."""
        for a in actions:
            if isinstance(a, DropDevice):
                self.device_lost(a.device_id, a.reason, actions, now)

    def device_lost(self, device_id: str, reason: str, actions: list[Action], now: float) -> None:
        """The device is gone; ``actions`` are what removing it produced (its jobs' DEVICE_LOST results)."""
        dev = self.live.get(device_id)
        if dev is None:
            return  # already buried (dropped by the tick, then its connection closed)
        for a in actions:  # the jobs it was running that ran out of retries
            if isinstance(a, JobDone) and a.job_id in dev.running and a.result.get("outcome") == LOST:
                self._count(device_id, a.client_id, LOST)
                self._fail(LOST, str(a.result.get("message", "")), dev.name, dev.key, a.client_id)
        del self.live[device_id]
        key = (dev.key, dev.name)
        self.tombstones.pop(key, None)
        self.tombstones[key] = Tombstone(device_id, dev.name, dev.key, dev.fingerprint, dev.jobs_done,
                                         dict(self.device_errors.pop(device_id, {})), reason[:MESSAGE_CHARS], now,
                                         time.time(), max(0.0, now - dev.last_seen))
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)

    def _count(self, device_id: str, client_id: str, outcome: str) -> None:
        self.errors[outcome] += 1
        if device_id in self.live:
            self.device_errors.setdefault(device_id, Counter())[outcome] += 1
        name = self.client_campaign.get(client_id)
        if name is not None and name in self.campaigns:
            self.campaigns[name].errors[outcome] += 1
        elif client_id:
            self.client_errors.setdefault(client_id, Counter())[outcome] += 1

    def _fail(self, outcome: str, message: str, device: str, key: str, client_id: str) -> None:
        self.failures.append({"at": time.time(), "outcome": outcome, "message": message[:MESSAGE_CHARS],
                              "device": device, "key": key, "campaign": self.client_campaign.get(client_id, "")})

    # ---- campaigns -------------------------------------------------------------------------
    def campaign_report(self, client_id: str, h: dict[str, Any], peer: str, now: float) -> None:
        """A campaign's whole state (a checked ``campaign_report``: rpc.fields), replacing the last."""
        tasks = []
        for i, t in enumerate(h["tasks"]):
            curve = t.get("curve", [])
            for j, p in enumerate(curve):
                if len(p) != 2:
                    raise ValueError(f"campaign_report: tasks[{i}].curve[{j}] must be [trial, gflops]")
            tasks.append(dict(t, curve=[(p[0], p[1]) for p in curve]))
        name = h["name"]
        c = self.campaigns.get(name)
        if c is None:
            self._prune_campaigns(now, room_for_one=True)
            c = self.campaigns[name] = Campaign(name, first_wall=time.time())
        if client_id not in c.clients and client_id in self.client_errors:  # results before its first report
            c.errors.update(self.client_errors.pop(client_id))
        c.clients.add(client_id)
        self.client_campaign[client_id] = name
        c.run, c.host, c.peer, c.tasks = h.get("run", ""), h.get("host", ""), peer, tasks
        c.finished, c.elapsed_s = bool(h.get("finished")), h.get("elapsed_s")
        c.last_report, c.gone_at = now, None
        c.reports += 1

    def client_gone(self, client_id: str, now: float) -> None:
        self.client_errors.pop(client_id, None)
        name = self.client_campaign.pop(client_id, None)
        c = self.campaigns.get(name) if name is not None else None
        if c is not None:
            c.clients.discard(client_id)
            if not c.clients:
                c.gone_at = now

    def _prune_campaigns(self, now: float, room_for_one: bool = False) -> None:
        for c in [c for c in self.campaigns.values() if c.gone_at is not None and now - c.gone_at > CAMPAIGN_KEEP_S]:
            del self.campaigns[c.name]
        while len(self.campaigns) >= MAX_CAMPAIGNS + (0 if room_for_one else 1):
            # the longest-silent campaign leaves first (a running one only when all 32 are running)
            oldest = min(self.campaigns.values(), key=lambda c: (bool(c.clients), c.last_report))
            for client_id in oldest.clients:
                self.client_campaign.pop(client_id, None)
            del self.campaigns[oldest.name]

    # ---- what the page and `farm query --json` read ----------------------------------------
    def prune(self, now: float) -> None:
        while self.tombstones:
            first = next(iter(self.tombstones.values()))
            if now - first.lost_at <= self.tombstone_s:
                break
            self.tombstones.popitem(last=False)
        self._prune_campaigns(now)

    def extend_summary(self, s: dict[str, Any], now: float) -> dict[str, Any]:
        """The scheduler's summary (rpc.report) plus lost devices, outcomes, failures, campaigns."""
        self.prune(now)
        for d in s["devices"]:
            d["errors_by_outcome"] = dict(self.device_errors.get(d["device_id"], {}))
        s["lost"] = [t.to_json(now) for t in self.tombstones.values()]
        s["errors_by_outcome"] = dict(self.errors)
        s["failures"] = list(self.failures)[-SUMMARY_FAILURES:][::-1]
        s["campaigns"] = [c.brief(now) for c in self.campaigns.values()]
        return s

    def devices_json(self, summary: dict[str, Any], now: float) -> dict[str, Any]:
        """``/api/devices``: live and lost devices, with a fingerprint summary instead of the fingerprint."""
        devices = [{k: v for k, v in d.items() if k != "fingerprint"}
                   | {"fingerprint_summary": fingerprint_summary(d.get("fingerprint") or {})}
                   for d in summary["devices"]]
        devices += summary["lost"]
        devices.sort(key=lambda d: (d["key"], d["name"], d["state"] == "lost"))
        return {"devices": devices, "keys": summary["keys"], "queues": summary["queues"]}

    def campaigns_json(self, now: float) -> dict[str, Any]:
        self._prune_campaigns(now)
        return {"campaigns": [c.to_json(now) for c in sorted(self.campaigns.values(), key=lambda c: c.first_wall)]}

    def curve_json(self, name: str) -> dict[str, Any] | None:
        c = self.campaigns.get(name)
        if c is None:
            return None
        return {"campaign": name, "version": c.reports,
                "tasks": [{"task": t["task"], "budget": t.get("budget", 0), "best_gflops": t.get("best_gflops", 0.0),
                           "points": [list(p) for p in t["curve"]]} for t in c.tasks]}
