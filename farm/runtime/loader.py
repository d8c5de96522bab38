"""The CPU runtime: load a relocatable object with llvmlite MCJIT, call it, time it natively.

Imported by the builder (``farm.build(...)`` modules run on the host) and by the
CPU device backend; it imports neither.
"""
from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from farm.errors import ArgumentError, LoadError
from farm.records.artifact import ENTRY_SYMBOL, THREADS_SYMBOL, TIMER_SYMBOL, Artifact
from farm.runtime.buffers import check_array
from farm.runtime.elf import check_object
from farm.target import _arch_of, _llvm, host_triple

log = logging.getLogger(__name__)

_MAIN_T = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))
_TIME_T = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64)


class LoadedKernel:
    """A CPU object loaded into this process with MCJIT."""

    def __init__(self, artifact: Artifact, num_threads: int = 0) -> None:
        if artifact.kind != "object":
            raise LoadError(f"CPU devices load 'object' artifacts, got {artifact.kind!r}")
        if _arch_of(artifact.triple) != _arch_of(host_triple()):
            raise LoadError(f"artifact is for {artifact.triple}, this device is {host_triple()}")
        if not artifact.code.startswith(b"\x7fELF"):
            raise LoadError("artifact code is not an ELF object")
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
            raise ArgumentError(
                f"kernel takes {len(specs)} arrays ({', '.join(s.name for s in specs)}), got {len(arrays)}"
            )
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
