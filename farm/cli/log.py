"""`farm log best|show|export`: read the shared log from the shell."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from farm.cli.args import existing_file
from farm.cli.errors import NoResult
from farm.log import LogRecord, best, best_per_task, load_log, matches, mixed_machine_warnings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("log", help="query the shared measurement log")
    lsub = p.add_subparsers(dest="log_command", metavar="SUBCOMMAND", required=True)

    b = lsub.add_parser("best", help="the fastest config (per workload and device with --all)")
    _filters(b)
    b.add_argument("--all", action="store_true", help="best per (workload, device) instead of one overall")
    b.add_argument("--json", action="store_true", help="machine-readable: one object (a list with --all)")
    b.set_defaults(func=cmd_best)

    s = lsub.add_parser("show", help="records as a table")
    _filters(s)
    s.add_argument("--limit", type=int, default=0, help="only the last N matching records")
    s.add_argument("--ok", action="store_true", help="only successful measurements")
    s.set_defaults(func=cmd_show)

    e = lsub.add_parser("export", help="convert records to another tool's format")
    _filters(e)
    e.add_argument("--format", choices=["tvm"], required=True, help="tvm: AutoTVM v0.2 JSON records")
    e.add_argument("-o", "--output", help="file to write (default: stdout)")
    e.set_defaults(func=cmd_export)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="shared log file (JSON lines, .gz accepted)")
    p.add_argument("--workload", help="workload name (matmul) or instance (matmul(256,256,256))")
    p.add_argument("--device", help="device key")


def _load(args: argparse.Namespace) -> list[LogRecord]:
    recs = load_log(existing_file(args.log)).records
    return [r for r in recs if matches(r, workload=args.workload, device=args.device)]


def _summary(r: LogRecord) -> dict[str, Any]:
    return {"workload": r.workload, "workload_hash": r.workload_hash, "args": list(r.args),
            "device_key": r.device_key, "target": r.target, "config": r.config, "gflops": r.gflops,
            "gbps": r.gbps, "median_s": r.median_s if r.ok else None, "checked": r.checked,
            "outcome": r.outcome.value, "timestamp": r.timestamp}


def _namer(recs: list[LogRecord]) -> Any:
    """name(shape), or name@hash(shape) where two kernels of one name are in the log."""
    hashes: dict[str, set[str]] = {}
    for r in recs:
        hashes.setdefault(r.workload, set()).add(r.workload_hash)
    return lambda r: r.workload_label if len(hashes[r.workload]) > 1 else r.workload_id


def warn_mixed_machines(args: argparse.Namespace, pool: Sequence[LogRecord]) -> list[str]:
    """Say on stderr (and in the log) which device keys of ``pool`` several machines measured."""
    lines = mixed_machine_warnings(pool)
    for line in lines:
        log.info("%s", line)
        print(f"{getattr(args, 'prog_name', 'farm')}: warning: {line}", file=sys.stderr)
    return lines


def cmd_best(args: argparse.Namespace) -> int:
    recs = _load(args)
    warn_mixed_machines(args, [r for r in recs if r.ok and r.costs])  # what best() chooses from
    if args.all:
        tops = [r for _, r in sorted(best_per_task(recs).items())]
        rows = [_summary(r) for r in tops]
        name = _namer(recs)
        if args.json:
            print(json.dumps(rows))
        else:
            for r in tops:
                print(f"{name(r)} on {r.device_key}: {r.median_s * 1e3:.4f} ms  {r.gflops:.2f} GFLOPS  "
                      f"config {json.dumps(r.config)}")
        if not rows:
            raise NoResult(f"no successful record in {args.log} matches")
        return 0
    top = best(recs)
    if top is None:
        raise NoResult(f"no successful record in {args.log} matches")
    print(json.dumps(_summary(top)) if args.json else
          f"{_namer(recs)(top)} on {top.device_key}: {top.gflops:.2f} GFLOPS "
          f"({top.median_s * 1e3:.4f} ms)  config {json.dumps(top.config)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    recs = [r for r in _load(args) if r.ok or not args.ok]
    if args.limit:
        recs = recs[-args.limit:]
    print(f"{'time':<19} {'workload':<28} {'device':<14} {'index':>8} {'outcome':<13} {'GFLOPS':>9} {'ms':>9}  knobs")
    for r in recs:
        ts = datetime.datetime.fromtimestamp(r.timestamp).strftime("%Y-%m-%d %H:%M:%S")
        ms = f"{r.median_s * 1e3:9.4f}" if r.ok else f"{'-':>9}"
        print(f"{ts:<19} {r.workload_id[:28]:<28} {r.device_key[:14]:<14} {r.config_index:>8} "
              f"{r.outcome.value:<13} {r.gflops:9.2f} {ms}  {json.dumps(r.knobs, separators=(',', ':'))}")
    return 0


# AutoTVM's MeasureErrorNo values, so exported records mean the same thing there.
_TVM_ERROR_NO = {"OK": 0, "COMPILE_ERROR": 2, "BUILD_TIMEOUT": 2, "LOAD_ERROR": 3, "RUNTIME_ERROR": 4,
                 "RUN_TIMEOUT": 6, "WRONG_ANSWER": 4, "DEVICE_LOST": 7}


def _knob_entity(name: str, value: Any) -> list[Any]:
    # AutoTVM entity triples: ["tile_i", "sp", [-1, 4, 8]], ["order", "ot", 1], ["r", "re", [..]].
    kind = "sp" if isinstance(value, list) and value and value[0] == -1 else ("re" if isinstance(value, list) else "ot")
    return [name, kind, value]


def to_tvm_record(r: LogRecord) -> dict[str, Any]:
    """One record in AutoTVM's v0.2 JSON log layout."""
    entity = [_knob_entity(k, v) for k, v in r.knobs.items()]
    code_hash = hashlib.sha1(json.dumps(entity, sort_keys=True).encode()).hexdigest()
    costs = list(r.costs) if r.ok else [1e9]  # AutoTVM writes a large cost for failures
    all_cost = r.build_s + r.number * sum(r.costs) if r.ok else r.build_s
    return {
        "input": [r.target, r.workload, list(r.args), {}],
        "config": {"index": r.config_index, "code_hash": code_hash, "entity": entity},
        "result": [costs, _TVM_ERROR_NO.get(r.outcome.value, 4), all_cost, r.timestamp],
        "version": 0.2,
        "tvm_version": "0.x",
    }


def export_tvm(records: Sequence[LogRecord]) -> str:
    return "".join(json.dumps(to_tvm_record(r)) + "\n" for r in records)


def cmd_export(args: argparse.Namespace) -> int:
    text = export_tvm(_load(args))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
