"""Which machine measured a record: an identity from a device fingerprint.

Two records of one device key are comparable only if one kind of machine measured
both. A fingerprint holds much that changes without the machine changing (the
micro-probe's numbers, the OS, library versions, the core count a container
grants), so the identity keeps only what names the hardware: the ISA, LLVM's CPU
name and the CPU features that are present (a CUDA device: the GPU's name and
compute capability). The raw target string is not used: a newer LLVM spells the
same CPU's target differently (it lists features it did not know before, mostly
as absent ``-feature`` entries, which the identity ignores for that reason).

Standard library only: the records room is imported by the wire and devices.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN_LABEL = "unknown machine"

# Widest vector extension first: the one a label names (x86-64, AArch64, ARMv7).
_SIMD_TAGS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4.2"),
              ("sve2", "sve2"), ("sve", "sve"), ("neon", "neon"))


def normalize_isa(name: str) -> str:
    """``arm64``/``aarch64`` -> ``aarch64``, ``amd64`` -> ``x86_64``; a triple's first word also works."""
    a = str(name).strip().lower().split("-", 1)[0]
    if a in ("arm64", "aarch64"):
        return "aarch64"
    if a in ("x86_64", "amd64"):
        return "x86_64"
    if a.startswith("arm") or a.startswith("thumb"):
        return "arm"
    return a


def present_features(features: Any) -> frozenset[str]:
    """Feature names that are on, without their ``+``: from a list (``["avx2", "+fma"]``) or an
    LLVM string (``"+avx2,-avx512f"``); ``-name`` entries are absent features and dropped."""
    items = features.split(",") if isinstance(features, str) else list(features or ())
    out = set()
    for f in items:
        f = str(f).strip()
        if f and not f.startswith("-"):
            out.add(f.lstrip("+"))
    return frozenset(out)


def _is_cuda(fp: Mapping[str, Any]) -> bool:
    return fp.get("kind") == "cuda" or "gpu_name" in fp or "compute_capability" in fp


def _cpu_parts(fp: Mapping[str, Any]) -> tuple[str, str, frozenset[str]]:
    isa = normalize_isa(str(fp.get("isa") or fp.get("triple") or ""))
    cpu = str(fp.get("cpu_name") or fp.get("cpu") or "")
    return isa, cpu, present_features(fp.get("cpu_features", fp.get("features")))


def machine_identity(fingerprint: Mapping[str, Any] | None) -> str:
    """A stable short id of the machine a fingerprint describes; ``""`` when it says nothing
    about the hardware (an empty fingerprint, a record from before fingerprints)."""
    fp = fingerprint or {}
    if _is_cuda(fp):
        gpu, cc = str(fp.get("gpu_name") or ""), str(fp.get("compute_capability") or "")
        if not gpu and not cc:
            return ""
        return _digest((("kind", "cuda"), ("gpu", gpu), ("cc", cc)))
    isa, cpu, feats = _cpu_parts(fp)
    if not (isa or cpu or feats):
        return ""
    key: tuple[tuple[str, Any], ...] = (("isa", isa), ("cpu", cpu), ("features", tuple(sorted(feats))))
    if fp.get("emulated"):  # the same CPU name under QEMU times nothing like the real board
        key += (("emulated", True),)
    return _digest(key)


@functools.lru_cache(maxsize=256)
def _digest(key: tuple[tuple[str, Any], ...]) -> str:
    # A log holds few machines and many records: hash each machine once.
    blob = json.dumps(dict(key), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def machine_label(fingerprint: Mapping[str, Any] | None) -> str:
    """For people: ``emeraldrapids x86_64 avx512``, ``cortex-a72 aarch64 neon``, ``NVIDIA H100 sm_90``."""
    fp = fingerprint or {}
    if not machine_identity(fp):
        return UNKNOWN_LABEL
    if _is_cuda(fp):
        cc = str(fp.get("compute_capability") or "").replace(".", "")
        return " ".join(p for p in (str(fp.get("gpu_name") or "GPU"), f"sm_{cc}" if cc else "") if p)
    isa, cpu, feats = _cpu_parts(fp)
    simd = next((tag for feat, tag in _SIMD_TAGS if feat in feats), "")
    words = [w for w in (cpu, isa, simd) if w]
    return " ".join(words) + (" (emulated)" if fp.get("emulated") else "")


@dataclass(frozen=True)
class Machine:
    """A machine as records name it: its identity (``""``: unknown) and a label for people."""

    identity: str
    label: str

    @classmethod
    def of(cls, fingerprint: Mapping[str, Any] | None) -> Machine:
        return cls(machine_identity(fingerprint), machine_label(fingerprint))

    @property
    def known(self) -> bool:
        return bool(self.identity)

    def __str__(self) -> str:
        return f"{self.label} [{self.identity}]" if self.identity else self.label

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "label": self.label}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Machine:
        return cls(str(d.get("identity", "")), str(d.get("label", UNKNOWN_LABEL)))


# --- what a target needs ----------------------------------------------------------

def _target_options(target: str) -> tuple[str, dict[str, str]]:
    try:
        parts = shlex.split(target)
    except ValueError:
        parts = target.split()
    if not parts:
        return "", {}
    opts = dict(p.split("=", 1) for p in parts[1:] if p.startswith("-") and "=" in p)
    return parts[0], opts


def target_isa(target: str) -> str:
    """The ISA a target string builds for: its ``-mtriple``'s, ``nvptx64`` for CUDA, ``""`` when
    it names none (an ``llvm`` target without a triple builds for whatever host compiles it)."""
    kind, opts = _target_options(target)
    if kind in ("cuda", "nvptx"):
        return "nvptx64"
    return normalize_isa(opts["-mtriple"]) if "-mtriple" in opts else ""


def target_features(target: str) -> frozenset[str]:
    """The features a target string's ``-mattr`` asks for (``+name``), without the ``+``."""
    _, opts = _target_options(target)
    return present_features(opts.get("-mattr", ""))


def missing_features(required: Iterable[str] | str, available: Iterable[str] | str) -> list[str]:
    """The required features that ``available`` lacks, sorted; each side a list of names (``+``
    optional) or an LLVM feature string."""
    return sorted(present_features(required) - present_features(available))
