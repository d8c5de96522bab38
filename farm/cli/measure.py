"""`farm query` and `farm measure`: a client of a running tracker (the laptop path)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rpc.auth import load_token
from rpc.cli import add_common
from rpc.client import MAX_OUTAGE_S
from rpc.errors import RpcError
from rpc.transport import make_ssl_contexts


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("query", help="show keys, queues and device health of a tracker")
    add_common(p, dial=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_query)

    p = subparsers.add_parser("measure", help="build a workload here and time it on a remote device")
    add_common(p, dial=True)
    p.add_argument("--key", required=True, help="device key to measure on")
    p.add_argument("workload", help="workload name, e.g. matmul, or your kernel as FILE.py:function "
                                    "(checked on the device against its reference)")
    p.add_argument("--shape", required=True, help="comma-separated workload arguments, e.g. 256,256,256")
    p.add_argument("--config", default="default",
                   help='JSON: {knob: value}, {"knobs": {...}} or {"index": i}; an index; or \'default\'')
    p.add_argument("--timeout", type=float, default=30.0, help="hard run timeout on the device, seconds")
    p.add_argument("--queue-timeout", type=float, default=120.0, help="longest wait for a device, seconds")
    p.add_argument("--max-outage", type=float, default=MAX_OUTAGE_S, metavar="SECONDS",
                   help="how long to re-dial a tracker that went away mid-measurement (its job is then "
                        "resubmitted); 0: fail at once")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_measure)

def _fail(command: str, e: Exception) -> int:
    print(f"farm {command}: error: {e}", file=sys.stderr)
    return 1


def _client(args: argparse.Namespace) -> Any:
    from rpc.client import Client

    _, client_ctx = make_ssl_contexts(None, None, args.tls_ca)
    return Client(args.tracker, load_token(args.token_file), ssl_context=client_ctx)


def cmd_query(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            summary = client.summary()
    except (RpcError, OSError, ValueError) as e:
        return _fail("query", e)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"{'KEY':16} {'DEVICES':>7} {'FREE':>5} {'BUSY':>5} {'LEASED':>6} {'PENDING':>7}")
    for key, k in sorted(summary["keys"].items()):
        print(f"{key:16} {k['devices']:>7} {k['free']:>5} {k['busy']:>5} {k['leased']:>6} {k['pending']:>7}")
    if summary["devices"]:
        print()
        print(f"{'DEVICE':24} {'KEY':12} {'STATE':7} {'HEALTH':6} {'JOBS':>6} {'ERRS':>5} {'UTIL':>5}  LAST ERROR")
        for d in summary["devices"]:
            print(f"{d['name'][:24]:24} {d['key'][:12]:12} {d['state']:7} {d['health']:6} {d['jobs_done']:>6} "
                  f"{d['errors']:>5} {d['utilization']:>5.0%}  {d['last_error'][:60]}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from farm.client.session import connect, workload_job
    from farm.errors import FarmError
    from farm.records.measure import RunOptions

    try:
        shape = [int(x) for x in args.shape.split(",") if x.strip()]
        config = None if args.config == "default" else (
            int(args.config) if args.config.strip().isdigit() else json.loads(args.config))
    except ValueError as e:
        return _fail("measure", ValueError(f"bad --shape or --config: {e}"))
    try:
        _, client_ctx = make_ssl_contexts(None, None, args.tls_ca)
        with connect(args.tracker, token=load_token(args.token_file), ssl_context=client_ctx,
                     max_outage_s=args.max_outage) as session:
            target = session.target(args.key)
            options = RunOptions(timeout_s=args.timeout)
            artifact, reference = workload_job(args.workload, shape, config, target, options)
            result = session.measure(artifact, key=args.key, options=options, queue_timeout_s=args.queue_timeout,
                                     reference=reference)
    except (RpcError, FarmError, OSError, ValueError) as e:
        return _fail("measure", e)
    if args.json:
        print(json.dumps({**result.to_json(), "median_s": result.median_s if result.costs else None,
                          "gflops": result.gflops, "workload": args.workload, "shape": shape, "key": args.key}))
    else:
        median = f"{result.median_s * 1e3:.4f} ms" if result.costs else "-"
        print(f"{args.workload} {args.shape} on {args.key}: {result.outcome.value}  median {median}  "
              f"{result.gflops:.2f} GFLOPS" + (f"  ({result.message})" if result.message else ""))
    return 0 if result.ok else 3
