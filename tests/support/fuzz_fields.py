"""Hostile values for every field of every op in ``rpc.fields``, and drivers that send them.

The table of wire rules is data, so the fuzzer walks it: for each op of each table it
takes a valid baseline message (``BASELINES``, one per op; a test checks none is
missing), and for each leaf field (number, string, bool: nested ones such as
``options.timeout_s`` or ``artifact.args[0].shape[0]`` included) it substitutes
values the rule must refuse: the strings "nan"/"inf", 1e308, negatives, out-of-range
and wrong-typed values, and strings past the length cap.

``hostile_cases`` is pure. ``fuzz_tracker_fields`` sends each case to a live tracker
(client ops on a client connection, device ops on a registered device connection) and
checks the answer is BadRequest naming the field; once per op, a control client's
queue deadline must still fire. ``fuzz_device_fields`` does the same to a live device
server, playing its tracker. NaN and Infinity as JSON constants never get this far
(the codec refuses them, tests/rpc/test_rpc_fuzz_regressions.py), so over the wire
the non-finite values travel as strings; ``check_rules`` feeds real float NaN/inf to
the table directly.
"""
from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rpc import auth, codec, fields
from rpc.errors import BadRequest, DeadlineExceeded, RpcError
from rpc.fields import Bool, ListOf, Num, Obj, Str

HASH = "ab" * 32
NONCE = "cd" * 32


def _artifact() -> dict[str, Any]:
    return {"hash": HASH, "code_size": 10, "target": "llvm", "triple": "x86_64-unknown-linux-gnu", "cpu": "generic",
            "features": "", "kind": "object", "entry": "kf_main",
            "args": [{"name": "A", "shape": [4], "dtype": "float32", "role": "out"}], "flops": 1.0,
            "workload": {"name": "fake"}, "meta": {}, "reference": {"kind": "naive", "hash": HASH}}


_OPTIONS = {"number": 1, "repeat": 1, "min_repeat_ms": 0.0, "cooldown_ms": 0.0, "flush_cache": False, "check": True,
            "seed": 0, "rtol": 1e-4, "timeout_s": 1.0, "num_threads": 0}
_RESULT = {"outcome": "OK", "costs": [0.001], "message": "", "flops": 1.0, "number": 1, "load_s": 0.0, "run_s": 0.0,
           "device_key": "k", "checked": True, "extra": {}}
_ERROR = {"type": "BadRequest", "message": "m"}
_RECORD = {"v": 2, "workload": {"name": "matmul", "args": [4, 4, 4], "dtype": "float32", "hash": "h", "bytes": 8},
           "target": "llvm", "device": {"key": "k", "fingerprint": {}}, "config": {"index": 0, "knobs": {}},
           "result": {"outcome": "OK", "costs": [0.001], "gflops": 1.0, "message": "", "number": 1,
                      "checked": True},
           "timing": {}, "build_s": 0.0, "timestamp": 1.0, "campaign": "c", "task": "t"}

# One valid message per op of every table (the op itself is added by the table's key).
BASELINES: dict[str, dict[str, dict[str, Any]]] = {
    "client->tracker": {
        "ping": {"rid": 1}, "has": {"rid": 1, "hashes": [HASH]},
        "submit": {"rid": 1, "key": "fuzz-nodev", "artifact": _artifact(), "options": dict(_OPTIONS), "priority": 0,
                   "queue_timeout_s": 1.0, "lease_id": "lease1", "reference": _artifact()},
        "put": {"rid": 1, "artifact": _artifact()},
        "lease": {"rid": 1, "key": "fuzz-nodev", "queue_timeout_s": 0.5, "priority": 0},
        "release": {"rid": 1, "lease_id": "lease1"}, "summary": {"rid": 1}, "describe": {"rid": 1, "key": "k"},
        "log_append": {"rid": 1, "records": [copy.deepcopy(_RECORD)]},
        "log_query": {"rid": 1, "kind": "top_k", "workload": "matmul", "device": "k", "exclude_device": "x",
                      "args": [4, 4, 4], "k": 3},
        "campaign_report": {"rid": 1, "name": "c", "run": "r1", "host": "h", "elapsed_s": 1.0, "finished": False,
                            "tasks": [{"task": "matmul(4,4,4)@k", "workload": "matmul", "key": "k", "budget": 8,
                                       "done": 2, "errors": 1, "in_flight": 1, "best_gflops": 1.5, "best_s": 0.001,
                                       "finished": False, "error": "", "curve": [[1, 1.0], [2, 1.5]]}]},
    },
    "tracker->client": {
        "reply": {"rid": 1}, "error": {"rid": 1, "error": dict(_ERROR)},
        "job_done": {"job_id": "job1-x", "result": dict(_RESULT)},
        "job_failed": {"job_id": "job1-x", "error": dict(_ERROR)},
        "lease_lost": {"lease_id": "lease1-x", "error": dict(_ERROR)},
    },
    "device->tracker": {
        "register": {"key": "fuzz-dev", "capacity": 1, "name": "fuzz", "fingerprint": {}, "artifacts": [HASH]},
        "heartbeat": {}, "result": {"job_id": "job1-x", "result": dict(_RESULT)},
        "need_artifact": {"job_id": "job1-x", "hash": HASH}, "error": {"job_id": "job1-x", "error": dict(_ERROR)},
    },
    "replies": {
        "ping": {}, "has": {"has": [HASH]}, "submit": {"job_id": "job1-x"}, "put": {},
        "lease": {"lease_id": "lease1-x", "device": {}}, "release": {}, "summary": {"summary": {}},
        "describe": {"devices": [{"name": "d", "fingerprint": {}}]}, "log_append": {"appended": 1, "total": 2},
        "log_query": {"records": [], "history": {}, "indices": [1]}, "campaign_report": {},
    },
    "tracker->device": {
        "registered": {"device_id": "dev1-x", "heartbeat_s": 1.0}, "heartbeat_ack": {},
        "job": {"job_id": "job1-x", "artifact": _artifact(), "options": dict(_OPTIONS), "reference": _artifact()},
        "artifact": {"artifact": _artifact()},
        "error": {"error": dict(_ERROR)},
    },
    "handshake": {
        "hello": {"versions": [1], "nonce": NONCE},
        "auth": {"version": 1, "role": "client", "nonce": NONCE, "proof": "ef" * 32},
        "welcome": {"version": 1, "proof": "ef" * 32}, "error": {"error": dict(_ERROR)},
    },
}


