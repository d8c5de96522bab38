"""CPU backend: load relocatable objects with llvmlite MCJIT, run the native timer.

Also the in-process loader behind ``farm.build(...)`` modules on the host.
"""
from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from farm.artifact import ENTRY_SYMBOL, THREADS_SYMBOL, TIMER_SYMBOL, Artifact, ArgSpec
from farm.errors import ArgumentError, LoadError
from farm.measure import MeasureResult, Outcome, RunOptions

log = logging.getLogger(__name__)

_MAIN_T = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))
_TIME_T = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64)


class LoadedKernel:
    """A CPU object loaded into this process with MCJIT."""

    def __init__(self, artifact: Artifact, num_threads: int = 0) -> None:
        from farm.target import _arch_of, _llvm, host_triple

        if artifact.kind != "object":
            raise LoadError(f"CPU devices load 'object' artifacts, got {artifact.kind!r}")
        if _arch_of(artifact.triple) != _arch_of(host_triple()):
            raise LoadError(f"artifact is for {artifact.triple}, this device is {host_triple()}")
        if not artifact.code.startswith(b"\x7fELF"):
            raise LoadError("artifact code is not an ELF object")
        from devices.elf import check_object

        check_object(artifact.code, _arch_of(host_triple()))  # truncated / relabelled objects crash MCJIT
        llvm = _llvm()
        self.artifact = artifact
        tm = llvm.Target.from_triple(host_triple()).create_target_machine()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        try:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(artifact.code))
            self._engine.finalize_object()
        except RuntimeError as e:
            raise LoadError(f"MCJIT could not load the object: {e}") from e
        addr = self._engine.get_function_address(ENTRY_SYMBOL)
        taddr = self._engine.get_function_address(TIMER_SYMBOL)
        naddr = self._engine.get_global_value_address(THREADS_SYMBOL)
        if not addr or not taddr or not naddr:
            raise LoadError(f"object lacks {ENTRY_SYMBOL}/{TIMER_SYMBOL}/{THREADS_SYMBOL}")
        self._main = _MAIN_T(addr)
        self._time = _TIME_T(taddr)
        self._threads = ctypes.c_int32.from_address(naddr)
        self.set_num_threads(num_threads)
        _use_gomp(self._engine)

    def set_num_threads(self, n: int) -> None:
        self._threads.value = int(n) if n and n > 0 else (os.cpu_count() or 1)

    def _argv(self, arrays: Sequence[np.ndarray]) -> Any:
        specs = self.artifact.args
        if len(arrays) != len(specs):
            raise ArgumentError(f"kernel takes {len(specs)} arrays ({', '.join(s.name for s in specs)}), got {len(arrays)}")
        for a, s in zip(arrays, specs):
            check_array(a, s)
        argv = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        return argv

    def __call__(self, *arrays: np.ndarray) -> None:
        self._main(self._argv(arrays))

    def time(self, arrays: Sequence[np.ndarray], number: int) -> float:
        """Seconds for ``number`` back-to-back calls, clocked in native code."""
        return float(self._time(self._argv(arrays), int(number)))

    def time_evaluator(self, arrays: Sequence[np.ndarray], number: int = 1, repeat: int = 3,
                       min_repeat_ms: float = 0.0, cooldown_ms: float = 0.0) -> list[float]:
        """TVM semantics: one warm-up call; ``number`` raised until a repeat lasts
        ``min_repeat_ms``; returns seconds per call for each of ``repeat`` repeats."""
        argv = self._argv(arrays)
        self._time(argv, 1)
        number = max(1, int(number))
        if min_repeat_ms > 0:
            while True:
                t = self._time(argv, number)
                if t * 1e3 >= min_repeat_ms or number >= 1 << 30:
                    break
                scale = min_repeat_ms / max(t * 1e3, 1e-3)
                number = int(number * min(max(scale * 1.1, 1.5), 100)) + 1
        out = []
        for _ in range(max(1, int(repeat))):
            if cooldown_ms > 0:
                time.sleep(cooldown_ms / 1e3)
            out.append(self._time(argv, number) / number)
        self.last_number = number
        return out


_GOMP: tuple[int, int] | None = None


def _gomp_symbols() -> tuple[int, int]:
    """Addresses of GOMP_parallel and omp_get_thread_num, or (0, 0) without libgomp."""
    global _GOMP
    if _GOMP is None:
        import ctypes.util

        _GOMP = (0, 0)
        # libgomp's default wait spins ~300k iterations: on a small or shared machine
        # the spinner steals the core the other thread needs (2 GFLOPS on matmul 256^3
        # under load). Passive waiters pay a futex wake per region (120 GFLOPS idle).
        # A short spin then sleep measured best both idle (184) and under two busy
        # loops (92 vs 50 passive). Users may override either variable.
        os.environ.setdefault("GOMP_SPINCOUNT", "20000")
        name = ctypes.util.find_library("gomp") or "libgomp.so.1"
        try:
            lib = ctypes.CDLL(name)
            _GOMP = (ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value or 0,
                     ctypes.cast(lib.omp_get_thread_num, ctypes.c_void_p).value or 0)
        except (OSError, AttributeError):
            log.info("libgomp not found: parallel loops start pthreads per region")
    return _GOMP


def _use_gomp(engine: Any) -> None:
    """Point the object's runtime at libgomp's persistent thread pool when present."""
    par, tnum = _gomp_symbols()
    a = engine.get_global_value_address("kf_gomp_parallel")
    b = engine.get_global_value_address("kf_gomp_thread_num")
    if par and tnum and a and b:
        ctypes.c_void_p.from_address(a).value = par
        ctypes.c_void_p.from_address(b).value = tnum


