"""What ``farm query`` shows: a SchedulerQueue summed up per key and per device."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpc.queue import SchedulerQueue


def summarize(q: SchedulerQueue, now: float) -> dict[str, Any]:
    """Keys with free/busy/leased/pending counts, their queues, and per-device health."""
    keys: dict[str, dict[str, int]] = {}
    # per key: jobs in flight (running), leases waiting for a device, pending jobs per priority
    queues: dict[str, dict[str, Any]] = {}

    def queue(key: str) -> dict[str, Any]:
        return queues.setdefault(key, {"running": 0, "lease_requests": 0, "priorities": {}})

    for dev in q.devices.values():
        queue(dev.key)["running"] += len(dev.running)
        k = keys.setdefault(dev.key, {"devices": 0, "free": 0, "busy": 0, "leased": 0, "pending": 0})
        k["devices"] += 1
        if dev.lease_id is not None:
            k["leased"] += 1
        elif dev.running:
            k["busy"] += 1
        else:
            k["free"] += 1
    for job in q.jobs.values():
        if job.state == "pending" and job.spec.lease_id is None:
            keys.setdefault(
                job.spec.key, {"devices": 0, "free": 0, "busy": 0, "leased": 0, "pending": 0}
            )["pending"] += 1  # lease requests included
            kq = queue(job.spec.key)
            if job.is_lease:
                kq["lease_requests"] += 1
            else:
                prio = str(job.spec.priority)  # a JSON key
                kq["priorities"][prio] = kq["priorities"].get(prio, 0) + 1
    devices = []
    for dev in q.devices.values():
        up = max(now - dev.joined, 1e-9)
        running_s = sum(now - q.jobs[j].started for j in dev.running)
        silent = now - dev.last_seen
        devices.append(
            {
                "device_id": dev.device_id,
                "name": dev.name,
                "key": dev.key,
                "state": "leased" if dev.lease_id else ("busy" if dev.running else "free"),
                "health": "ok" if silent <= q.heartbeat_timeout / 2 else "late",
                "last_seen_s": round(silent, 3),
                "running": len(dev.running),
                "capacity": dev.capacity,
                "jobs_done": dev.jobs_done,
                "errors": dev.errors,
                "last_error": dev.last_error,
                "utilization": round(min(1.0, (dev.busy_s + running_s) / (up * dev.capacity)), 4),
                "busy_s": round(dev.busy_s + running_s, 4),  # cumulative: idle shares over any window
                "fingerprint": dev.fingerprint,
            }
        )
    return {"keys": keys, "queues": queues, "devices": devices, "completed": q.completed}
