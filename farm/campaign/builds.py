"""Builds as Ray tasks: compile a candidate where the cluster has room.

A build never touches a device. Every failure comes back classified
(COMPILE_ERROR), including an LLVM fatal error that kills the Ray worker.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)


def build_candidate(workload: str | dict[str, str], args: list[int], index: int, target: str) -> dict[str, Any]:
    """Compile one config; returns the artifact header and code, or a classified error.

    ``workload`` is ``Workload.ref()``: a built-in's name, or where a user kernel's module is (Ray's
    ``runtime_env`` brought its directory to this worker)."""
    from farm.workloads.loader import resolve_ref
    from farm.workloads.registry import build_workload

    t0 = time.perf_counter()
    node = ""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - node id is informational
        pass
    try:
        mod = build_workload(resolve_ref(workload), args, str(index), target)
    except Exception as e:  # noqa: BLE001 - any failure of the compiler is this config's COMPILE_ERROR
        return {"ok": False, "outcome": "COMPILE_ERROR", "message": f"{type(e).__name__}: {e}",
                "build_s": time.perf_counter() - t0, "node": node, "pid": os.getpid()}
    art = mod.artifact
    return {"ok": True, "header": art.header(), "code": art.code, "build_s": time.perf_counter() - t0,
            "node": node, "pid": os.getpid()}


_REMOTE: Any = None


def remote_build() -> Any:
    """The Ray remote function (created lazily: importing Ray is slow)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=0)(build_candidate)
    return _REMOTE


def init_ray(address: str | None, num_cpus: int | None = None, py_modules: list[str] | None = None) -> dict[str, Any]:
    """Join ``address`` (or start a local Ray); returns the cluster's resources.

    ``py_modules``: directories of user kernels. Ray packs them and every worker, on any node,
    imports them under the directory's name (``runtime_env``): nothing of ours copies files."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        env = {"runtime_env": {"py_modules": list(py_modules)}} if py_modules else {}
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **env)
        else:
            ray.init(num_cpus=num_cpus or max(1, (os.cpu_count() or 2) - 1), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False, **env)
    return dict(ray.cluster_resources())
