"""`farm tracker` and `farm serve`: the server side, importable without the tuning side.

This is an edge: the token is read here (``--token-file`` or ``FARM_TOKEN``)
and handed down as bytes; library code never reads the environment.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from rpc.auth import load_token
from rpc.errors import RpcError
from rpc.transport import make_ssl_contexts

log = logging.getLogger(__name__)


def add_common(p: argparse.ArgumentParser, *, dial: bool) -> None:
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
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the live page and JSON API here (PORT alone: 127.0.0.1:PORT; 0 picks a free port)")
    p.add_argument("--http-cert", help="PEM certificate chain for the page (default: --tls-cert)")
    p.add_argument("--http-key", help="PEM private key for the page (default: --tls-key)")
    p.add_argument("--http-insecure", action="store_true",
                   help="allow --http on a non-loopback address without TLS (e.g. behind a TLS proxy)")
    add_common(p, dial=False)
    p.set_defaults(func=cmd_tracker)

    p = subparsers.add_parser("serve", help="run a device server that dials out to a tracker")
    add_common(p, dial=True)
    p.add_argument("--key", required=True, help="device key, e.g. rpi4")
    p.add_argument("--kind", default="cpu", help="backend: cpu, cuda, or module:Class")
    p.add_argument("--capacity", type=int, default=1, help="concurrent jobs (1 for clean timings)")
    p.add_argument("--name", help="device name shown by `farm query` (default host-pid)")
    p.add_argument("--load-grace", type=float, default=10.0, help="seconds added to a job's timeout for loading")
    p.add_argument("--backoff-cap", type=float, default=5.0, help="longest wait between reconnects, seconds")
    p.set_defaults(func=cmd_serve)


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
    from rpc.tracker import Tracker

    if args.ray or args.stop:
        return _cmd_ray_tracker(args)
    try:
        token = load_token(args.token_file)
        server_ctx, _ = make_ssl_contexts(args.tls_cert, args.tls_key, None)
        http = _http_options(args)
        http_ctx = make_ssl_contexts(http[2], http[3], None)[0] if http else None
    except (RpcError, OSError, ValueError) as e:
        return _fail("tracker", e)

    async def main() -> None:
        tracker = Tracker(token, heartbeat_s=args.heartbeat, max_retries=args.max_retries, ssl_context=server_ctx,
                          frame_timeout=args.frame_timeout, handshake_timeout=args.handshake_timeout,
                          log_path=args.log)
        host, port = await tracker.start(args.host, args.port)
        print(f"tracker listening on {host}:{port}", flush=True)
        if http:
            h, p = await tracker.start_http(http[0], http[1], ssl_context=http_ctx)
            print(f"tracker page on {'https' if http_ctx else 'http'}://{_url_host(h)}:{p}/", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await tracker.stop()

    try:
        return _run_until_signal(main)
    except (OSError, RpcError) as e:  # port in use; another writer holds --log
        return _fail("tracker", e)


def _http_options(args: argparse.Namespace) -> tuple[str, int, str | None, str | None] | None:
    """(host, port, cert, key) of --http, or None; refuses a page off loopback without TLS."""
    if not args.http:
        return None
    from rpc.web import check_exposure, parse_http_address

    host, port = parse_http_address(args.http)
    cert, key = args.http_cert or args.tls_cert, args.http_key or args.tls_key
    if bool(cert) != bool(key):
        raise ValueError("the page's TLS needs both --http-cert and --http-key")
    check_exposure(host, tls=bool(cert), insecure=args.http_insecure)
    return host, port, cert, key


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _cmd_ray_tracker(args: argparse.Namespace) -> int:
    from rpc import ray_tracker

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
        http = _http_options(args)
        opts = ray_tracker.TrackerOptions(
            host=args.host, port=args.port, heartbeat_s=args.heartbeat, max_retries=args.max_retries,
            frame_timeout=args.frame_timeout, handshake_timeout=args.handshake_timeout,
            log_path=os.path.abspath(args.log) if args.log else None, token_file=token_file,
            token=None if token_file else token,
            http=None if http is None else (http[0], http[1]),
            http_cert=os.path.abspath(http[2]) if http and http[2] else None,
            http_key=os.path.abspath(http[3]) if http and http[3] else None,
        )
        handle, address = ray_tracker.start(opts, name, ns)
        pid = ray_tracker.actor_pid(handle)
    except (RpcError, OSError, ValueError) as e:
        return _fail("tracker", e)
    except Exception as e:  # noqa: BLE001 - Ray's own errors (no cluster, actor died in its constructor)
        return _fail("tracker", RuntimeError(f"{type(e).__name__}: {str(e)[:500]}"))
    print(f"tracker listening on {address} (Ray actor {ns}/{name}, pid {pid}; "
          f"stop with `farm tracker --ray --stop`)", flush=True)
    if http is not None:
        print(f"tracker page on {ray_tracker.page_url(handle)}", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rpc.server import DeviceServer

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
