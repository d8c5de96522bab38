"""CUDA backend: load PTX artifacts through the driver API, check them, time them with events.

The protocol is the CPU backend's (``devices.base.DeviceBackend``): seeded
inputs and the workload's numpy reference (the CPU backend's helpers), then
TVM's time_evaluator semantics on the GPU: one warm-up launch; ``number``
launches per repeat between two CUDA events on the default stream, raised
until a repeat lasts ``min_repeat_ms``; ``repeat`` repeats; optional cooldown
and L2 flush (a memset of twice the L2 size) before each repeat.

Outcomes: PTX the driver's JIT rejects, a missing entry or an artifact for a
newer architecture than the device → LOAD_ERROR; launch or execution failures
(illegal address, out of resources, trap) → RUNTIME_ERROR, after which the
primary context is reset because such errors are sticky; driver errors that
mean the GPU is gone (no device, uncorrectable ECC, device unavailable) →
DEVICE_LOST. A kernel that hangs is the device server's to kill (RUN_TIMEOUT).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from devices.check import expected_outputs
from devices.cuda_driver import DEVICE_LOST_CODES, CudaError, Driver
from farm.errors import LoadError
from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, Outcome, RunOptions
from farm.runtime.buffers import compare, seeded_inputs

log = logging.getLogger(__name__)


def _sm(arch: str) -> int:
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise LoadError(f"artifact architecture {arch!r} is not of the form sm_XY")
    return int(arch[3:])


def _dims(meta: dict[str, Any], key: str) -> tuple[int, int, int]:
    try:
        d = tuple(int(x) for x in meta[key])
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"PTX artifact lacks launch dimension {key!r} in its meta ({e!r})") from e
    if len(d) != 3 or min(d) < 1:
        raise LoadError(f"launch dimension {key} must be three positive ints, got {meta.get(key)!r}")
    return d  # type: ignore[return-value]


class CudaBackend:
    """One GPU (ordinal among the visible ones) through libcuda."""

    kind = "cuda"

    def __init__(self, key: str = "", ordinal: int = 0, driver: Any = None) -> None:
        self.key = key
        self.drv = driver if driver is not None else Driver(ordinal)
        self._fingerprint: dict[str, Any] | None = None
        self._flush_buf: tuple[int, int] | None = None

    # --- description ---------------------------------------------------------------
    def sm(self) -> int:
        return self.drv.attribute("cc_major") * 10 + self.drv.attribute("cc_minor")

    def describe(self) -> dict[str, Any]:
        """GPU name, compute capability, SM count, memory, driver; plus the host's basics."""
        if self._fingerprint is None:
            d = self.drv
            major, minor = d.attribute("cc_major"), d.attribute("cc_minor")
            ver = d.driver_version()
            fp: dict[str, Any] = {
                "kind": "cuda", "isa": "nvptx64", "triple": "nvptx64-nvidia-cuda",
                "target": f"cuda -arch=sm_{major}{minor}",
                "gpu_name": d.name(), "compute_capability": f"{major}.{minor}",
                "sm_count": d.attribute("sm_count"), "memory_bytes": d.total_memory(),
                "driver_version": f"{ver // 1000}.{ver % 1000 // 10}",
            }
            for attr in ("clock_khz", "memory_clock_khz", "memory_bus_bits", "l2_bytes", "max_threads_per_block",
                         "max_shared_per_block", "max_shared_per_block_optin"):
                try:
                    fp[attr] = d.attribute(attr)
                except CudaError:  # an old driver may not know an attribute; the rest still describes the GPU
                    fp[attr] = None
            try:
                from devices.fingerprint import cpu_fingerprint

                host = cpu_fingerprint(probe=False)  # the CPU micro-probe says nothing about the GPU
                fp["host"] = {k: host.get(k) for k in ("isa", "cpu_model", "cores", "memory_bytes", "os")}
                fp["probe"] = {"skipped": "cuda"}
                fp["versions"] = host.get("versions", {})
            except Exception:  # the host part is informative only; the GPU part is what matters
                log.debug("host fingerprint unavailable", exc_info=True)
            self._fingerprint = fp
        return dict(self._fingerprint)

    # --- one job --------------------------------------------------------------------
    def run_job(self, artifact: Artifact, options: RunOptions, reference: Artifact | None = None) -> MeasureResult:
        kw = {"flops": artifact.flops, "device_key": self.key}
        try:
            grid, block = self._validate(artifact)
        except LoadError as e:
            return MeasureResult.error(Outcome.LOAD_ERROR, str(e), **kw)
        t0 = time.perf_counter()
        module = None
        try:
            self.drv.activate()
            module = self.drv.load_module(artifact.code)
            fn = self.drv.function(module, artifact.entry)
        except CudaError as e:
            return MeasureResult.error(self._outcome(e, Outcome.LOAD_ERROR), str(e), **kw)
        load_s = time.perf_counter() - t0
        ptrs: list[int] = []
        try:
            return self._measure(artifact, options, fn, grid, block, ptrs, load_s, reference)
        except CudaError as e:
            outcome = self._outcome(e, Outcome.RUNTIME_ERROR)
            log.info("kernel failed (%s); resetting the context", e)
            self.drv.reset()  # frees the module and buffers too
            module, ptrs, self._flush_buf = None, [], None
            return MeasureResult.error(outcome, str(e), load_s=load_s, **kw)
        finally:
            self._release(module, ptrs)

    def _validate(self, artifact: Artifact) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        if artifact.kind != "ptx":
            raise LoadError(f"CUDA devices load 'ptx' artifacts, got {artifact.kind!r}")
        if not artifact.triple.startswith("nvptx"):
            raise LoadError(f"artifact is for {artifact.triple}, this device runs nvptx64-nvidia-cuda")
        want, have = _sm(artifact.cpu), self.sm()
        if want > have:
            raise LoadError(f"artifact is for sm_{want}, this GPU is sm_{have}")
        return _dims(artifact.meta, "grid"), _dims(artifact.meta, "block")

    @staticmethod
    def _outcome(e: CudaError, default: Outcome) -> Outcome:
        return Outcome.DEVICE_LOST if e.code in DEVICE_LOST_CODES else default

    def _release(self, module: int | None, ptrs: Sequence[int]) -> None:
        for p in ptrs:
            try:
                self.drv.free(p)
            except CudaError:
                log.warning("cuMemFree failed", exc_info=True)
        if module is not None:
            try:
                self.drv.unload_module(module)
            except CudaError:
                log.warning("cuModuleUnload failed", exc_info=True)

    def _measure(self, artifact: Artifact, options: RunOptions, fn: int, grid: tuple[int, int, int],
                 block: tuple[int, int, int], ptrs: list[int], load_s: float,
                 reference: Artifact | None = None) -> MeasureResult:
        d = self.drv
        kw = {"flops": artifact.flops, "device_key": self.key, "load_s": load_s}
        extra = {name: d.function_attribute(fn, name) for name in ("registers", "local_bytes", "shared_bytes")}
        limit = d.function_attribute(fn, "max_threads_per_block")
        threads = block[0] * block[1] * block[2]
        if threads > limit:
            return MeasureResult.error(
                Outcome.RUNTIME_ERROR,
                f"block of {threads} threads exceeds this kernel's limit of {limit} "
                f"({extra['registers']} registers/thread)",
                extra=extra,
                **kw,
            )
        arrays = seeded_inputs(artifact.args, options.seed)
        for a, spec in zip(arrays, artifact.args):
            ptrs.append(d.alloc(a.nbytes))
            if spec.role == "in":
                d.copy_to_device(ptrs[-1], a)
            else:
                d.memset(ptrs[-1], 0, a.nbytes)
        d.launch(fn, grid, block, 0, ptrs)
        d.synchronize()
        checked = False
        if options.check:
            try:
                ref = expected_outputs(artifact, arrays, options.seed, reference)
            except LoadError as e:
                return MeasureResult.error(Outcome.LOAD_ERROR, str(e), extra=extra, **kw)
            if ref is not None:
                outs = [(a, p, s) for a, p, s in zip(arrays, ptrs, artifact.args) if s.role == "out"]
                for (a, p, s), r in zip(outs, ref):
                    d.copy_to_host(a, p)
                    msg = compare(a, r, options.rtol)
                    if msg is not None:
                        return MeasureResult.error(Outcome.WRONG_ANSWER, f"output {s.name}: {msg}", extra=extra, **kw)
                checked = True
        t1 = time.perf_counter()
        costs, number = self.time_evaluator(fn, grid, block, ptrs, options)
        return MeasureResult(Outcome.OK, tuple(costs), "", artifact.flops, number, load_s,
                             time.perf_counter() - t1, self.key, checked, extra)

    # --- timing ---------------------------------------------------------------------
    def time_evaluator(self, fn: int, grid: Sequence[int], block: Sequence[int], ptrs: Sequence[int],
                       options: RunOptions) -> tuple[list[float], int]:
        """Seconds per launch for each repeat, and the ``number`` used (TVM semantics)."""
        d = self.drv
        start, stop = d.event(), d.event()
        try:
            def batch(n: int) -> float:
                d.record(start)
                for _ in range(n):
                    d.launch(fn, grid, block, 0, ptrs)
                d.record(stop)
                return d.elapsed_ms(start, stop) / 1e3

            batch(1)  # warm-up: JIT caches, clocks, TLBs
            number = max(1, int(options.number))
            if options.min_repeat_ms > 0:
                while True:
                    t = batch(number)
                    if t * 1e3 >= options.min_repeat_ms or number >= 1 << 24:
                        break
                    scale = options.min_repeat_ms / max(t * 1e3, 1e-3)
                    number = int(number * min(max(scale * 1.1, 1.5), 100)) + 1
            out = []
            for _ in range(max(1, int(options.repeat))):
                if options.cooldown_ms > 0:
                    time.sleep(options.cooldown_ms / 1e3)
                if options.flush_cache:
                    self._flush_l2()
                out.append(batch(number) / number)
            return out, number
        finally:
            for ev in (start, stop):
                try:
                    d.destroy_event(ev)
                except CudaError:
                    log.debug("cuEventDestroy failed", exc_info=True)

    def _flush_l2(self) -> None:
        if self._flush_buf is None:
            n = 2 * max(self.drv.attribute("l2_bytes"), 1 << 20)
            self._flush_buf = (self.drv.alloc(n), n)
        ptr, n = self._flush_buf
        self.drv.memset(ptr, 0, n)


def run_arrays(backend: CudaBackend, artifact: Artifact, arrays: Sequence[np.ndarray]) -> None:
    """Run an artifact once on host arrays (outputs copied back): for tests and notebooks."""
    d = backend.drv
    grid, block = backend._validate(artifact)
    d.activate()
    module = d.load_module(artifact.code)
    ptrs: list[int] = []
    try:
        fn = d.function(module, artifact.entry)
        for a, spec in zip(arrays, artifact.args):
            ptrs.append(d.alloc(a.nbytes))
            d.copy_to_device(ptrs[-1], np.ascontiguousarray(a, dtype=spec.dtype))
        d.launch(fn, grid, block, 0, ptrs)
        d.synchronize()
        for a, p, spec in zip(arrays, ptrs, artifact.args):
            if spec.role == "out":
                d.copy_to_host(a, p)
    finally:
        backend._release(module, ptrs)
