"""Targets, parsed from TVM-style strings.

``llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon``,
``llvm -mcpu=native`` (this host's CPU and features), ``cuda -arch=sm_80``.
"""
from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, field
from typing import Any

from farm.errors import TargetError

_KINDS = ("llvm", "cuda", "nvptx")
_LLVM_OPTS = ("-mtriple", "-mcpu", "-mattr", "-num-cores", "-opt-level")
_CUDA_OPTS = ("-arch", "-max-threads-per-block", "-max-shared-memory-per-block")


@functools.lru_cache(maxsize=1)
def _llvm() -> Any:
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm


def host_triple() -> str:
    return str(_llvm().get_process_triple())


@functools.lru_cache(maxsize=1)
def host_cpu() -> tuple[str, str]:
    llvm = _llvm()
    try:
        feats = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        feats = ""
    return str(llvm.get_host_cpu_name()), str(feats)


@dataclass(frozen=True)
class Target:
    """A compilation target: LLVM CPU (x86-64, AArch64, ARMv7) or CUDA (NVPTX)."""

    kind: str
    triple: str
    cpu: str = "generic"
    features: str = ""
    options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        if isinstance(text, Target):
            return text
        if not isinstance(text, str) or not text.strip():
            raise TargetError(f"empty target string {text!r}")
        try:
            parts = shlex.split(text)
        except ValueError as e:
            raise TargetError(f"target {text!r}: {e}") from e
        kind, opts = parts[0], {}
        if kind not in _KINDS:
            raise TargetError(f"target {text!r}: unknown kind {kind!r}; expected one of {', '.join(_KINDS)}")
        allowed = _LLVM_OPTS if kind == "llvm" else _CUDA_OPTS + ("-mcpu",)
        for p in parts[1:]:
            if "=" not in p or not p.startswith("-"):
                raise TargetError(f"target {text!r}: option {p!r} must look like -name=value")
            k, v = p.split("=", 1)
            if k not in allowed:
                raise TargetError(f"target {text!r}: unknown option {k}; known: {', '.join(allowed)}")
            if not v:
                raise TargetError(f"target {text!r}: option {k} has an empty value")
            opts[k] = v
        if kind in ("cuda", "nvptx"):
            arch = opts.get("-arch", opts.get("-mcpu", "sm_80"))
            if not arch.startswith("sm_") or not arch[3:].isdigit():
                raise TargetError(f"target {text!r}: -arch must look like sm_80, got {arch!r}")
            return cls("cuda", "nvptx64-nvidia-cuda", arch, "+ptx80", opts)
        triple = opts.get("-mtriple", host_triple())
        try:
            _llvm().Target.from_triple(triple)
        except RuntimeError as e:
            raise TargetError(f"target {text!r}: LLVM does not know triple {triple!r} ({str(e).strip()})") from e
        cpu = opts.get("-mcpu", "generic")
        feats = opts.get("-mattr", "")
        if cpu == "native":
            if "-mtriple" in opts and _arch_of(triple) != _arch_of(host_triple()):
                raise TargetError(f"target {text!r}: -mcpu=native only makes sense for this host's triple")
            cpu, host_feats = host_cpu()
            feats = ",".join(f for f in [host_feats, feats] if f)
        for f in filter(None, feats.split(",")):
            if f[0] not in "+-":
                raise TargetError(f"target {text!r}: feature {f!r} must start with + or -")
        return cls("llvm", triple, cpu, feats, opts)

    @classmethod
    def host(cls) -> Target:
        return cls.parse("llvm -mcpu=native")

    def __str__(self) -> str:
        if self.kind == "cuda":
            return f"cuda -arch={self.cpu}"
        out = f"llvm -mtriple={self.triple} -mcpu={self.cpu}"
        return out + (f" -mattr={self.features}" if self.features else "")

    @property
    def arch(self) -> str:
        return _arch_of(self.triple)

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")

    @property
    def vector_bits(self) -> int:
        """Widest useful SIMD register in bits (drives knob ranges in templates)."""
        if self.arch == "x86_64":
            if self.has("avx512f"):
                return 512
            return 256 if self.has("avx2") or self.has("avx") else 128
        if self.arch in ("aarch64", "arm"):
            return 128
        return 32

    @property
    def vector_lanes_f32(self) -> int:
        return max(1, self.vector_bits // 32)

    @property
    def num_vector_registers(self) -> int:
        if self.arch == "x86_64":
            return 32 if self.has("avx512f") else 16
        return 32 if self.arch == "aarch64" else 16

    def runs_on_host(self) -> bool:
        """True when code for this target can execute in this process."""
        if self.kind != "llvm" or self.arch != _arch_of(host_triple()):
            return False
        host = set(host_cpu()[1].split(","))
        need = {f for f in self.features.split(",") if f.startswith("+")}
        return need <= host

    def to_json(self) -> str:
        return str(self)


def _arch_of(triple: str) -> str:
    a = triple.split("-", 1)[0]
    if a in ("arm64", "aarch64"):
        return "aarch64"
    if a.startswith("arm") or a.startswith("thumb"):
        return "arm"
    if a in ("x86_64", "amd64"):
        return "x86_64"
    return a
