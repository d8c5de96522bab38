"""Timing kernels on remote devices from a laptop: ``farm.connect("host:port")``.

    with farm.connect("head:9190") as farm_:
        r = farm_.measure(s, [A, B, C], key="rpi4")      # builds here, times there
        print(r.outcome, r.median_s, r.gflops, r.costs)

The kernel is built on this machine for the target the device registered
(its fingerprint), uploaded once per content hash, queued on the device key,
and timed natively on the device. A tracker that restarts under a session is
re-dialled (jittered backoff, up to ``max_outage_s``, default
``rpc.client.MAX_OUTAGE_S``) and jobs whose results never came are resubmitted;
a lease does not survive that (``Lease.lost`` says why). Failures of the farm
(no device, deadline, an outage past the bound, bad token) raise typed
``rpc.errors`` exceptions; a tracker unreachable at ``connect`` fails at once. A kernel
that crashes, hangs or computes a wrong answer comes back as a MeasureResult
with that outcome, or, with ``strict=True``, raises ``KernelCrashed``,
``KernelHung``, ``WrongAnswer``...

Like the CLI, this is an edge: when no token is passed it reads FARM_TOKEN.
"""
from __future__ import annotations

import concurrent.futures
import ssl
from collections.abc import Sequence
from typing import Any

from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, Outcome, RunOptions
from rpc.client import MAX_OUTAGE_S, Client
from rpc.errors import DeadlineExceeded, NoSuchLease, RpcError, failure_for


def connect(
    address: str, *, token: bytes | str | None = None, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0,
    max_outage_s: float = MAX_OUTAGE_S,
) -> Session:
    """Open an authenticated session with a tracker (token: argument, else $FARM_TOKEN).

    ``timeout`` bounds the first dial, handshake included. ``max_outage_s`` bounds how long a
    tracker that went away later is re-dialled; 0 turns re-dialling off (a caller that re-dials
    by itself, like the campaign driver)."""
    from rpc.auth import load_token

    tok = token.encode() if isinstance(token, str) else token
    return Session(Client(address, tok if tok else load_token(), ssl_context=ssl_context, timeout=timeout,
                          max_outage_s=max_outage_s))


def _result(d: dict[str, Any], strict: bool) -> MeasureResult:
    result = MeasureResult.from_json(d)
    if strict and result.outcome is not Outcome.OK:
        raise failure_for(result.outcome, result.message, result)
    return result


class Job:
    """A submitted measurement; ``result()`` blocks until the device answers."""

    def __init__(self, session: Session, job_id: str, strict: bool) -> None:
        self.job_id = job_id
        self._future: concurrent.futures.Future[dict[str, Any]] = session.client.result_future(job_id)
        self._strict = strict

    def result(self, timeout: float | None = None) -> MeasureResult:
        try:
            d = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self._future.done():  # the remote DeadlineExceeded (also a TimeoutError)
                raise
            raise DeadlineExceeded(f"job {self.job_id} has no result after {timeout}s") from None
        return _result(d, self._strict)

    def done(self) -> bool:
        return self._future.done()


