"""Load a kernel exported by ``farm export`` and call it on numpy arrays.

This file is copied verbatim into every export directory as ``load_kernel.py``
and must keep working there on its own: it imports only the standard library,
numpy and llvmlite, never kernelfarm. Usage next to the exported files::

    import numpy as np, load_kernel
    k = load_kernel.load("matmul-export")          # reads kernel.json + kernel.o
    C = k(A, B)                                    # inputs only: outputs allocated and returned
    k(A, B, C)                                     # or every argument, in kernel.h's order
    print(k.time(A, B, C, number=100))             # seconds per call, clocked in native code

or from a shell, as a smoke test on the machine that will run it:
``python load_kernel.py DIR`` (runs on random inputs and prints the time).

The object is checked before it is loaded (size, content hash, architecture,
CPU features), because running an object built for other CPU features dies
with SIGILL instead of raising.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportedKernel", "KernelLoadError", "load"]

_MAIN_T = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))
_TIME_T = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64)
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


class KernelLoadError(RuntimeError):
    """The export is incomplete, corrupted, or built for another machine."""


def _arch(triple: str) -> str:
    a = triple.split("-", 1)[0]
    a = _ARCH_ALIASES.get(a, a)
    return "arm" if a.startswith(("arm", "thumb")) and a != "aarch64" else a


def _llvm() -> Any:
    import llvmlite.binding as llvm  # type: ignore[import-untyped]

    # llvmlite >= 0.45 initializes the core itself (and rejects initialize()).
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm


def _check_machine(art: dict[str, Any], llvm: Any) -> None:
    host = str(llvm.get_process_triple())
    if _arch(art["triple"]) != _arch(host):
        raise KernelLoadError(f"kernel is for {art['triple']}, this machine is {host}")
    need = {f[1:] for f in str(art.get("features", "")).split(",") if f.startswith("+")}
    try:
        have = {k for k, on in llvm.get_host_cpu_features().items() if on}
    except RuntimeError:  # LLVM cannot read the host's features here: trust the triple
        return
    missing = sorted(need - have)
    if missing:
        raise KernelLoadError(f"this CPU lacks features the kernel was built for ({art.get('cpu')}): "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")


def _artifact_hash(art: dict[str, Any], code: bytes) -> str:
    # Same content address as kernelfarm's Artifact.hash: the header without its
    # hash as sorted JSON, then the code bytes.
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in art.items() if k != "hash"}, sort_keys=True).encode())
    h.update(code)
    return h.hexdigest()


class ExportedKernel:
    """A tuned kernel loaded into this process with llvmlite's MCJIT."""

    def __init__(self, meta: dict[str, Any], code: bytes, num_threads: int = 0) -> None:
        art = meta["artifact"]
        if art.get("kind") != "object":
            raise KernelLoadError(f"only CPU objects load here, this export is {art.get('kind')!r}")
        if len(code) != int(art["code_size"]):
            raise KernelLoadError(f"kernel.o is {len(code)} bytes, kernel.json says {art['code_size']} (truncated?)")
        if art.get("hash") and _artifact_hash(art, code) != art["hash"]:
            raise KernelLoadError("kernel.o does not match the hash in kernel.json (modified or mixed exports)")
        llvm = _llvm()
        _check_machine(art, llvm)
        self.meta = meta
        self.args: list[dict[str, Any]] = [dict(a, shape=tuple(a["shape"])) for a in art["args"]]
        self.flops = float(art.get("flops", 0.0))
        tm = llvm.Target.from_default_triple().create_target_machine()
        # The engine owns the loaded code; keep it alive as long as this object.
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        try:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(code))
            self._engine.finalize_object()
        except RuntimeError as e:
            raise KernelLoadError(f"MCJIT could not load kernel.o: {e}") from e
        main = self._engine.get_function_address(art.get("entry", "kf_main"))
        timer = self._engine.get_function_address("kf_time")
        threads = self._engine.get_global_value_address("kf_num_threads")
        if not (main and timer and threads):
            raise KernelLoadError("kernel.o lacks kf_main, kf_time or kf_num_threads")
        self._main = _MAIN_T(main)
        self._time = _TIME_T(timer)
        self._threads = ctypes.c_int32.from_address(threads)
        self.num_threads = num_threads

    @property
    def num_threads(self) -> int:
        return int(self._threads.value)

    @num_threads.setter
    def num_threads(self, n: int) -> None:
        """Threads for the kernel's parallel loops; 0 means every core."""
        self._threads.value = int(n) if n and n > 0 else (os.cpu_count() or 1)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [a for a in self.args if a["role"] == "in"]

    def _arrays(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        if len(arrays) == len(self.inputs) and len(arrays) != len(self.args):
            arrays = list(arrays)
            it = iter(arrays)
            arrays = [next(it) if a["role"] == "in" else np.zeros(a["shape"], a["dtype"]) for a in self.args]
        if len(arrays) != len(self.args):
            names = ", ".join(a["name"] for a in self.args)
            raise TypeError(f"kernel takes {len(self.inputs)} inputs or all {len(self.args)} arrays ({names}), "
                            f"got {len(arrays)}")
        for a, spec in zip(arrays, self.args):
            # Checked here because the kernel trusts its buffers: a wrong shape
            # is an out-of-bounds write, not an exception.
            if not isinstance(a, np.ndarray):
                raise TypeError(f"argument {spec['name']}: expected a numpy array, got {type(a).__name__}")
            if a.dtype != np.dtype(spec["dtype"]):
                raise TypeError(f"argument {spec['name']}: dtype {a.dtype}, kernel expects {spec['dtype']}")
            if tuple(a.shape) != spec["shape"]:
                raise ValueError(f"argument {spec['name']}: shape {tuple(a.shape)}, kernel expects {spec['shape']}")
            if not a.flags.c_contiguous:
                raise ValueError(f"argument {spec['name']}: not C-contiguous (use np.ascontiguousarray)")
            if spec["role"] == "out" and not a.flags.writeable:
                raise ValueError(f"argument {spec['name']}: output array is read-only")
        return list(arrays)

    @staticmethod
    def _argv(arrays: Sequence[np.ndarray]) -> Any:
        return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])

    def __call__(self, *arrays: Any) -> Any:
        """Run once. Returns the output array (a tuple if several)."""
        full = self._arrays(arrays)
        self._main(self._argv(full))
        outs = tuple(a for a, s in zip(full, self.args) if s["role"] == "out")
        return outs[0] if len(outs) == 1 else outs

    def time(self, *arrays: Any, number: int = 10) -> float:
        """Seconds per call, averaged over ``number`` back-to-back calls after one warm-up."""
        argv = self._argv(self._arrays(arrays))
        self._time(argv, 1)
        return float(self._time(argv, max(1, int(number)))) / max(1, int(number))


