"""Every field that crosses the wire, as one table of rules, checked in one place.

A frame that decodes (``rpc.codec``) is only well-formed; this module decides whether
its fields make sense. Each direction of each connection has a table op -> schema
(``CLIENT_OPS``, ``TRACKER_TO_CLIENT``, ``REPLIES``, ``DEVICE_OPS``, ``TRACKER_TO_DEVICE``,
``HANDSHAKE``); the receiving side calls ``validate`` before any handler looks at a
field, and a field that fails its rule raises ``BadRequest`` naming it
(``submit: options.timeout_s must be a number in [0.001, 86400], got 'nan'``).

Why a table and not checks in the handlers: ``float("nan")`` accepts the *string*
"nan", and one NaN deadline at the top of a heap stops every deadline behind it
(``NaN <= now`` is never true). Numbers here must be JSON numbers (never strings or
booleans), finite, in range, and integers where the field counts something. The table
is also what the property test walks (tests/rpc/test_rpc_wire_fields.py): every op,
every numeric and string field, hostile values in, BadRequest out.

Validated messages come back as new dicts: known fields checked, declared defaults
filled in, unknown top-level fields dropped (a newer peer's extras are ignored, never
acted on). Nested objects that are hashed or forwarded (artifact headers) keep their
extra keys untouched.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm.records.measure import Outcome
from rpc.errors import BadRequest

# ---- limits ------------------------------------------------------------------------------
MAX_WAIT_S = 30 * 86400.0  # a queue wait longer than a month is a mistake, not a plan
MAX_RUN_S = 86400.0  # one kernel run (options.timeout_s)
MAX_MESSAGE = 64 << 10  # result and error messages (the device clips its own)
MAX_APPEND = 10_000  # records per log_append batch
MAX_HASHES = 100_000  # artifact hashes per has/register
QUERY_KINDS = ("best", "top_k", "history", "measured", "records")
MAX_REPORT_TASKS = 128  # tasks per campaign_report
MAX_CURVE_POINTS = 200  # best-so-far points per task and report (the campaign thins longer curves)
ROLES = ("client", "device")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else f"{r[:30]}... ({len(r)} chars)"


# ---- rules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    """A JSON number (never a bool or a string), finite, in [lo, hi]; ``integer`` for counts."""

    lo: float
    hi: float
    integer: bool = False

    def describe(self) -> str:
        return f"{'an integer' if self.integer else 'a number'} in [{self.lo:g}, {self.hi:g}]"

    def check(self, v: Any, path: str) -> Any:
        wrong_type = isinstance(v, bool) or not isinstance(v, int if self.integer else (int, float))
        # ints compare exactly with the float bounds, so 10**400 is out of range, not an OverflowError
        if wrong_type or (isinstance(v, float) and not math.isfinite(v)) or not self.lo <= v <= self.hi:
            raise BadRequest(f"{path} must be {self.describe()}, got {_show(v)}")
        return v  # unchanged: an artifact header is hashed as sent (1 and 1.0 hash differently)


@dataclass(frozen=True)
class Str:
    """A string of at most ``max_len`` characters; optionally one of ``choices`` or matching ``pattern``."""

    max_len: int = 200
    min_len: int = 0
    choices: tuple[str, ...] = ()
    pattern: str = ""
    printable: bool = False  # names shown in logs and tables: no control characters

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return f"a string of {self.min_len}..{self.max_len} characters" + (" (no control characters)"
                                                                          if self.printable else "")

    def check(self, v: Any, path: str) -> Any:
        ok = isinstance(v, str) and self.min_len <= len(v) <= self.max_len
        if ok and self.choices:
            ok = v in self.choices
        if ok and self.pattern:
            ok = re.fullmatch(self.pattern, v) is not None
        if ok and self.printable:
            ok = _CONTROL.search(v) is None
        if not ok:
            raise BadRequest(f"{path} must be {self.describe()}, got {_show(v)}")
        return v


@dataclass(frozen=True)
class Bool:
    def describe(self) -> str:
        return "true or false"

    def check(self, v: Any, path: str) -> Any:
        if not isinstance(v, bool):
            raise BadRequest(f"{path} must be true or false, got {_show(v)}")
        return v


@dataclass(frozen=True)
class ListOf:
    item: Rule
    max_items: int

    def describe(self) -> str:
        return f"a list of at most {self.max_items} items"

    def check(self, v: Any, path: str) -> Any:
        if not isinstance(v, list) or len(v) > self.max_items:
            raise BadRequest(f"{path} must be {self.describe()}, got {_show(v)}")
        try:
            return [self.item.check(x, "") for x in v]
        except BadRequest:  # the rare path: check again, naming the item
            for i, x in enumerate(v):
                self.item.check(x, f"{path}[{i}]")
            raise


@dataclass(frozen=True)
class F:
    """One field of an object: its rule, whether it must be there, its default, whether null is allowed."""

    rule: Rule
    required: bool = False
    default: Any = None
    nullable: bool = False


@dataclass(frozen=True)
class Obj:
    """A JSON object. ``fields=None``: free-form data nobody here interprets (a fingerprint),
    bounded in size only. ``extra``: what to do with keys the schema does not name."""

    fields: Mapping[str, F] | None = None
    extra: str = "drop"  # "drop" | "keep" (hashed or forwarded as is) | "refuse" (a typo, not an extension)
    max_keys: int = 256

    def describe(self) -> str:
        return "an object" if self.fields is not None else f"an object of at most {self.max_keys} keys"

    def check(self, v: Any, path: str) -> Any:
        if not isinstance(v, dict) or (self.fields is None and len(v) > self.max_keys):
            raise BadRequest(f"{path} must be {self.describe()}, got {_show(v)}")
        if self.fields is None:
            return v
        out: dict[str, Any] = dict(v) if self.extra == "keep" else {}
        if self.extra == "refuse":
            unknown = sorted(k for k in v if k not in self.fields)
            if unknown:
                raise BadRequest(f"{_join(path, unknown[0])} is not a known field")
        for name, f in self.fields.items():
            if name not in v:
                if f.required:
                    raise BadRequest(f"{_join(path, name)} is missing")
                if f.default is not None:  # never None: that would change a hashed header
                    out[name] = f.default() if callable(f.default) else f.default
                continue
            val = v[name]
            if val is None and f.nullable:
                out[name] = None
                continue
            # Paths are built only to name a refused field: every message crosses this loop.
            try:
                out[name] = f.rule.check(val, "")
            except BadRequest:
                f.rule.check(val, _join(path, name))
                raise
        return out


Rule = Num | Str | Bool | ListOf | Obj


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and not path.endswith(":") else f"{path} {name}".strip()


# ---- shared field types ----------------------------------------------------------------------
HASH = Str(64, 64, pattern="[0-9a-f]{64}")
NONCE = HASH
ID = Str(128, 1, printable=True)  # job, lease and device ids, issued by the tracker
KEY = Str(128, 1, printable=True)  # device keys
NAME = Str(200, printable=True)
TEXT = Str(MAX_MESSAGE)
RID = Num(0, 2**53, integer=True)
PRIORITY = Num(-(10**6), 10**6, integer=True)
WAIT_S = Num(0, MAX_WAIT_S)
SECONDS = Num(0, 1e9)
FLOPS = Num(0, 1e30)
COUNT = Num(0, 2**53, integer=True)
HEARTBEAT_S = Num(0.01, 3600.0)
CAPACITY = Num(1, 1024, integer=True)
FREE = Obj()  # free-form JSON (fingerprints, workload labels, extras): bounded, never interpreted here

ERROR = Obj({"type": F(Str(100, 1), required=True), "message": F(TEXT, default="")})

# farm.records.measure.RunOptions, field by field (a test holds the two in step).
RUN_OPTIONS = Obj({
    "number": F(Num(1, 10**9, integer=True)),
    "repeat": F(Num(1, 10**6, integer=True)),
    "min_repeat_ms": F(Num(0, 3.6e6)),
    "cooldown_ms": F(Num(0, 3.6e6)),
    "flush_cache": F(Bool()),
    "check": F(Bool()),
    "seed": F(Num(0, 2**63 - 1, integer=True)),
    "rtol": F(Num(0, 1e3)),
    "timeout_s": F(Num(0.001, MAX_RUN_S)),
    "num_threads": F(Num(0, 4096, integer=True)),
}, extra="refuse")

ARG_SPEC = Obj({
    "name": F(Str(256), required=True),
    "shape": F(ListOf(Num(0, 2**40, integer=True), 16), required=True),
    "dtype": F(Str(32, 1), required=True),
    "role": F(Str(choices=("in", "out")), required=True),
})

# farm.records.artifact.Artifact.header(): hashed as sent, so its keys are kept as they are.
ARTIFACT = Obj({
    "hash": F(HASH, required=True),
    "code_size": F(Num(0, 1 << 31, integer=True), required=True),
    "target": F(Str(16 << 10)), "triple": F(Str(256)), "cpu": F(Str(256)), "features": F(Str(16 << 10)),
    "kind": F(Str(32)), "entry": F(Str(256)),
    "args": F(ListOf(ARG_SPEC, 1024)),
    "flops": F(FLOPS),
    "workload": F(FREE, nullable=True), "meta": F(FREE),
    # the check a user kernel carries: another artifact, named by kind and content hash
    "reference": F(Obj({"kind": F(Str(choices=("naive", "outputs")), required=True),
                        "hash": F(HASH, required=True)}, extra="refuse")),
}, extra="keep")

# farm.records.measure.MeasureResult.to_json()
RESULT = Obj({
    "outcome": F(Str(choices=tuple(o.value for o in Outcome)), required=True),
    "costs": F(ListOf(SECONDS, 1 << 20)),
    "message": F(TEXT), "flops": F(FLOPS), "number": F(COUNT), "load_s": F(SECONDS), "run_s": F(SECONDS),
    "device_key": F(Str(128)), "checked": F(Bool()), "extra": F(FREE),
}, extra="keep")

# farm.log.LogRecord.to_json(): checked here, then parsed by LogRecord.from_json.
LOG_RECORD = Obj({
    "v": F(Num(1, 1000, integer=True), required=True),
    "workload": F(Obj({"name": F(Str(200, 1), required=True),
                       "args": F(ListOf(Num(-(2**53), 2**53, integer=True), 64), required=True),
                       "dtype": F(Str(32)), "hash": F(Str(128)), "bytes": F(COUNT)}, extra="keep"), required=True),
    "target": F(Str(16 << 10)),
    "device": F(Obj({"key": F(Str(128)), "fingerprint": F(FREE)}, extra="keep")),
    "config": F(Obj({"index": F(Num(0, 2**63, integer=True), required=True), "knobs": F(FREE)}, extra="keep"),
                required=True),
    "result": F(Obj({"outcome": F(Str(choices=tuple(o.value for o in Outcome)), required=True),
                     "costs": F(ListOf(SECONDS, 1 << 20)), "gflops": F(FLOPS), "message": F(TEXT),
                     "number": F(COUNT), "checked": F(Bool())}, extra="keep"), required=True),
    "timing": F(FREE), "build_s": F(SECONDS), "timestamp": F(Num(0, 1e11)),
    "campaign": F(Str(200)), "task": F(Str(200)),
}, extra="keep")


# one task of a campaign_report (farm.campaign.report): progress, best so far, its curve
CAMPAIGN_TASK = Obj({
    "task": F(Str(200, 1, printable=True), required=True),
    "workload": F(NAME), "key": F(Str(128, printable=True)),
    "budget": F(COUNT), "done": F(COUNT), "errors": F(COUNT), "in_flight": F(COUNT),
    "best_gflops": F(FLOPS), "best_s": F(SECONDS, nullable=True), "finished": F(Bool()),
    "error": F(Str(2000)),  # why the task could not run at all
    # [trial, best GFLOPS so far], trials ascending
    "curve": F(ListOf(ListOf(Num(0, 1e30), 2), MAX_CURVE_POINTS)),
})


def _op(**fields: F) -> Obj:
    return Obj({"rid": F(RID, nullable=True), **fields})


# ---- the tables ------------------------------------------------------------------------------
# client -> tracker requests (each may carry a rid; answered by reply/error with it)
CLIENT_OPS: dict[str, Obj] = {
    "ping": _op(),
    "has": _op(hashes=F(ListOf(HASH, MAX_HASHES), required=True)),
    "submit": _op(key=F(KEY, required=True), artifact=F(ARTIFACT, required=True), options=F(RUN_OPTIONS, default=dict),
                  priority=F(PRIORITY, default=0), queue_timeout_s=F(WAIT_S, nullable=True),
                  lease_id=F(ID, nullable=True), reference=F(ARTIFACT, nullable=True)),
    "put": _op(artifact=F(ARTIFACT, required=True)),  # + its code: a reference, kept until jobs need it
    "lease": _op(key=F(KEY, required=True), queue_timeout_s=F(WAIT_S, nullable=True), priority=F(PRIORITY, default=0)),
    "release": _op(lease_id=F(ID, required=True)),
    "summary": _op(),
    "describe": _op(key=F(KEY, required=True)),
    "log_append": _op(records=F(ListOf(LOG_RECORD, MAX_APPEND), required=True)),
    "log_query": _op(kind=F(Str(choices=QUERY_KINDS), required=True), workload=F(Str(200), nullable=True),
                     device=F(Str(128), nullable=True), exclude_device=F(Str(128), nullable=True),
                     args=F(ListOf(Num(-(2**53), 2**53, integer=True), 64), nullable=True),
                     k=F(Num(0, 10**6, integer=True), default=10)),
    # a campaign's progress for the live page (rpc.view); each report replaces the last
    "campaign_report": _op(name=F(Str(200, 1, printable=True), required=True),
                           run=F(Str(64, printable=True), default=""), host=F(NAME, default=""),
                           elapsed_s=F(SECONDS), finished=F(Bool(), default=False),
                           tasks=F(ListOf(CAMPAIGN_TASK, MAX_REPORT_TASKS), required=True)),
}

# the fields of a reply, by the op of the request it answers
REPLIES: dict[str, Obj] = {
    "ping": Obj({}),
    "has": Obj({"has": F(ListOf(HASH, MAX_HASHES), required=True)}),
    "submit": Obj({"job_id": F(ID, required=True)}),
    "put": Obj({}),
    "lease": Obj({"lease_id": F(ID, required=True), "device": F(FREE, default=dict)}),
    "release": Obj({}),
    "summary": Obj({"summary": F(FREE, required=True)}),
    "describe": Obj({"devices": F(ListOf(Obj({"name": F(NAME), "fingerprint": F(FREE, default=dict)}), 100_000),
                                  required=True)}),
    "log_append": Obj({"appended": F(COUNT, required=True), "total": F(COUNT, required=True)}),
    "log_query": Obj({"records": F(ListOf(FREE, 1 << 24)), "history": F(FREE), "indices": F(ListOf(COUNT, 1 << 24))}),
    "campaign_report": Obj({}),
}

# tracker -> client
TRACKER_TO_CLIENT: dict[str, Obj] = {
    "reply": Obj({"rid": F(RID, nullable=True)}, extra="keep"),  # the rest: REPLIES[op of the request]
    "error": Obj({"rid": F(RID, nullable=True), "error": F(ERROR, required=True)}),
    "job_done": Obj({"job_id": F(ID, required=True), "result": F(RESULT, required=True)}),
    "job_failed": Obj({"job_id": F(ID, required=True), "error": F(ERROR, required=True)}),
    "lease_lost": Obj({"lease_id": F(ID, required=True), "error": F(ERROR, required=True)}),
}

# device server -> tracker
DEVICE_OPS: dict[str, Obj] = {
    "register": Obj({"key": F(KEY, required=True), "capacity": F(CAPACITY, default=1),
                     "name": F(NAME, default=""), "fingerprint": F(FREE, default=dict),
                     "artifacts": F(ListOf(HASH, MAX_HASHES), default=list)}),
    "heartbeat": Obj({}),
    "result": Obj({"job_id": F(ID, required=True), "result": F(RESULT, required=True)}),
    "need_artifact": Obj({"job_id": F(ID, required=True), "hash": F(HASH, required=True)}),
    "error": Obj({"job_id": F(ID, nullable=True), "error": F(ERROR, required=True)}),  # a job it refused
}

# tracker -> device server
TRACKER_TO_DEVICE: dict[str, Obj] = {
    "registered": Obj({"device_id": F(ID, required=True), "heartbeat_s": F(HEARTBEAT_S, default=2.0)}),
    "heartbeat_ack": Obj({}),
    "job": Obj({"job_id": F(ID, required=True), "artifact": F(ARTIFACT, required=True),
                "options": F(RUN_OPTIONS, default=dict), "reference": F(ARTIFACT, nullable=True)}),
    "artifact": Obj({"artifact": F(ARTIFACT, required=True)}),  # + its code: a reference a job will name
    "error": Obj({"error": F(ERROR, required=True)}),  # something we sent was refused
}

# the token handshake (rpc.auth), both directions
HANDSHAKE: dict[str, Obj] = {
    "hello": Obj({"versions": F(ListOf(Num(1, 2**16, integer=True), 16), required=True),
                  "nonce": F(NONCE, required=True)}),
    # a missing or malformed proof is an AuthError, like a wrong one: nothing to learn from the answer
    "auth": Obj({"version": F(Num(1, 2**16, integer=True), required=True), "role": F(Str(choices=ROLES), required=True),
                 "nonce": F(NONCE, required=True), "proof": F(Str(128), nullable=True)}),
    "welcome": Obj({"version": F(Num(1, 2**16, integer=True), required=True), "proof": F(Str(128), required=True)}),
    "error": Obj({"error": F(ERROR, required=True)}),
}

TABLES: dict[str, dict[str, Obj]] = {
    "client->tracker": CLIENT_OPS, "tracker->client": TRACKER_TO_CLIENT, "replies": REPLIES,
    "device->tracker": DEVICE_OPS, "tracker->device": TRACKER_TO_DEVICE, "handshake": HANDSHAKE,
}


def validate(table: Mapping[str, Obj], op: str, header: Mapping[str, Any]) -> dict[str, Any]:
    """The checked fields of one message (``op`` included); BadRequest naming the first bad field."""
    schema = table.get(op)
    if schema is None:
        raise BadRequest(f"unknown op {op!r:.40}")
    out: dict[str, Any] = schema.check(dict(header), f"{op}:")
    out["op"] = op
    return out


def check(rule: Rule, value: Any, name: str) -> Any:
    """One value against one rule (for settings that do not arrive in a message, e.g. a constructor's)."""
    return rule.check(value, name)


def rid_of(header: Mapping[str, Any]) -> int | None:
    """The request id to answer with: the peer's, if it is a valid one."""
    rid = header.get("rid")
    try:
        return int(RID.check(rid, "rid"))
    except BadRequest:
        return None