def check_array(a: Any, spec: ArgSpec) -> None:
    if not isinstance(a, np.ndarray):
        raise ArgumentError(f"argument {spec.name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(spec.dtype):
        raise ArgumentError(f"argument {spec.name}: dtype {a.dtype}, kernel expects {spec.dtype}")
    if tuple(a.shape) != tuple(spec.shape):
        raise ArgumentError(f"argument {spec.name}: shape {tuple(a.shape)}, kernel expects {tuple(spec.shape)}")
    if not a.flags.c_contiguous:
        raise ArgumentError(f"argument {spec.name}: array is not C-contiguous (use np.ascontiguousarray)")
    if spec.role == "out" and not a.flags.writeable:
        raise ArgumentError(f"argument {spec.name}: output array is read-only")


def aligned_empty(shape: Sequence[int], dtype: str, align: int = 64) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(n + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dt).reshape(shape)


def seeded_inputs(specs: Sequence[ArgSpec], seed: int) -> list[np.ndarray]:
    """Inputs drawn from a seeded generator; outputs zeroed. 64-byte aligned."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        a = aligned_empty(s.shape, s.dtype)
        if s.role == "out":
            a[...] = 0
        elif np.dtype(s.dtype).kind == "f":
            a[...] = rng.uniform(-1.0, 1.0, size=s.shape).astype(s.dtype)
        else:
            a[...] = rng.integers(-4, 5, size=s.shape).astype(s.dtype)
        out.append(a)
    return out


def compare(got: np.ndarray, want: np.ndarray, rtol: float) -> str | None:
    """None if close, else a message. Scaled max-norm: robust to float32 reduction order."""
    if got.shape != want.shape:
        return f"shape {got.shape} != reference {want.shape}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.all(np.isfinite(g) == np.isfinite(w)):
        return "non-finite values where the reference has finite ones (or the reverse)"
    fin = np.isfinite(w)
    scale = max(float(np.max(np.abs(w[fin]))) if fin.any() else 0.0, 1e-6)
    err = float(np.max(np.abs(g[fin] - w[fin]))) if fin.any() else 0.0
    if err > rtol * scale:
        bad = int(np.argmax(np.abs(g - w) * fin))
        return (f"max abs error {err:.3g} exceeds {rtol:g} x max|ref| ({scale:.3g}); "
                f"first bad element flat index {bad}: got {g.flat[bad]:.6g}, want {w.flat[bad]:.6g}")
    return None


def reference_outputs(artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """The workload's numpy reference for this artifact's outputs, if it names one."""
    if not artifact.workload:
        return None
    from farm.workloads import get_workload

    wl = get_workload(artifact.workload["name"])
    ins = [a for a, s in zip(inputs, artifact.args) if s.role == "in"]
    outs = wl.reference(list(artifact.workload["args"]), ins)
    return [np.asarray(o) for o in outs]


_REF_CACHE: "collections.OrderedDict[str, list[np.ndarray] | None]" = collections.OrderedDict()
_REF_CACHE_SIZE = 4


def seeded_reference(artifact: Artifact, inputs: Sequence[np.ndarray], seed: int) -> list[np.ndarray] | None:
    """``reference_outputs`` for ``seeded_inputs(artifact.args, seed)``, cached.

    A campaign checks many configs of one workload on the same seeded inputs;
    the float64 numpy reference (seconds for a large conv2d) is the same for
    all of them, so a warm device worker computes it once."""
    key = json.dumps([artifact.workload, seed, [a.to_json() for a in artifact.args]], sort_keys=True)
    if key in _REF_CACHE:
        _REF_CACHE.move_to_end(key)
        return _REF_CACHE[key]
    ref = reference_outputs(artifact, inputs)
    _REF_CACHE[key] = ref
    while len(_REF_CACHE) > _REF_CACHE_SIZE:
        _REF_CACHE.popitem(last=False)
    return ref


class CpuBackend:
    """Runs CPU artifacts in this process: load, check, time."""

    kind = "cpu"

    def __init__(self, key: str = "") -> None:
        self.key = key

    def describe(self) -> dict[str, Any]:
        from devices.fingerprint import cpu_fingerprint

        return cpu_fingerprint()

    def run_job(self, artifact: Artifact, options: RunOptions) -> MeasureResult:
        t0 = time.perf_counter()
        try:
            k = LoadedKernel(artifact, options.num_threads)
        except LoadError as e:
            return MeasureResult.error(Outcome.LOAD_ERROR, str(e), flops=artifact.flops, device_key=self.key)
        load_s = time.perf_counter() - t0
        arrays = seeded_inputs(artifact.args, options.seed)
        checked = False
        if options.check:
            ref = seeded_reference(artifact, arrays, options.seed)
            if ref is not None:
                k(*arrays)
                outs = [a for a, s in zip(arrays, artifact.args) if s.role == "out"]
                for o, r, s in zip(outs, ref, [s for s in artifact.args if s.role == "out"]):
                    msg = compare(o, r, options.rtol)
                    if msg is not None:
                        return MeasureResult.error(Outcome.WRONG_ANSWER, f"output {s.name}: {msg}",
                                                   flops=artifact.flops, device_key=self.key, load_s=load_s)
                checked = True
        t1 = time.perf_counter()
        costs = k.time_evaluator(arrays, options.number, options.repeat, options.min_repeat_ms, options.cooldown_ms)
        return MeasureResult(Outcome.OK, tuple(costs), "", artifact.flops, k.last_number, load_s,
                             time.perf_counter() - t1, self.key, checked)