def load(directory: str | os.PathLike[str] = ".", num_threads: int = 0) -> ExportedKernel:
    """Load the kernel exported into ``directory`` (kernel.json + kernel.o)."""
    d = Path(directory)
    try:
        meta = json.loads((d / "kernel.json").read_text())
        code = (d / meta.get("files", {}).get("object", "kernel.o")).read_bytes()
    except (OSError, ValueError) as e:
        raise KernelLoadError(f"{d}: not a complete export: {e}") from e
    return ExportedKernel(meta, code, num_threads)


def _random_inputs(k: ExportedKernel, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for a in k.inputs:
        if np.dtype(a["dtype"]).kind == "f":
            out.append(rng.uniform(-1, 1, a["shape"]).astype(a["dtype"]))
        else:
            out.append(rng.integers(-4, 5, a["shape"]).astype(a["dtype"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run an exported kernel on random inputs and time it")
    p.add_argument("directory", nargs="?", default=str(Path(__file__).resolve().parent))
    p.add_argument("--threads", type=int, default=0, help="threads for parallel loops (0: every core)")
    p.add_argument("--number", type=int, default=20, help="calls to average")
    a = p.parse_args(argv)
    try:
        k = load(a.directory, a.threads)
    except KernelLoadError as e:
        print(f"load_kernel: {e}", file=sys.stderr)
        return 1
    ins = _random_inputs(k)
    outs = k(*ins)
    outs = outs if isinstance(outs, tuple) else (outs,)
    s = k.time(*ins, *outs, number=a.number)
    wl = k.meta.get("workload") or {}
    gflops = k.flops / s / 1e9 if s > 0 else 0.0
    name = f"{wl.get('name', 'kernel')}({','.join(map(str, wl.get('args', ())))})"
    print(f"{name}: {s * 1e3:.4f} ms/call, {gflops:.2f} GFLOPS "
          f"on {k.num_threads} threads (tuned: {k.meta.get('gflops', 0.0):.2f} GFLOPS on {k.meta.get('device_key')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
