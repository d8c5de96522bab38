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
from dataclasses import dataclass, field, replace
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
    workload: dict[str, Any] | None = None  # {"name":..., "args": [...], "hash"?}: reference on the device
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. launch dims for PTX
    # The check a user kernel carries: {"kind": "naive" | "outputs", "hash": H} names another artifact
    # (the naive schedule's object, or expected output arrays) shipped content-addressed beside it.
    # Part of the header, so of the hash: a candidate cannot be sent with another's reference.
    reference: dict[str, Any] | None = None

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
        if self.reference is not None:  # absent, not null, when unset: older artifacts keep their hashes
            d["reference"] = self.reference
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
                reference=_reference(header.get("reference")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LoadError(f"malformed artifact header: {e!r}") from e
        want = header.get("hash")
        if want is not None and want != art.hash:
            raise LoadError(f"artifact hash mismatch: header {want[:12]}..., content {art.hash[:12]}...")
        return art

    def with_reference(self, ref: Artifact | None) -> Artifact:
        """This candidate bound to the reference artifact its outputs are checked against."""
        if ref is None:
            return self
        return replace(self, reference={"kind": "naive" if ref.kind == "object" else ref.kind, "hash": ref.hash})

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


REFERENCE_KINDS = ("naive", "outputs")


def _reference(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in REFERENCE_KINDS or not isinstance(raw.get("hash"), str):
        raise LoadError(f"artifact reference must be {{kind: naive|outputs, hash}}, got {raw!r:.80}")
    return {"kind": raw["kind"], "hash": raw["hash"]}


def outputs_artifact(outputs: list[Any], names: list[str], seed: int) -> Artifact:
    """Expected output arrays as an artifact (kind "outputs"): what a device compares with when the
    reference is a numpy function or runs on another machine (float64, C order, concatenated)."""
    import numpy as np  # local: records import the standard library only

    arrays = [np.ascontiguousarray(np.asarray(o, dtype=np.float64)) for o in outputs]
    return Artifact(
        target="", triple="", cpu="", features="", kind="outputs", code=b"".join(a.tobytes() for a in arrays),
        args=tuple(ArgSpec(n, tuple(a.shape), "float64", "out") for n, a in zip(names, arrays)), flops=0.0,
        entry="", meta={"seed": int(seed)},
    )


def outputs_of(art: Artifact) -> list[Any]:
    """The arrays of an ``outputs_artifact``."""
    import numpy as np

    out, off = [], 0
    for spec in art.args:
        n = spec.nbytes
        if off + n > len(art.code):
            raise LoadError(f"reference outputs are {len(art.code)} bytes, their specs need more")
        out.append(np.frombuffer(art.code, dtype=spec.dtype, count=n // 8, offset=off).reshape(spec.shape))
        off += n
    return out