# ---- walking the table ---------------------------------------------------------------------
Path = tuple[str | int, ...]


def leaves(rule: Any, value: Any, path: Path = ()) -> Iterator[tuple[Path, Any, bool]]:
    """(path, leaf rule, nullable) for every number/string/bool field present in ``value``."""
    if isinstance(rule, Obj) and rule.fields is not None and isinstance(value, dict):
        for name, f in rule.fields.items():
            if name in value:
                if isinstance(f.rule, (Obj, ListOf)):
                    yield from leaves(f.rule, value[name], (*path, name))
                else:
                    yield (*path, name), f.rule, f.nullable
    elif isinstance(rule, ListOf) and isinstance(value, list) and value:
        if isinstance(rule.item, (Obj, ListOf)):
            yield from leaves(rule.item, value[0], (*path, 0))
        else:
            yield (*path, 0), rule.item, False


def hostile_values(rule: Any, *, wire: bool = True) -> list[Any]:
    """Values ``rule`` must refuse. ``wire``: only JSON-encodable ones (no float NaN/inf)."""
    huge = "x" * 100_000
    if isinstance(rule, Num):
        out: list[Any] = ["nan", "inf", "-inf", "1", True, [], {}, 1e308, -1e308, huge, 10**400]
        if rule.lo > -1:
            out.append(-1)
        out += [rule.lo - 1, rule.hi * 10 + 1]
        if rule.integer:
            out.append(rule.lo + 0.5)
        if not wire:
            out += [float("nan"), float("inf"), float("-inf")]
        return out
    if isinstance(rule, Str):
        out = [5, -1, 1e308, True, [], {}, "x" * (rule.max_len + 1)]
        if rule.choices or rule.pattern:
            out.append("nan")
        if rule.printable:
            out.append("a\x00b")
        if rule.min_len > 0:
            out.append("")
        return out
    if isinstance(rule, Bool):
        return ["true", 1, 0, 1e308, "nan", []]
    raise TypeError(f"not a leaf rule: {rule!r}")


