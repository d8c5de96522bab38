"""The machine constants of the analytic estimate, from a device's fingerprint.

A CPU device measures itself at registration (``devices.fingerprint.micro_probe``):
FMA throughput and latency per vector width, its vector registers, cache sizes and
one core's read bandwidth from each memory level. :func:`estimate_constants` turns
that into an :class:`EstimateConstants`. A fingerprint without those fields (recorded
before the probe existed, or by a probe that predates bandwidth) falls back, field by
field, to nominal values for its LLVM CPU name (:data:`TABLE`: vendor manuals and
published one-core measurements, rounded), and an unknown CPU to ``generic``. The
``source`` field says which was used, so nobody mistakes a table for a measurement.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from farm.target import Target

log = logging.getLogger(__name__)

LEVELS = ("L1", "L2", "L3", "DRAM")


@dataclass(frozen=True)
class CpuFamily:
    """Nominal per-core figures of a CPU family, used where a fingerprint has no probe."""

    ghz: float
    fma_per_cycle: tuple[tuple[int, float], ...]  # (vector bits, FMA instructions issued per cycle)
    fma_latency: float  # cycles
    loads_per_cycle: tuple[tuple[int, float], ...]  # (vector bits, L1 loads per cycle)
    bytes_per_cycle: tuple[float, float]  # one core reading from L2, L3
    dram_gbps: float  # one core reading beyond the last level
    caches: tuple[int, int, int]  # L1d, L2, L3 bytes (sysfs sizes take precedence)


_K, _M = 1 << 10, 1 << 20
_ZEN_FMA = ((128, 2.0), (256, 2.0))
_INTEL_AVX512_FMA = ((128, 2.0), (256, 2.0), (512, 2.0))
_TWO_LOADS = ((128, 2.0), (256, 2.0), (512, 2.0))
_GOLDEN_COVE_LOADS = ((128, 3.0), (256, 3.0), (512, 2.0))
# By LLVM CPU-name prefix, first match wins. Zen 4 executes a 512-bit FMA on both of its
# 256-bit pipes (one per cycle): 8-lane and 16-lane code reach the same flops.
TABLE: tuple[tuple[str, CpuFamily], ...] = (
    ("znver5", CpuFamily(3.7, ((128, 2.0), (256, 2.0), (512, 2.0)), 4, ((128, 2.0), (256, 2.0), (512, 2.0)),
                     (64, 32), 30.0, (48 * _K, _M, 32 * _M))),
    ("znver4", CpuFamily(3.7, ((128, 2.0), (256, 2.0), (512, 1.0)), 4, ((128, 2.0), (256, 2.0), (512, 1.0)),
                     (32, 20), 25.0, (32 * _K, _M, 32 * _M))),
    ("znver3", CpuFamily(3.5, _ZEN_FMA, 4, ((128, 2.0), (256, 2.0)), (32, 20), 20.0, (32 * _K, 512 * _K, 32 * _M))),
    ("znver2", CpuFamily(3.3, _ZEN_FMA, 5, ((128, 2.0), (256, 2.0)), (32, 16), 18.0, (32 * _K, 512 * _K, 16 * _M))),
    # Intel server cores with two 512-bit FMA units; their L3 is a mesh away (one core reads
    # it at ~8 bytes a cycle).
    ("emeraldrapids", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _GOLDEN_COVE_LOADS,
                     (48, 8), 12.0, (48 * _K, 2 * _M, 64 * _M))),
    ("sapphirerapids", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _GOLDEN_COVE_LOADS,
                     (48, 8), 12.0, (48 * _K, 2 * _M, 64 * _M))),
    ("graniterapids", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _GOLDEN_COVE_LOADS,
                     (48, 8), 12.0, (48 * _K, 2 * _M, 128 * _M))),
    ("icelake-server", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _TWO_LOADS,
                     (48, 8), 12.0, (48 * _K, 1280 * _K, 48 * _M))),
    ("cascadelake", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _TWO_LOADS, (48, 8), 12.0, (32 * _K, _M, 32 * _M))),
    ("skylake-avx512", CpuFamily(3.0, _INTEL_AVX512_FMA, 4, _TWO_LOADS, (48, 8), 12.0, (32 * _K, _M, 32 * _M))),
    ("haswell", CpuFamily(3.5, _ZEN_FMA, 5, _TWO_LOADS, (32, 16), 15.0, (32 * _K, 256 * _K, 8 * _M))),
    ("broadwell", CpuFamily(3.5, _ZEN_FMA, 5, _TWO_LOADS, (32, 16), 15.0, (32 * _K, 256 * _K, 8 * _M))),
    ("skylake", CpuFamily(4.0, _ZEN_FMA, 4, _TWO_LOADS, (32, 16), 20.0, (32 * _K, 256 * _K, 8 * _M))),
    ("alderlake", CpuFamily(4.5, _ZEN_FMA, 4, _GOLDEN_COVE_LOADS, (48, 20), 25.0, (48 * _K, 1280 * _K, 24 * _M))),
    ("raptorlake", CpuFamily(4.5, _ZEN_FMA, 4, _GOLDEN_COVE_LOADS, (48, 20), 25.0, (48 * _K, 2 * _M, 32 * _M))),
    ("neoverse-n1", CpuFamily(3.0, ((128, 2.0),), 4, ((128, 2.0),), (24, 10), 20.0, (64 * _K, _M, 32 * _M))),
    ("neoverse-v1", CpuFamily(2.6, ((128, 4.0),), 4, ((128, 3.0),), (32, 12), 25.0, (64 * _K, _M, 32 * _M))),
    ("neoverse-n2", CpuFamily(3.0, ((128, 2.0),), 4, ((128, 3.0),), (32, 12), 25.0, (64 * _K, _M, 32 * _M))),
    ("neoverse-v2", CpuFamily(3.2, ((128, 4.0),), 4, ((128, 3.0),), (32, 12), 30.0, (64 * _K, 2 * _M, 64 * _M))),
    ("cortex-a72", CpuFamily(1.5, ((128, 1.0),), 7, ((128, 1.0),), (8, 0), 3.0, (32 * _K, _M, 0))),
)
GENERIC = CpuFamily(2.5, ((128, 2.0), (256, 2.0), (512, 2.0)), 5, _TWO_LOADS, (32, 12), 12.0, (32 * _K, _M, 0))


def family(cpu: str) -> tuple[str, CpuFamily]:
    """The table row of an LLVM CPU name: (its key, the figures); ("generic", GENERIC) if none."""
    for prefix, fam in TABLE:
        if cpu.startswith(prefix):
            return prefix, fam
    return "generic", GENERIC


@dataclass(frozen=True)
class EstimateConstants:
    """What the analytic estimate knows about one core of a device (hashable: part of the
    feature cache key). Rates are per nanosecond; bandwidths in GB/s (bytes per ns)."""

    source: str  # "probe", "table:<cpu>", or "probe+table:<cpu>" when the probe lacked some fields
    fma_per_ns: tuple[tuple[int, float], ...]  # (vector bits, FMA instructions per ns), widths the target has
    fmas_in_flight: tuple[tuple[int, float], ...]  # (vector bits, latency x rate: independent FMAs needed)
    vector_registers: int
    caches: tuple[int, int, int]  # L1d, L2, L3 bytes (0: none)
    bandwidth: tuple[tuple[str, float], ...]  # (level, GB/s): L1, L2, L3 (when there is one), DRAM
    loads_per_ns: tuple[tuple[int, float], ...]  # (vector bits, L1 loads per ns)

    def _at(self, table: tuple[tuple[int, float], ...], bits: int) -> float:
        """The value for the narrowest listed width that holds ``bits`` (the widest if none)."""
        for b, v in table:
            if b >= bits:
                return v
        return table[-1][1]

    def fma_rate(self, bits: int) -> float:
        """FMA instructions per ns on vectors of ``bits`` (a scalar one counts as the narrowest)."""
        return self._at(self.fma_per_ns, bits)

    def in_flight(self, bits: int) -> float:
        return self._at(self.fmas_in_flight, bits)

    def load_rate(self, bits: int) -> float:
        """L1 loads per ns of vectors of ``bits`` (a scalar or broadcast load counts as the narrowest)."""
        return self._at(self.loads_per_ns, bits)

    @property
    def peak_flops_per_ns(self) -> float:
        """One core's best: 2 flops per lane per FMA, at the width that does most."""
        return max(2.0 * (b // 32) * r for b, r in self.fma_per_ns)

    @property
    def widest_bits(self) -> int:
        return self.fma_per_ns[-1][0]

    def gbps(self, level: str) -> float:
        """Read bandwidth of one core from ``level``; an absent L3 reads as DRAM."""
        bw = dict(self.bandwidth)
        return bw.get(level) or bw["DRAM"]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "fma_per_ns": {str(b): r for b, r in self.fma_per_ns},
                "fmas_in_flight": {str(b): r for b, r in self.fmas_in_flight},
                "vector_registers": self.vector_registers, "caches": list(self.caches),
                "bandwidth_gbps": dict(self.bandwidth), "loads_per_ns": {str(b): r for b, r in self.loads_per_ns}}


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def estimate_constants(fingerprint: dict[str, Any] | None, target: str | Target) -> EstimateConstants:
    """The estimate's constants for a device: its probe where it has one, else the table
    row of its CPU name (the fingerprint's, else the target's), field by field."""
    t = Target.parse(target) if isinstance(target, str) else target
    fp = fingerprint or {}
    probe: dict[str, Any] = fp["probe"] if isinstance(fp.get("probe"), dict) else {}
    name, fam = family(str(fp.get("cpu_name") or t.cpu))
    simd = t.simd()
    bits = max(128, simd.bits)  # code for this target uses vectors up to this width
    used: set[str] = set()

    fma = {int(b): w for b, w in (probe.get("fma") or {}).items() if isinstance(w, dict) and str(b).isdigit()}
    measured = sorted((b, _num(w.get("fma_per_ns")), _num(w.get("fmas_in_flight"))) for b, w in fma.items()
                      if b <= bits and _num(w.get("fma_per_ns")) > 0 and _num(w.get("fmas_in_flight")) > 0)
    if measured:
        rate = tuple((b, r) for b, r, _ in measured)
        flight = tuple((b, f) for b, _, f in measured)
        used.add("probe")
    else:
        nominal = [(b, c) for b, c in fam.fma_per_cycle if b <= bits] or [fam.fma_per_cycle[0]]
        rate = tuple((b, c * fam.ghz) for b, c in nominal)
        flight = tuple((b, c * fam.fma_latency) for b, c in nominal)
        used.add("table")

    # Registers are the ISA's: code built for AVX2 has 16 even on an AVX-512 machine whose probe counted 32.
    regs = min(int(_num(probe.get("vector_registers"))) or simd.registers, simd.registers)

    sysfs = fp.get("caches") or {}
    l1d, l2, l3 = (int(_num(sysfs.get(k)) or _num(probe.get(k))) for k in ("L1d", "L2", "L3"))
    caches = (l1d, l2, l3) if l1d else fam.caches

    bw_probe = {k: _num(v) for k, v in (probe.get("bandwidth_gbps") or {}).items() if _num(v) > 0}
    l1_bits = {int(b): _num(v) for b, v in (probe.get("l1_gbps_by_bits") or {}).items()
               if str(b).isdigit() and int(b) <= bits and _num(v) > 0}
    if "L1" in bw_probe and "DRAM" in bw_probe and l1_bits:
        bw = tuple((lv, bw_probe[lv]) for lv in LEVELS if lv in bw_probe)
        loads = tuple((b, g * 8 / b) for b, g in sorted(l1_bits.items()))
        used.add("probe")
    else:
        nominal_loads = [(b, n) for b, n in fam.loads_per_cycle if b <= bits] or [fam.loads_per_cycle[0]]
        loads = tuple((b, n * fam.ghz) for b, n in nominal_loads)
        l1 = loads[-1][1] * loads[-1][0] / 8
        per_cycle = dict(zip(("L2", "L3"), fam.bytes_per_cycle))
        bw = (("L1", l1),) + tuple((lv, n * fam.ghz) for lv, n in per_cycle.items()
                                   if n > 0 and (lv != "L3" or caches[2]))
        bw += (("DRAM", fam.dram_gbps),)
        used.add("table")

    source = "+".join(sorted(used)).replace("table", f"table:{name}")
    return EstimateConstants(source, rate, flight, regs, caches, bw, loads)
