"""Artifact: what a builder produces and a device loads.

Builders never touch devices. The code is a relocatable ELF object for CPU
targets (devices load it with llvmlite MCJIT, no linker) or PTX for CUDA.

Native ABI of CPU objects (see farm.compiler.codegen):
  ``void kf_main(i8** args)``            run the kernel once on the buffers
  ``double kf_time(i8** args, i64 n)``   seconds for ``n`` back-to-back calls,
                                         measured with CLOCK_MONOTONIC in native code
  ``i32 kf_num_threads``                 global: threads for parallel loops
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from farm.errors import LoadError

ENTRY_SYMBOL = "kf_main"
TIMER_SYMBOL = "kf_time"
THREADS_SYMBOL = "kf_num_threads"


@dataclass(frozen=True)
class ArgSpec:
    """One kernel argument: a dense, C-contiguous buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # "in" or "out"

    @property
    def nbytes(self) -> int:
        import numpy as np  # local: rpc/ must not need numpy at import

        n = 1
        for d in self.shape:
            n *= d
        return n * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "role": self.role}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ArgSpec:
        role = str(d["role"])
        if role not in ("in", "out"):
            raise LoadError(f"argument role must be 'in' or 'out', got {role!r}")
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]), role)


@dataclass(frozen=True)
class Artifact:
    """A compiled candidate plus everything a device needs to run and check it."""

    target: str
    triple: str
    cpu: str
    features: str
    kind: str  # "object" | "ptx"
    code: bytes
    args: tuple[ArgSpec, ...]
    flops: float
    entry: str = ENTRY_SYMBOL
    workload: dict[str, Any] | None = None  # {"name":..., "args": [...]}: reference on the device
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. launch dims for PTX

    @property
    def hash(self) -> str:
        """Content address: code plus the header fields that change its meaning."""
        h = hashlib.sha256()
        h.update(json.dumps(self.header(with_hash=False), sort_keys=True).encode())
        h.update(self.code)
        return h.hexdigest()

    def header(self, with_hash: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "triple": self.triple,
            "cpu": self.cpu,
            "features": self.features,
            "kind": self.kind,
            "args": [a.to_json() for a in self.args],
            "flops": self.flops,
            "entry": self.entry,
            "workload": self.workload,
            "meta": self.meta,
            "code_size": len(self.code),
        }
        if with_hash:
            d["hash"] = self.hash
        return d

    @classmethod
    def from_header(cls, header: dict[str, Any], code: bytes) -> Artifact:
        """Rebuild from a header and the code bytes; refuses a wrong size or hash."""
        try:
            if int(header["code_size"]) != len(code):
                raise LoadError(
                    f"artifact code is {len(code)} bytes, header says {header['code_size']} (truncated?)"
                )
            art = cls(
                target=str(header["target"]),
                triple=str(header["triple"]),
                cpu=str(header["cpu"]),
                features=str(header["features"]),
                kind=str(header["kind"]),
                code=bytes(code),
                args=tuple(ArgSpec.from_json(a) for a in header["args"]),
                flops=float(header["flops"]),
                entry=str(header.get("entry", ENTRY_SYMBOL)),
                workload=header.get("workload"),
                meta=dict(header.get("meta") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LoadError(f"malformed artifact header: {e!r}") from e
        want = header.get("hash")
        if want is not None and want != art.hash:
            raise LoadError(f"artifact hash mismatch: header {want[:12]}..., content {art.hash[:12]}...")
        return art

    def to_json(self) -> dict[str, Any]:
        d = self.header()
        d["code_b64"] = base64.b64encode(self.code).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Artifact:
        try:
            code = base64.b64decode(d["code_b64"], validate=True)
        except (KeyError, ValueError) as e:
            raise LoadError(f"artifact code is missing or not base64: {e!r}") from e
        return cls.from_header(d, code)
