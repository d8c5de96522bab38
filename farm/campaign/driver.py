"""The campaign driver: tuners propose, Ray builds, the farm measures, the log keeps.

One loop, no threads of its own: it keeps every (workload, device) task's
batch full (builds pipelined ahead of free devices), turns finished builds
into jobs on the tracker, and finished jobs into log records and tuner
observations. A config is planned once and ends in the log exactly once,
measured or with a classified outcome; a rerun on the same log resumes.

Losing the tracker (killed, restarted: its queue is in memory) is not a
measurement outcome: the driver keeps each job's artifact until its result
arrives, re-dials (``link.FarmLink``) and resubmits the jobs whose results
never came, at most ``MAX_RESUBMITS`` times each.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from farm.campaign.baselines import network_sums
from farm.campaign.budget import Allocation
from farm.campaign.config import CampaignSpec
from farm.campaign.idle import IdleMeter
from farm.campaign.link import FarmLink
from farm.campaign.proposer import BackgroundTuner
from farm.campaign.sinks import FileSink, RecordSink
from farm.campaign.tasks import Building, Built, CampaignResult, DeviceFingerprints, InFlight, Retry, Task, TaskSummary
from farm.errors import FarmError, UserKernelError
from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, Outcome
from rpc.client import MAX_OUTAGE_S
from rpc.errors import ConnectionLost, DeadlineExceeded, DeviceLost, JobCancelled, RpcError

log = logging.getLogger(__name__)

class CampaignError(FarmError):
    """The campaign stopped on something that is not a measurement outcome (a bug, a refused job)."""


# What the farm answers when no device measured a job: recorded DEVICE_LOST, the campaign goes on.
_DEVICE_LOSS = (DeadlineExceeded, DeviceLost, JobCancelled)

# Resubmissions of one trial after lost tracker connections before it is
# classified DEVICE_LOST (a tracker that dies on one job would otherwise loop).
MAX_RESUBMITS = 5


class CampaignRunner:
    """Runs one campaign against a farm session; Ray must be initialized."""

    def __init__(
        self,
        spec: CampaignSpec,
        session: Any,
        on_progress: Callable[[list[Task], dict[str, Any]], None] | None = None,
        *,
        reconnect: Callable[[], Any] | None = None,
        max_outage_s: float = MAX_OUTAGE_S,
        sink: RecordSink | None = None,
        exclusive_timing: bool | None = None,
    ) -> None:
        self.spec = spec
        # Builds and timing take turns: a batch is built, then timed with no build
        # running (a device sharing its cores with the builders times kernels
        # against a busy core otherwise: 2-thread kernels measured at ~half speed,
        # at random, which scrambles the ranking the tuner learns from).
        ex = spec.exclusive_timing if spec.exclusive_timing is not None else exclusive_timing
        self.exclusive = bool(ex)
        self.sink: RecordSink = sink or FileSink(spec.log)
        self.idle = IdleMeter(spec.device_keys)
        self.free: dict[str, int] = {}  # free devices per key at the last summary
        self.link = FarmLink(session, reconnect, max_outage_s=max_outage_s)
        self.fleet = DeviceFingerprints(lambda key: self.link.session.client.describe(key))
        self.resubmitted = 0
        self.on_progress = on_progress
        self.tasks: list[Task] = []
        self.alloc: Allocation | None = None  # trials_total: one budget per device key (budget.py)
        self.build_nodes: dict[str, int] = {}
        self.resumed = 0
        self.measured = 0
        self.builds_s = 0.0
        self._idle_s = 0.0
        self._busy_since: float | None = None

    # --- setup -------------------------------------------------------------------
    def _make_tasks(self, records: list[Any]) -> None:
        from farm.client.session import target_of

        for key in self.spec.device_keys:
            devs = self.fleet.load(key)
            if not devs:
                raise FarmError(f"no device is registered under key {key!r}; start one (farm serve / farm devices up)")
            fp = dict(devs[0].get("fingerprint") or {})
            target = self.spec.target or target_of(fp)
            records = self.fleet.set_aside(key, records)  # another machine's records: not this task's trials
            for n, w in enumerate(self.spec.workloads):
                try:
                    task = self._make_task(n, w, key, target, fp, records)
                except UserKernelError as e:
                    # The user's kernel failed before any config ran: say so, tune the other tasks.
                    log.error("%s", e)
                    task = Task(w, key, target, fp, None, None, self.spec.trials, 0.0, finished=True,
                                workload=w.workload, error=str(e), weight=w.weight)
                self.tasks.append(task)
        if self.spec.trials_total:
            self.alloc = Allocation(self.spec, self.tasks, records)

    def _make_task(self, n: int, w: Any, key: str, target: str, fp: dict[str, Any], records: list[Any]) -> Task:
        from farm.tuning.model import TuneContext
        from farm.tuning.search import make_tuner

        wl = w.resolve()
        space = wl.space(w.shape, target)
        wl_hash = wl.compute_hash(w.shape, target)
        ctx = TuneContext(w.name, tuple(w.shape), target, key, fp, self.spec.timing.num_threads)
        tuner = make_tuner(self.spec.tuner, space, seed=self.spec.seed + 7919 * n,
                           context=ctx, early_stopping=self.spec.early_stopping)
        tuner.own_machines = self.fleet.identities(key) or None  # the machines of the key (set_aside's)
        mine = [r for r in records if r.workload == w.name and tuple(r.args) == tuple(w.shape)
                and r.device_key == key and r.workload_hash == wl_hash]
        # Transfer learns from other shapes and devices of the same operator, never from another
        # kernel that happens to share its name.
        hist = [r for r in records if r.workload == w.name and r.workload_hash == wl_hash] \
            if self.spec.transfer else mine
        own = tuner.load_history(hist) if hist else 0
        task = Task(w, key, target, fp, space, tuner, self.spec.trials_total or self.spec.trials, wl.flops(w.shape),
                    done_trials=own, workload=wl, wl_hash=wl_hash, weight=w.weight)
        self.resumed += own
        for r in mine:
            self._note(task, space.locate(r.config_index, r.knobs), r.gflops if r.ok else 0.0, r.ok,
                       r.median_s if r.ok else None, bool(r.checked))
        if 0 not in tuner.visited:
            tuner.visited.add(0)  # the template default is measured first: it is the speedup baseline
            task.pending.append(0)
        return task

    def _note(self, task: Task, index: int, gflops: float, ok: bool, median_s: float | None = None,
              checked: bool = False) -> None:
        if index == 0 and ok:
            task.default_gflops, task.default_s = gflops, median_s
        if not ok:
            task.errors += 1
        elif checked:
            task.checked += 1
        # By time: a kernel without arithmetic (0 GFLOPS) has a best config too.
        if ok and median_s is not None and (task.best_s is None or median_s < task.best_s):
            task.best_s, task.best_gflops, task.best_index = median_s, gflops, index
        task.history.append((len(task.history) + 1, task.best_gflops))

    # --- the loop ------------------------------------------------------------------
    def run(self) -> CampaignResult:
        from farm.campaign.builds import remote_build

        t_start = self._t0 = time.monotonic()
        self._make_tasks(self.sink.load())
        # Proposals (model refit + search) run on one worker thread so the loop keeps devices fed.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf-propose")
        for t in self.tasks:
            if t.tuner is not None:
                t.tuner = BackgroundTuner(t.tuner, pool)
        build = remote_build()
        last_flush = last_progress = time.monotonic()
        pending_records: list[Any] = []
        with self.sink.open() as writer:
            try:
                while True:
                    active = [t for t in self.tasks if not self._task_done(t)]
                    if not active:
                        break
                    progressed = False
                    if not self._timing_phase():
                        if self.alloc is not None:
                            self.alloc.grant(self.tasks, self.free)
                        for t in active:
                            self._fill(t, build)
                    progressed |= self._collect_builds(pending_records)
                    progressed |= self._release_held(pending_records)
                    progressed |= self._collect_jobs(pending_records)
                    progressed |= self._resubmit(pending_records)
                    self.link.watch(any(t.jobs for t in self.tasks), progressed)
                    now = time.monotonic()
                    self._account_idle(now)
                    if pending_records and (len(pending_records) >= self.spec.batch_size or now - last_flush > 1.0):
                        writer.append(pending_records)
                        pending_records = []
                        last_flush = now
                    if self.on_progress and now - last_progress > 0.5:
                        self.on_progress(self.tasks, self._devices())
                        last_progress = now
                    if not progressed:
                        time.sleep(0.01)
            except (FarmError, KeyboardInterrupt):
                raise
            except Exception as e:
                # A bug in the driver or the tuner is no measurement: stop, and log nothing false.
                raise CampaignError(f"campaign {self.spec.name} stopped: {type(e).__name__}: {e}") from e
            finally:
                # Also on an abort (outage limit, Ctrl-C): what was measured stays measured.
                if pending_records:
                    writer.append(pending_records)
                self.link.close()
                pool.shutdown(wait=False, cancel_futures=True)
        if self.on_progress:
            self.on_progress(self.tasks, self._devices())
        wall = time.monotonic() - t_start
        self.idle.sample(wall, self._devices())
        idle = self.idle.fraction()
        summaries = [self._summary(t) for t in self.tasks]
        return CampaignResult(
            self.spec.name, self.spec.log, summaries, wall, self.measured, self.resumed,
            dict(self.build_nodes), (self._idle_s / wall if wall > 0 else 0.0) if idle is None else idle,
            self.builds_s, self.resubmitted, self.link.reconnects, self.idle.timeline,
            self.alloc.summary() if self.alloc else {}, network_sums(self.spec, summaries))

    def _timing_phase(self) -> bool:
        """Exclusive timing: devices are timing (or about to): start no build now."""
        return self.exclusive and any(t.jobs or t.held or t.resubmit for t in self.tasks)

    def _release_held(self, out: list[Any]) -> bool:
        """Exclusive timing: once no build (nor model refit) runs, send the built batch to the devices."""
        if not self.exclusive or any(t.builds or (t.tuner is not None and t.tuner.computing) for t in self.tasks):
            return False
        sent = False
        for t in self.tasks:
            for idx, built in list(t.held.items()):
                del t.held[idx]
                self._submit(t, idx, built, 0, out)
                sent = True
        return sent

    def _task_done(self, t: Task) -> bool:
        if t.in_flight:
            if self.alloc is None or t.in_flight > len(t.pending) or not self.alloc.finished(t):
                return False
            t.pending.clear()  # proposed, never granted: its key's budget is spent
        spent = t.done_trials >= t.budget if self.alloc is None else self.alloc.finished(t)
        if t.error or spent or t.tuner.done:
            t.finished = True
        return t.finished

    def _fill(self, t: Task, build: Any) -> None:
        if t.error:  # what is in flight still lands in the log; nothing new starts
            return
        # Pipeline depth: a batch, plus one per device now free, so a grown fleet is kept fed.
        depth = self.spec.batch_size + self.free.get(t.key, 0)
        limit = t.budget if self.alloc is None else self.alloc.limit(t)  # trials_total: what it was granted
        left = limit - t.done_trials - t.in_flight
        # A proposal refits the model: ask for half a batch at a time, not one config per finished job.
        room, chunk = min(depth - t.in_flight, left), min(max(1, self.spec.batch_size // 2), left)
        if room > 0 and room >= chunk and not t.tuner.done:
            t.pending.extend(t.tuner.propose(room))
        n = max(0, limit - t.done_trials - (t.in_flight - len(t.pending)))  # the default waits for a grant
        for idx in t.pending[:n]:
            ref = build.remote(t.workload.ref(), list(t.wl.shape), idx, t.target)
            t.builds[ref] = Building(idx, time.monotonic())
        del t.pending[:n]

    def _collect_builds(self, out: list[Any]) -> bool:
        import ray

        refs = [r for t in self.tasks for r in t.builds]
        if not refs:
            return False
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        progressed = False
        now = time.monotonic()
        for t in self.tasks:
            for ref, building in list(t.builds.items()):
                idx, started = building.index, building.started
                if ref in done:
                    del t.builds[ref]
                    progressed = True
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a crashed build worker (e.g. LLVM abort)
                        res = {
                            "ok": False,
                            "outcome": "COMPILE_ERROR",
                            "message": f"build worker died: {type(e).__name__}: {e}",
                            "build_s": now - started,
                            "node": "",
                        }
                    self._built(t, idx, res, out)
                elif now - started > self.spec.build_timeout_s:
                    del t.builds[ref]
                    ray.cancel(ref, force=True)
                    progressed = True
                    self._record(t, idx, MeasureResult.error(Outcome.BUILD_TIMEOUT,
                                 f"build took longer than {self.spec.build_timeout_s:g}s", flops=t.flops),
                                 self.spec.build_timeout_s, out)
        return progressed

    def _built(self, t: Task, idx: int, res: dict[str, Any], out: list[Any]) -> None:
        node = str(res.get("node") or "local")
        self.build_nodes[node] = self.build_nodes.get(node, 0) + 1
        self.builds_s += float(res.get("build_s", 0.0))
        if not res.get("ok"):
            self._record(t, idx, MeasureResult.error(Outcome(res["outcome"]), str(res["message"]), flops=t.flops),
                         float(res.get("build_s", 0.0)), out)
            return
        try:
            art = Artifact.from_header(res["header"], res["code"])
        except Exception as e:  # noqa: BLE001 - a build that produced an unloadable artifact
            self._record(t, idx, MeasureResult.error(Outcome.COMPILE_ERROR, f"bad artifact: {type(e).__name__}: {e}",
                                                     flops=t.flops), float(res["build_s"]), out)
            return
        if not self._with_reference(t, art):
            return
        built = Built(art.with_reference(t.reference), float(res["build_s"]))
        if self.exclusive:
            t.held[idx] = built
            return
        self._submit(t, idx, built, 0, out)

    def _with_reference(self, t: Task, art: Artifact) -> bool:
        """Build the task's reference once, from its first artifact; False if the task cannot be checked."""
        from farm.client.reference import workload_reference

        t.nbytes = t.nbytes or sum(a.nbytes for a in art.args)
        if t.error:
            return False
        if t.reference is not None or t.workload.builtin or not self.spec.timing.check:
            return True
        try:
            t.reference = workload_reference(t.workload, t.wl.shape, art, t.target, self.spec.timing)
        except FarmError as e:
            log.error("%s: %s", t.name, e)
            t.error, t.finished = str(e), True
            t.pending.clear()
            return False
        return True

    def _submit(self, t: Task, idx: int, built: Built, tries: int, out: list[Any]) -> None:
        if self.link.broken:
            t.resubmit[idx] = Retry(built, tries)
            return
        gen = self.link.gen
        try:
            job = self.link.session.submit(built.artifact, key=t.key, options=self.spec.timing,
                                           priority=self.spec.priority, reference=t.reference)
        except ConnectionLost as e:  # the tracker went away: submit again once it is back
            self.link.lost(gen, e)
            t.resubmit[idx] = Retry(built, tries)
            return
        except _DEVICE_LOSS as e:
            self._record(t, idx, MeasureResult.error(Outcome.DEVICE_LOST, f"submit failed: {type(e).__name__}: {e}",
                                                     flops=t.flops), built.build_s, out)
            return
        except RpcError as e:  # the farm refused the job: a misconfiguration or a bug, not a measurement
            raise CampaignError(f"{t.name}: the farm refused config {idx}: {type(e).__name__}: {e}") from e
        t.jobs[idx] = InFlight(job, built, tries, gen)

    def _resubmit(self, out: list[Any]) -> bool:
        """Submit again the jobs whose results a lost tracker connection took with it."""
        if not any(t.resubmit for t in self.tasks) or not self.link.restore():
            return False
        for t in self.tasks:
            for idx, retry in list(t.resubmit.items()):
                if self.link.broken:
                    return True
                del t.resubmit[idx]
                self.resubmitted += 1
                self._submit(t, idx, retry.built, retry.tries, out)
        return True

    def _collect_jobs(self, out: list[Any]) -> bool:
        progressed = False
        for t in self.tasks:
            for idx, fl in list(t.jobs.items()):
                if not fl.job.done():
                    continue
                del t.jobs[idx]
                progressed = True
                try:
                    result = fl.job.result(0)
                except ConnectionLost as e:
                    # No result came and the tracker forgot the job: run it again, boundedly.
                    self.link.lost(fl.gen, e)
                    if fl.tries < MAX_RESUBMITS:
                        t.resubmit[idx] = Retry(fl.built, fl.tries + 1)
                        continue
                    result = MeasureResult.error(Outcome.DEVICE_LOST,
                                                 f"tracker connection lost {fl.tries + 1} times: {e}", flops=t.flops)
                except _DEVICE_LOSS as e:  # no device took it in time, or devices kept vanishing under it
                    result = MeasureResult.error(Outcome.DEVICE_LOST, f"{type(e).__name__}: {e}", flops=t.flops)
                except Exception as e:
                    # Anything else is a bug (ours or the tuner's), not a measurement: stop, log nothing false.
                    raise CampaignError(f"{t.name}: collecting config {idx} failed: {type(e).__name__}: {e}") from e
                self._record(t, idx, result, fl.built.build_s, out)
        return progressed

    def _record(self, t: Task, idx: int, result: MeasureResult, build_s: float, out: list[Any]) -> None:
        from farm.log import LogRecord

        cfg = t.space.get(idx)
        device = str(result.extra.get("device") or "")  # the server that measured it (rpc.server)
        out.append(LogRecord.from_measurement(
            workload=t.wl.name, args=t.wl.shape, target=t.target, config=cfg, result=result,
            options=self.spec.timing, device_key=t.key, fingerprint=self.fleet.measured_by(t, device), build_s=build_s,
            campaign=self.spec.name, task=t.name, workload_hash=t.wl_hash, nbytes=t.nbytes, device_name=device))
        g = result.gflops if result.ok else 0.0
        # The tuner maximizes a score: GFLOPS, or for a kernel without arithmetic, calls per second.
        score = g if t.flops > 0 or not result.ok else 1e-9 / max(result.median_s, 1e-12)
        t.tuner.observe([(idx, score)])
        t.done_trials += 1
        if self.alloc is not None:
            self.alloc.observe(t, result)
        self.measured += 1
        self._note(t, idx, g, result.ok, result.median_s if result.ok else None, result.checked)
        if not result.ok:
            log.info("%s config %d: %s %s", t.name, idx, result.outcome.value, result.message[:200])

    def _account_idle(self, now: float) -> None:
        if now - getattr(self, "_last_sample", 0.0) >= 0.5:  # the tracker's counters (idle.py)
            self._last_sample = now
            summary = self._devices()
            self.idle.sample(now - self._t0, summary)
            self.free = {k: int(v.get("free", 0)) for k, v in (summary.get("keys") or {}).items()}
        busy = any(t.jobs for t in self.tasks)  # the driver's own view: the fallback
        if not hasattr(self, "_last_tick"):
            self._last_tick = now
        if not busy:
            self._idle_s += now - self._last_tick
        self._last_tick = now

    def _devices(self) -> dict[str, Any]:
        try:
            return dict(self.link.session.summary()) if not self.link.broken else {}
        except Exception:  # noqa: BLE001 - progress only
            return {}

    def _summary(self, t: Task) -> TaskSummary:
        gbps = t.nbytes / t.best_s / 1e9 if t.best_s and t.nbytes else 0.0
        return TaskSummary(t.name, t.wl.name, t.wl.shape, t.key, t.done_trials, t.errors, t.best_gflops,
                           t.best_index, t.default_gflops, t.wl_hash, t.best_s, t.default_s, gbps, t.checked,
                           t.error or (self.alloc.note(t) if self.alloc else ""), t.weight)
