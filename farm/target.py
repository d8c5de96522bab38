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

    def implies(self, feature: str) -> bool:
        """``has``, counting on x86-64 the vector features a named CPU implies: ``llvm -mcpu=haswell``
        without ``-mattr`` gets AVX2 code from LLVM, so its templates must use 8-lane vectors."""
        if self.kind == "llvm" and self.arch == "x86_64":
            return f"+{feature}" in _implied_features(self.triple, self.cpu, self.features)
        return self.has(feature)

    @property
    def vector_bits(self) -> int:
        """Widest useful SIMD register in bits (drives knob ranges in templates)."""
        if self.arch == "x86_64":
            if self.implies("avx512f"):
                return 512
            return 256 if self.implies("avx2") or self.implies("avx") else 128
        if self.arch in ("aarch64", "arm"):
            return 128
        return 32

    @property
    def vector_lanes_f32(self) -> int:
        return max(1, self.vector_bits // 32)

    @property
    def num_vector_registers(self) -> int:
        if self.arch == "x86_64":
            return 32 if self.implies("avx512f") else 16
        return 32 if self.arch == "aarch64" else 16

    def runs_on_host(self) -> bool:
        """True when code for this target can execute in this process."""
        if self.kind != "llvm" or self.arch != _arch_of(host_triple()):
            return False
        host = set(host_cpu()[1].split(","))
        feats = _implied_features(self.triple, self.cpu, self.features) if self.arch == "x86_64" else (
            self.features.split(","))
        need = {f for f in feats if f.startswith("+")}
        return need <= host

    def to_json(self) -> str:
        return str(self)

    def simd(self) -> Simd:
        """The vector unit code for this target gets (see :class:`Simd`).

        On x86-64 it is read from what LLVM generates for the CPU, so a named CPU
        counts with the features it implies (``-mcpu=haswell``: 256-bit, FMA, 16
        registers; ``-mcpu=skylake-avx512``: 512-bit, 32 registers); the properties
        above read the same through :meth:`implies`."""
        latency, pipes = nominal_fma(self.cpu)
        if self.kind != "llvm":
            return Simd(self.vector_bits, self.num_vector_registers, False, 0, latency, pipes)
        if self.arch != "x86_64":
            fma = self.arch == "aarch64" or self.has("vfp4") or self.has("neon")
            return Simd(self.vector_bits, self.num_vector_registers, fma, 0, latency, pipes)
        bits, fma, int_bits = _x86_codegen_widths(self.triple, self.cpu, self.features)
        return Simd(bits, 32 if bits >= 512 else 16, fma, int_bits, latency, pipes)

    def with_isa_features(self) -> Target:
        """This target with the vector features its CPU implies written into ``-mattr``
        (``llvm -mcpu=haswell`` -> ``... -mattr=+avx,+avx2,+fma``), so that its string (what
        a log records, what another machine compares) names them. The generated code and the
        properties above do not change: the CPU implied those features already."""
        if self.kind != "llvm" or self.arch != "x86_64":
            return self
        s = self.simd()
        implied = [f for f, on in (("+avx", s.bits >= 256), ("+avx2", s.int_bits >= 256), ("+fma", s.fma),
                                   ("+avx512f", s.bits >= 512)) if on]
        have = set(filter(None, self.features.split(",")))
        add = [f for f in implied if f not in have and f"-{f[1:]}" not in have]
        if not add:
            return self
        feats = ",".join(f for f in [self.features, *add] if f)
        return Target(self.kind, self.triple, self.cpu, feats, dict(self.options, **{"-mattr": feats}))


@dataclass(frozen=True)
class Simd:
    """A target's vector unit, as far as a kernel's register tile or an FMA loop cares.

    ``fma_latency`` (cycles) and ``fma_pipes`` (FMAs issued per cycle) are nominal
    values for the CPU's family (:func:`nominal_fma`); a device's registration probe
    (``devices.fingerprint``) measures its own."""

    bits: int  # widest float vector one register holds
    registers: int  # architectural vector registers
    fma: bool  # fused multiply-add instructions
    int_bits: int  # widest integer vector (x86: 256 means AVX2); 0 where not probed
    fma_latency: int
    fma_pipes: int

    @property
    def lanes_f32(self) -> int:
        return max(1, self.bits // 32)

    @property
    def fmas_in_flight(self) -> int:
        """Independent FMAs the pipes need in flight to issue one every cycle on each."""
        return self.fma_latency * self.fma_pipes


# FMA latency in cycles of CPU families (vendor optimization manuals) whose value is not
# DEFAULT_FMA_LATENCY, by LLVM CPU-name prefix. Unknown CPUs get the default: sizing
# independent FMA chains for a longer latency than the real one costs nothing.
_FMA_LATENCY = (("skylake", 4), ("cascadelake", 4), ("cooperlake", 4), ("cannonlake", 4), ("icelake", 4),
                ("tigerlake", 4), ("rocketlake", 4), ("alderlake", 4), ("raptorlake", 4), ("meteorlake", 4),
                ("arrowlake", 4), ("lunarlake", 4), ("sapphirerapids", 4), ("emeraldrapids", 4),
                ("graniterapids", 4), ("znver3", 4), ("znver4", 4), ("znver5", 4), ("neoverse", 4), ("apple", 4),
                ("cortex-a53", 4), ("cortex-a55", 4), ("cortex-a57", 10), ("cortex-a72", 7), ("cortex-a73", 7))
DEFAULT_FMA_LATENCY = 5
DEFAULT_FMA_PIPES = 2


def nominal_fma(cpu: str) -> tuple[int, int]:
    """(FMA latency in cycles, FMA pipes) nominal for an LLVM CPU name."""
    for prefix, latency in _FMA_LATENCY:
        if cpu.startswith(prefix):
            return latency, DEFAULT_FMA_PIPES
    return DEFAULT_FMA_LATENCY, DEFAULT_FMA_PIPES


_X86_PROBE = """
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
define <16 x float> @kf_probe_fadd(<16 x float> %a, <16 x float> %b) {
  %r = fadd <16 x float> %a, %b
  ret <16 x float> %r
}
define <16 x float> @kf_probe_fma(<16 x float> %a, <16 x float> %b, <16 x float> %c) {
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %b, <16 x float> %c)
  ret <16 x float> %r
}
define <16 x i32> @kf_probe_int(<16 x i32> %a, <16 x i32> %b) {
  %r = add <16 x i32> %a, %b
  ret <16 x i32> %r
}
"""


def _x86_widest(asm: str, mnemonics: tuple[str, ...]) -> int:
    """Widest register (bits) on the lines that use one of these instructions; 0 if none does."""
    regs = (("%zmm", 512), ("%ymm", 256), ("%xmm", 128))
    lines = [ln for ln in asm.splitlines() if ln.strip().split("\t")[0] in mnemonics]
    return max((bits for ln in lines for reg, bits in regs if reg in ln), default=0)


def local_target(text: str | None = None) -> Target:
    """``text`` (default: this host's CPU) as a target that runs in this process, with the
    features its CPU implies spelled out (:meth:`Target.with_isa_features`); a TargetError
    naming the missing features when this host cannot run its code."""
    tgt = Target.parse(text or "llvm -mcpu=native").with_isa_features()
    if not tgt.runs_on_host():
        host = Target.host()
        missing = sorted(set(f for f in tgt.features.split(",") if f.startswith("+")) - set(host.features.split(",")))
        raise TargetError(f"target {text!r} does not run on this host ({host.cpu}, {host.triple}): "
                          + (f"it needs {', '.join(missing)}" if missing else "another architecture"))
    return tgt


@functools.lru_cache(maxsize=256)
def _implied_features(triple: str, cpu: str, features: str) -> frozenset[str]:
    """The explicit features plus the vector ones the CPU implies (x86-64; see ``with_isa_features``)."""
    t = Target("llvm", triple, cpu, features).with_isa_features()
    return frozenset(filter(None, t.features.split(",")))


@functools.lru_cache(maxsize=64)
def _x86_codegen_widths(triple: str, cpu: str, features: str) -> tuple[int, bool, int]:
    """(float vector bits, FMA, integer vector bits) of the code LLVM emits for this CPU:
    the registers its wide float add, FMA and integer add are compiled to."""
    llvm = _llvm()
    tm = llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=2)
    asm = str(tm.emit_assembly(llvm.parse_assembly(_X86_PROBE)))
    fma = any(ln.strip().startswith("vfmadd") for ln in asm.splitlines())
    return (max(32, _x86_widest(asm, ("addps", "vaddps"))), fma, _x86_widest(asm, ("paddd", "vpaddd")))


def _arch_of(triple: str) -> str:
    a = triple.split("-", 1)[0]
    if a in ("arm64", "aarch64"):
        return "aarch64"
    if a.startswith("arm") or a.startswith("thumb"):
        return "arm"
    if a in ("x86_64", "amd64"):
        return "x86_64"
    return a
