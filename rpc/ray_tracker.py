"""`farm tracker --ray`: the tracker as a detached, named Ray actor that Ray restarts.

The actor (``TrackerActor``) runs the ordinary asyncio :class:`rpc.tracker.Tracker`
on an event-loop thread of its own and binds a *fixed* host and port: when Ray
restarts the actor after a crash, it binds the same address again, and device
servers, which reconnect forever with backoff, find it there and register
anew. Jobs in flight at the crash are lost with the tracker's memory: clients
see ``ConnectionLost`` and resubmit (a campaign classifies them).

The actor is pinned to the node that created it (hard node affinity) because
devices dial a fixed address; it asks for no CPU, so it never takes a build
slot. With ``--log`` it reopens the shared log on each restart (the dead
process's flock went with it).

Ray is imported only inside functions: ``rpc`` must import without Ray.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ACTOR_NAME = "kernelfarm-tracker"
NAMESPACE = "kernelfarm"


@dataclass(frozen=True)
class TrackerOptions:
    """What the actor needs to (re)start its tracker. Paths must be absolute:
    the actor's working directory is Ray's, not the caller's."""

    host: str = "127.0.0.1"
    port: int = 9190
    heartbeat_s: float = 2.0
    max_retries: int = 2
    frame_timeout: float = 30.0
    handshake_timeout: float = 10.0
    log_path: str | None = None
    # Either a token file, read on each (re)start so a rotated file is picked up,
    # or the token itself (then it lives in Ray's actor spec; prefer a file).
    token_file: str | None = None
    token: bytes | None = None
    # The live page (`--http`): (host, port), bound again on each restart like the RPC port;
    # a PEM certificate and key to serve it over TLS.
    http: tuple[str, int] | None = None
    http_cert: str | None = None
    http_key: str | None = None


class TrackerActor:
    """The actor body: a Tracker on its own loop thread, bound at construction."""

    def __init__(self, opts: TrackerOptions) -> None:
        from rpc.tracker import Tracker

        token = opts.token
        if opts.token_file:
            with open(opts.token_file, "rb") as fh:
                token = fh.read().strip()
        if not token:
            raise ValueError("the tracker actor has no token")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kf-tracker", daemon=True)
        self._thread.start()
        self._tracker = Tracker(token, heartbeat_s=opts.heartbeat_s, max_retries=opts.max_retries,
                                frame_timeout=opts.frame_timeout, handshake_timeout=opts.handshake_timeout,
                                log_path=opts.log_path)
        self._page = ""
        try:
            host, port = asyncio.run_coroutine_threadsafe(self._tracker.start(opts.host, opts.port),
                                                          self._loop).result(30)
            if opts.http is not None:
                self._page = self._start_http(opts)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self._address = f"{self._advertised(host)}:{port}"
        log.warning("tracker actor (pid %d) listening on %s", os.getpid(), self._address)

    def _start_http(self, opts: TrackerOptions) -> str:
        from rpc.transport import make_ssl_contexts

        assert opts.http is not None
        ctx = make_ssl_contexts(opts.http_cert, opts.http_key, None)[0] if opts.http_cert else None
        start = self._tracker.start_http(opts.http[0], opts.http[1], ssl_context=ctx)
        host, port = asyncio.run_coroutine_threadsafe(start, self._loop).result(30)
        host = self._advertised(host)
        return f"{'https' if ctx else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/"

    @staticmethod
    def _advertised(host: str) -> str:
        if host in ("0.0.0.0", "::", ""):
            import ray

            return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        return host

    def address(self) -> str:
        return self._address

    def pid(self) -> int:
        return os.getpid()

    def page(self) -> str:
        """The live page's URL ("" without --http)."""
        return self._page


def connect_ray(address: str | None, namespace: str = NAMESPACE) -> None:
    """Join a running Ray cluster (``address``, else ``auto``: the local one)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", namespace=namespace, logging_level=logging.WARNING,
                 log_to_driver=False)


def find(name: str = ACTOR_NAME, namespace: str = NAMESPACE) -> Any | None:
    """The running tracker actor's handle, or None."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def start(opts: TrackerOptions, name: str = ACTOR_NAME, namespace: str = NAMESPACE,
          timeout_s: float = 120.0) -> tuple[Any, str]:
    """Create the detached actor (or find the one already running); returns (handle, address).

    Raises the constructor's error (e.g. the port is taken) after removing the
    dead actor, so a failed start leaves no name behind.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    existing = find(name, namespace)
    if existing is not None:
        return existing, str(ray.get(existing.address.remote(), timeout=timeout_s))
    node = ray.get_runtime_context().get_node_id()
    actor_cls: Any = ray.remote(TrackerActor)  # Ray's stubs do not follow .options().remote()
    handle: Any = actor_cls.options(
        name=name, namespace=namespace, lifetime="detached", max_restarts=-1, max_concurrency=4,
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote(opts)
    try:
        address = str(ray.get(handle.address.remote(), timeout=timeout_s))
    except BaseException:
        ray.kill(handle, no_restart=True)
        raise
    return handle, address


def actor_pid(handle: Any, timeout_s: float = 30.0) -> int:
    import ray

    return int(ray.get(handle.pid.remote(), timeout=timeout_s))


def page_url(handle: Any, timeout_s: float = 30.0) -> str:
    import ray

    return str(ray.get(handle.page.remote(), timeout=timeout_s))


def stop(name: str = ACTOR_NAME, namespace: str = NAMESPACE) -> bool:
    """Remove the actor for good (no restart); False if none was running."""
    import ray

    handle = find(name, namespace)
    if handle is None:
        return False
    ray.kill(handle, no_restart=True)
    return True