def with_value(msg: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(msg)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def dotted(path: Path) -> str:
    """``("artifact", "args", 0, "shape", 0)`` -> ``artifact.args[0].shape[0]`` (how BadRequest names it)."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


@dataclass(frozen=True)
class Case:
    table: str
    op: str
    path: Path
    value: Any
    header: dict[str, Any]  # the whole hostile message, op included

    @property
    def field(self) -> str:
        return dotted(self.path)


def hostile_cases(table: str, op: str | None = None, *, wire: bool = True) -> Iterator[Case]:
    """Every hostile (field, value) of every op of ``table`` (or of one op)."""
    schemas = fields.TABLES[table]
    for name, schema in schemas.items():
        if op is not None and name != op:
            continue
        base = BASELINES[table][name]
        for path, rule, nullable in leaves(schema, base):
            values = hostile_values(rule, wire=wire)
            for v in values if nullable else [*values, None]:
                yield Case(table, name, path, v, {"op": name, **with_value(base, path, v)})


def check_rules() -> tuple[int, list[str]]:
    """Every hostile case of every table through ``fields.validate`` (float NaN/inf included).
    Returns (cases, failures): a failure is a case accepted, or refused without naming its field."""
    n, bad = 0, []
    for table in fields.TABLES:
        for c in hostile_cases(table, wire=False):
            n += 1
            try:
                fields.validate(fields.TABLES[table], c.op, c.header)
            except BadRequest as e:
                if c.field not in str(e):
                    bad.append(f"{table} {c.op} {c.field}={c.value!r:.40}: refused as {e}")
            else:
                bad.append(f"{table} {c.op} {c.field}={c.value!r:.40}: accepted")
    return n, bad


# ---- live: a tracker ---------------------------------------------------------------------------
@dataclass
class FieldFuzzReport:
    sent: int = 0  # hostile messages sent over the wire
    ops: int = 0  # ops fuzzed (each followed by a control deadline)
    wrong_answers: list[str] = field(default_factory=list)  # not BadRequest, or the field not named
    deadline_poisoned: int = 0  # ops after which the control job's queue deadline did not fire in time
    deadline_s: list[float] = field(default_factory=list)


def _answer_ok(c: Case, msg: codec.Message) -> str | None:
    err = msg.header.get("error") if msg.op == "error" else None
    if not isinstance(err, dict) or err.get("type") != "BadRequest" or c.field not in str(err.get("message")):
        return f"{c.op} {c.field}={c.value!r:.40}: answered {msg.op} {msg.header!r:.200}"
    return None


async def control_deadline(address: str, token: bytes, timeout_s: float = 0.3, limit_s: float = 5.0) -> float | None:
    """Seconds until a job with a ``timeout_s`` queue deadline on a key nobody serves fails with
    DeadlineExceeded; None when it did not within ``limit_s`` (the deadlines were poisoned)."""
    from rpc.client import AsyncClient
    from tests.rpc.fake_backend import fake_artifact

    art = fake_artifact("ok", tag="control-deadline")
    client = await AsyncClient.connect(address, token)
    try:
        t0 = time.monotonic()
        job = await client.submit(art.header(), art.code, "control-nodev", {"timeout_s": 1.0},
                                  queue_timeout_s=timeout_s)
        try:
            await client.result(job, timeout=limit_s)
        except DeadlineExceeded:
            return time.monotonic() - t0
        except TimeoutError:
            return None
        return None
    finally:
        await client.close()


async def fuzz_tracker_fields(address: str, token: bytes, *, ops: list[str] | None = None,
                              report: FieldFuzzReport | None = None) -> FieldFuzzReport:
    """Every hostile case of the client and device tables at a live tracker (see the module doc)."""
    from rpc.transport import parse_address

    host, port = parse_address(address)
    report = report or FieldFuzzReport()
    for table, role in (("client->tracker", "client"), ("device->tracker", "device")):
        for op in fields.TABLES[table]:
            if ops is not None and op not in ops:
                continue
            cases = list(hostile_cases(table, op))
            if not cases:
                continue
            conn = None
            for c in cases:
                if conn is None or conn.closed:
                    conn = await auth.dial_address(host, port, token, role)
                    if role == "device" and op != "register":
                        await conn.send({"op": "register", **BASELINES["device->tracker"]["register"]})
                        while (await conn.recv(idle_timeout=5)).op != "registered":
                            pass
                await conn.send(c.header)
                report.sent += 1
                while True:  # skip what is not the answer (a device's registered, heartbeats)
                    msg = await conn.recv(idle_timeout=5)
                    if msg.op in ("error", "reply"):
                        break
                problem = _answer_ok(c, msg)
                if problem:
                    report.wrong_answers.append(problem)
                if op == "register":  # answered, then dropped: a fresh connection for the next case
                    conn.abort()
                    conn = None
                elif role == "device":
                    await conn.send({"op": "heartbeat"})  # keep the device alive on slow machines
            if conn is not None:
                conn.abort()
            report.ops += 1
            took = await control_deadline(address, token)
            if took is None:
                report.deadline_poisoned += 1
            else:
                report.deadline_s.append(took)
    return report


# ---- live: a device server -------------------------------------------------------------------------
class FieldFuzzTracker:
    """Plays the tracker for one device server and sends it hostile ``registered`` and ``job``
    messages; each must come back as an ``error`` BadRequest naming the field."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.address = ""
        self._conns: asyncio.Queue[codec.Message | Any] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._open: list[tuple[Any, asyncio.Future[None]]] = []

    async def start(self) -> str:
        from rpc.transport import start_server

        self._server = await start_server(self._on_connection, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self.address

    async def _on_connection(self, conn: Any) -> None:
        await auth.accept_with_deadline(conn, self.token)
        conn.limits = codec.Limits()
        register = await conn.recv(idle_timeout=5)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open.append((conn, done))
        await self._conns.put((conn, register, done))
        await done  # the fuzzer owns the connection until it says so

    async def next_connection(self, timeout: float = 10.0) -> tuple[Any, asyncio.Future[None]]:
        conn, register, done = await asyncio.wait_for(self._conns.get(), timeout)
        assert register.op == "register", register.op
        return conn, done

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn, done in self._open:  # let each connection's task end before the loop does
            conn.abort()
            if not done.done():
                done.set_result(None)
        await asyncio.sleep(0.05)

    async def _answer(self, conn: Any, timeout: float = 10.0) -> codec.Message:
        while True:  # heartbeats are not answers
            msg = await conn.recv(idle_timeout=timeout)
            if msg.op != "heartbeat":
                return msg

    async def fuzz(self, report: FieldFuzzReport | None = None) -> FieldFuzzReport:
        report = report or FieldFuzzReport()
        # registered: each hostile one is answered, then the device dials again
        for c in hostile_cases("tracker->device", "registered"):
            conn, done = await self.next_connection()
            await conn.send(c.header)
            report.sent += 1
            try:
                problem = _answer_ok(c, await self._answer(conn))
            except RpcError as e:
                problem = f"{c.op} {c.field}={c.value!r:.40}: {type(e).__name__}: {e}"
            if problem:
                report.wrong_answers.append(problem)
            conn.abort()
            done.set_result(None)
        report.ops += 1
        # job: all on one good session
        conn, done = await self.next_connection()
        await conn.send({"op": "registered", "device_id": "dev-fuzz", "heartbeat_s": 30.0})
        for c in hostile_cases("tracker->device", "job"):
            await conn.send(c.header)
            report.sent += 1
            problem = _answer_ok(c, await self._answer(conn))
            if problem:
                report.wrong_answers.append(problem)
        report.ops += 1
        self.session = (conn, done)
        return report

    async def run_job(self, header: dict[str, Any], code: bytes, options: dict[str, Any], job_id: str,
                      timeout: float = 30.0) -> dict[str, Any]:
        """A real job on the session ``fuzz`` left open; returns its result."""
        conn, _ = self.session
        await conn.send({"op": "job", "job_id": job_id, "artifact": header, "options": options}, [code])
        msg = await self._answer(conn, timeout)
        assert msg.op == "result" and msg.header.get("job_id") == job_id, msg.header
        return dict(msg.header["result"])



# ---- one run, as bench_reliability.py does it ---------------------------------------------------------
@dataclass
class WireRunReport:
    rules_checked: int  # hostile cases fed to the table directly (float NaN/inf included)
    rule_failures: list[str]
    tracker: FieldFuzzReport
    device: FieldFuzzReport
    tracker_alive: bool
    device_alive: bool
    probe_ok: bool  # a real job through the fuzzed device server afterwards
    wall_s: float
    leaked: list[int] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.tracker.sent + self.device.sent

    @property
    def wrong_answers(self) -> list[str]:
        return self.rule_failures + self.tracker.wrong_answers + self.device.wrong_answers


def run_wire_fuzz(workdir: Any) -> WireRunReport:
    """Every hostile field at a real tracker process (with a shared log, so the log ops count) and
    at a real device-server process dialling a FieldFuzzTracker; every process accounted for."""
    from tests.rpc.fake_backend import fake_artifact
    from tests.rpc.harness import FAKE_KIND, LocalFarm

    t0 = time.monotonic()
    n, rule_failures = check_rules()
    farm = LocalFarm(workdir, heartbeat=0.5, frame_timeout=2.0)
    try:
        farm.start_tracker(0, "--log", str(workdir / "shared.jsonl"))
        assert farm.tracker is not None
        token = farm.token.encode()
        tracker_report = asyncio.run(fuzz_tracker_fields(farm.address, token))

        async def device() -> tuple[FieldFuzzReport, bool, bool]:
            ft = FieldFuzzTracker(token)
            address = await ft.start()
            dev = farm._spawn(["serve", "--tracker", address, "--key", "fz", "--kind", FAKE_KIND, "--name", "fz",
                               "--load-grace", "1", "--backoff-cap", "0.05"], "serve-field-fuzzed")
            try:
                report = await ft.fuzz()
                art = fake_artifact("ok", tag="after-field-fuzz")
                probe = await ft.run_job(art.header(), art.code, {"repeat": 1, "timeout_s": 5}, "probe")
            finally:
                await ft.stop()
            return report, probe.get("outcome") == "OK", dev.alive()

        device_report, probe_ok, device_alive = asyncio.run(device())
        tracker_alive = farm.tracker.alive()
    finally:
        leaked = farm.close()
    return WireRunReport(n, rule_failures, tracker_report, device_report, tracker_alive, device_alive, probe_ok,
                         time.monotonic() - t0, leaked)
