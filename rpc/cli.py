"""`farm tracker`, `farm serve`, `farm query`, `farm measure`.

This is an edge: the token is read here (``--token-file`` or ``FARM_TOKEN``)
and handed down as bytes; library code never reads the environment.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, Callable, Coroutine, Mapping

from .errors import RpcError
from .transport import make_ssl_contexts

log = logging.getLogger(__name__)


class TokenError(RpcError):
    """No usable token was configured."""


def load_token(token_file: str | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The shared token: ``token_file`` if given, else ``FARM_TOKEN``. Never printed."""
    if token_file:
        try:
            with open(token_file, "rb") as fh:
                token = fh.read().strip()
        except OSError as e:
            raise TokenError(f"cannot read token file {token_file}: {e.strerror}") from None
        if not token:
            raise TokenError(f"token file {token_file} is empty")
        return token
    token_s = (environ if environ is not None else os.environ).get("FARM_TOKEN", "").strip()
    if not token_s:
        raise TokenError("no token: set FARM_TOKEN or pass --token-file")
    return token_s.encode()


def _add_common(p: argparse.ArgumentParser, *, dial: bool) -> None:
    p.add_argument("--token-file", help="file holding the shared token (default: $FARM_TOKEN)")
    if dial:
        p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="tracker address")
        p.add_argument("--tls-ca", help="CA bundle to verify the tracker's TLS certificate (enables TLS)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("tracker", help="run the tracker (devices dial in; clients submit jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9190, help="port to bind; 0 picks a free one (printed)")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--heartbeat", type=float, default=2.0, help="device heartbeat interval, seconds")
    p.add_argument("--max-retries", type=int, default=2, help="requeues of a job whose device vanished")
    p.add_argument("--frame-timeout", type=float, default=30.0, help="seconds a started frame may take to arrive")
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds a new peer has to authenticate")
    p.add_argument("--log", metavar="PATH", help="keep the farm's shared log here (the tracker is its one writer)")
    p.add_argument("--ray", action="store_true",
                   help="run as a detached named Ray actor that Ray restarts; prints the address and returns")
    p.add_argument("--ray-address", help="with --ray: the Ray cluster to join (default: the local one, 'auto')")
    p.add_argument("--ray-name", default="kernelfarm-tracker", help="with --ray: the actor's name")
    p.add_argument("--ray-namespace", default="kernelfarm", help="with --ray: the actor's Ray namespace")
    p.add_argument("--stop", action="store_true", help="with --ray: remove the tracker actor")
    _add_common(p, dial=False)
    p.set_defaults(func=cmd_tracker)

    p = subparsers.add_parser("serve", help="run a device server that dials out to a tracker")
    _add_common(p, dial=True)
    p.add_argument("--key", required=True, help="device key, e.g. rpi4")
    p.add_argument("--kind", default="cpu", help="backend: cpu, cuda, or module:Class")
    p.add_argument("--capacity", type=int, default=1, help="concurrent jobs (1 for clean timings)")
    p.add_argument("--name", help="device name shown by `farm query` (default host-pid)")
    p.add_argument("--load-grace", type=float, default=10.0, help="seconds added to a job's timeout for loading")
    p.add_argument("--backoff-cap", type=float, default=5.0, help="longest wait between reconnects, seconds")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("query", help="show keys, queues and device health of a tracker")
    _add_common(p, dial=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_query)

    p = subparsers.add_parser("measure", help="build a workload here and time it on a remote device")
    _add_common(p, dial=True)
    p.add_argument("--key", required=True, help="device key to measure on")
    p.add_argument("workload", help="workload name, e.g. matmul")
    p.add_argument("--shape", required=True, help="comma-separated workload arguments, e.g. 256,256,256")
    p.add_argument("--config", default="default", help="knob values as JSON, or 'default'")
    p.add_argument("--timeout", type=float, default=30.0, help="hard run timeout on the device, seconds")
    p.add_argument("--queue-timeout", type=float, default=120.0, help="longest wait for a device, seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_measure)


def _run_until_signal(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``main`` until it ends or SIGINT/SIGTERM arrives; then cancel it cleanly."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(main())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(runner())
    return 0


def _fail(command: str, e: Exception) -> int:
    print(f"farm {command}: error: {e}", file=sys.stderr)
    return 1


def cmd_tracker(args: argparse.Namespace) -> int:
    from .tracker import Tracker

    if args.ray or args.stop:
        return _cmd_ray_tracker(args)
    try:
        token = load_token(args.token_file)
        server_ctx, _ = make_ssl_contexts(args.tls_cert, args.tls_key, None)
    except (RpcError, OSError) as e:
        return _fail("tracker", e)

    async def main() -> None:
        tracker = Tracker(token, heartbeat_s=args.heartbeat, max_retries=args.max_retries, ssl_context=server_ctx,
                          frame_timeout=args.frame_timeout, handshake_timeout=args.handshake_timeout,
                          log_path=args.log)
        host, port = await tracker.start(args.host, args.port)
        print(f"tracker listening on {host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await tracker.stop()

    try:
        return _run_until_signal(main)
    except (OSError, RpcError) as e:  # port in use; another writer holds --log
        return _fail("tracker", e)


def _cmd_ray_tracker(args: argparse.Namespace) -> int:
    from . import ray_tracker

    name, ns = args.ray_name, args.ray_namespace
    try:
        if not args.stop and args.port == 0:
            raise ValueError("--ray needs a fixed --port: devices reconnect to it after Ray restarts the actor")
        token = b"" if args.stop else load_token(args.token_file)  # fail here, not in the actor
        ray_tracker.connect_ray(args.ray_address, ns)
        if args.stop:
            stopped = ray_tracker.stop(name, ns)
            print(f"tracker actor {ns}/{name} " + ("removed" if stopped else "was not running"), flush=True)
            return 0
        if args.tls_cert or args.tls_key:
            raise ValueError("--ray does not serve TLS yet; run a plain `farm tracker` behind TLS")
        token_file = os.path.abspath(args.token_file) if args.token_file else None
        opts = ray_tracker.TrackerOptions(
            host=args.host, port=args.port, heartbeat_s=args.heartbeat, max_retries=args.max_retries,
            frame_timeout=args.frame_timeout, handshake_timeout=args.handshake_timeout,
            log_path=os.path.abspath(args.log) if args.log else None, token_file=token_file,
            token=None if token_file else token,
        )
        handle, address = ray_tracker.start(opts, name, ns)
        pid = ray_tracker.actor_pid(handle)
    except (RpcError, OSError, ValueError) as e:
        return _fail("tracker", e)
    except Exception as e:  # noqa: BLE001 - Ray's own errors (no cluster, actor died in its constructor)
        return _fail("tracker", RuntimeError(f"{type(e).__name__}: {str(e)[:500]}"))
    print(f"tracker listening on {address} (Ray actor {ns}/{name}, pid {pid}; "
          f"stop with `farm tracker --ray --stop`)", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import DeviceServer

    try:
        token = load_token(args.token_file)
        _, client_ctx = make_ssl_contexts(None, None, args.tls_ca)
        server = DeviceServer(
            args.tracker, args.key, token, kind=args.kind, capacity=args.capacity, name=args.name,
            ssl_context=client_ctx, load_grace_s=args.load_grace, backoff_cap=args.backoff_cap,
        )
    except (RpcError, OSError, ValueError) as e:
        return _fail("serve", e)
    print(f"device server {server.name} (key {args.key}) dialling {args.tracker}", flush=True)
    try:
        return _run_until_signal(server.run_forever)
    except RuntimeError as e:  # the backend's child could not start
        return _fail("serve", e)


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

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
    from farm.client_api import connect, workload_artifact
    from farm.errors import FarmError
    from farm.measure import RunOptions

    try:
        shape = [int(x) for x in args.shape.split(",") if x.strip()]
        config = None if args.config == "default" else json.loads(args.config)
    except ValueError as e:
        return _fail("measure", ValueError(f"bad --shape or --config: {e}"))
    try:
        _, client_ctx = make_ssl_contexts(None, None, args.tls_ca)
        with connect(args.tracker, token=load_token(args.token_file), ssl_context=client_ctx) as session:
            target = session.target(args.key)
            artifact = workload_artifact(args.workload, shape, config, target)
            result = session.measure(artifact, key=args.key, options=RunOptions(timeout_s=args.timeout),
                                     queue_timeout_s=args.queue_timeout)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m rpc.cli``: the RPC commands alone, e.g. a tracker on a host without farm's deps."""
    parser = argparse.ArgumentParser(prog="python -m rpc.cli")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