class Session:
    """A connection to a tracker: submit, measure, lease devices, summarize."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._targets: dict[str, str] = {}

    # ---- building ------------------------------------------------------
    def target(self, key: str) -> str:
        """The target string to build for ``key``, from a registered device's fingerprint."""
        if key not in self._targets:
            devices = self.client.describe(key)
            if not devices:
                raise RpcError(f"no device is registered under key {key!r} (see `farm query`)")
            self._targets[key] = target_of(devices[0].get("fingerprint", {}))
        return self._targets[key]

    def _artifact(self, kernel: Any, args: Sequence[Any] | None, key: str,
                  options: RunOptions) -> tuple[Artifact, Artifact | None]:
        """The artifact to run and the reference it is checked against (None: a built-in's, known
        to devices by name, or none). A te kernel gets its naive schedule as the reference."""
        from farm.client.reference import schedule_reference

        if isinstance(kernel, Artifact):
            return kernel, None
        if hasattr(kernel, "artifact") and isinstance(kernel.artifact, Artifact):
            art = kernel.artifact  # an already built module
            if args is None or (art.workload and not art.workload.get("hash")):
                return art, None
            ref = schedule_reference(list(args), art, art.target, options)
            return art.with_reference(ref), ref
        from farm import build

        if args is None:
            raise ValueError("measure(schedule, args, key=...) needs the argument tensors")
        target = self.target(key)
        art = build(kernel, list(args), target=target).artifact
        # Any te kernel is checked on the device: against the naive schedule of the same compute.
        ref = schedule_reference(list(args), art, target, options)
        return art.with_reference(ref), ref

    # ---- jobs ----------------------------------------------------------
    def submit(
        self,
        kernel: Any,
        args: Sequence[Any] | None = None,
        *,
        key: str,
        options: RunOptions | None = None,
        priority: int = 0,
        queue_timeout_s: float | None = None,
        strict: bool = False,
        reference: Artifact | None = None,
        _lease_id: str | None = None,
    ) -> Job:
        """Queue one measurement (a schedule, a built module or an Artifact) on ``key``.

        A schedule (or a module built from one, with ``args``) is checked on the device against
        the naive schedule of its compute. ``reference``: for an Artifact that names one
        (``Artifact.with_reference``), the reference artifact itself, uploaded once."""
        opts = options or RunOptions()
        art, ref = self._artifact(kernel, args, key, opts)
        ref = ref or reference
        if art.reference is not None and (ref is None or ref.hash != art.reference["hash"]):
            raise ValueError("the artifact names a reference: pass that artifact as reference=")
        job_id = self.client.submit(
            art.header(), art.code, key, opts.to_json(),
            priority=priority, queue_timeout_s=queue_timeout_s, lease_id=_lease_id,
            reference=(ref.header(), ref.code) if ref is not None and art.reference is not None else None,
        )
        return Job(self, job_id, strict)

    def measure(self, kernel: Any, args: Sequence[Any] | None = None, *, key: str, options: RunOptions | None = None,
                priority: int = 0, queue_timeout_s: float | None = None, strict: bool = False,
                reference: Artifact | None = None) -> MeasureResult:
        """Build (if needed), time on a device of ``key``, and return the result."""
        return self.submit(kernel, args, key=key, options=options, priority=priority,
                           queue_timeout_s=queue_timeout_s, strict=strict, reference=reference).result()

    @property
    def reconnects(self) -> int:
        """How many times this session re-dialled a tracker that went away."""
        return self.client.reconnects

    def lease(self, key: str, *, queue_timeout_s: float | None = None, priority: int = 0) -> Lease:
        """Hold one device of ``key`` exclusively until the lease is released (a context manager)."""
        granted = self.client.lease(key, queue_timeout_s=queue_timeout_s, priority=priority)
        return Lease(self, key, granted["lease_id"], granted["device"])

    def summary(self) -> dict[str, Any]:
        return self.client.summary()

    # ---- the farm's shared log (a tracker started with --log) ------------
    def log_append(self, records: Sequence[Any]) -> int:
        """Append LogRecords (or their JSON) to the tracker's shared log as one batch."""
        batch = [r.to_json() if hasattr(r, "to_json") else dict(r) for r in records]
        if not batch:
            return 0
        return int(self.client.call("log_append", records=batch)["appended"])

    def log_query(self, kind: str, *, workload: str | None = None, device: str | None = None,
                  args: Sequence[int] | None = None, k: int | None = None,
                  exclude_device: str | None = None) -> Any:
        """Query the shared log. ``best`` → LogRecord | None; ``top_k`` and ``records`` →
        list[LogRecord]; ``history`` → {device key: [LogRecord]}; ``measured`` → set of indices."""
        from farm.log import LogRecord

        fields: dict[str, Any] = {"kind": kind}
        for name, val in (("workload", workload), ("device", device), ("k", k), ("exclude_device", exclude_device)):
            if val is not None:
                fields[name] = val
        if args is not None:
            fields["args"] = [int(a) for a in args]
        reply = self.client.call("log_query", **fields)
        if kind == "history":
            return {dev: [LogRecord.from_json(d) for d in rs] for dev, rs in reply["history"].items()}
        if kind == "measured":
            return set(reply["indices"])
        recs = [LogRecord.from_json(d) for d in reply["records"]]
        if kind == "best":
            return recs[0] if recs else None
        return recs

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lease:
    """An exclusive hold on one device; jobs submitted through it run only there."""

    def __init__(self, session: Session, key: str, lease_id: str, device: dict[str, Any]) -> None:
        self.session, self.key, self.lease_id, self.device = session, key, lease_id, device

    @property
    def lost(self) -> str | None:
        """Why the lease was lost (its device went away, or the tracker connection did), or None.

        A lost lease is never re-acquired behind your back: another client may hold the device now."""
        return self.session.client.lost_leases.get(self.lease_id)

    def _check(self) -> None:
        why = self.lost
        if why is not None:
            raise NoSuchLease(f"lease {self.lease_id} on {self.device.get('name', self.key)} was lost: {why}")

    def submit(self, kernel: Any, args: Sequence[Any] | None = None, **kw: Any) -> Job:
        self._check()
        return self.session.submit(kernel, args, key=self.key, _lease_id=self.lease_id, **kw)

    def measure(self, kernel: Any, args: Sequence[Any] | None = None, **kw: Any) -> MeasureResult:
        return self.submit(kernel, args, **kw).result()

    def release(self) -> None:
        self.session.client.release(self.lease_id)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        except RpcError:
            pass  # already broken (device lost) or connection gone


def target_of(fingerprint: dict[str, Any]) -> str:
    """Target string for a device fingerprint: its ``target`` if it names one, else
    ``llvm -mtriple -mcpu -mattr`` from the triple, CPU name and enabled features
    (``devices.fingerprint`` records ``cpu_name`` and a list of ``cpu_features``)."""
    if isinstance(fingerprint.get("target"), str):
        return str(fingerprint["target"])
    parts = ["llvm"]
    cpu = fingerprint.get("cpu_name") or fingerprint.get("cpu")
    feats = fingerprint.get("cpu_features", fingerprint.get("features"))
    if isinstance(feats, (list, tuple)):
        feats = ",".join(f if f[:1] in "+-" else f"+{f}" for f in feats)
    for flag, value in (("-mtriple", fingerprint.get("triple")), ("-mcpu", cpu), ("-mattr", feats)):
        if value:
            parts.append(f"{flag}={value}")
    return " ".join(parts)


def workload_job(kernel: str, shape: Sequence[int], config: Any, target: str,
                 options: RunOptions | None = None) -> tuple[Artifact, Artifact | None]:
    """Build one configuration of a workload (a built-in name, or a user kernel as FILE.py:function
    or module:function) for ``target``: the artifact, bound to the reference a device checks a user
    kernel against, and that reference (None for a built-in)."""
    from farm.client.reference import workload_reference
    from farm.workloads.loader import load_kernel
    from farm.workloads.registry import build_workload

    wl = load_kernel(kernel)
    artifact: Artifact = build_workload(wl, list(shape), config if config is not None else "default", target).artifact
    ref = workload_reference(wl, list(shape), artifact, target, options or RunOptions())
    return artifact.with_reference(ref), ref
