"""The bandwidth part of the registration probe (devices.bandwidth): one core reading a buffer that
sits in L1, L2, L3 and beyond the last level, with the host's widest vectors."""
from __future__ import annotations

import time

import pytest

from devices import fingerprint as fpmod
from devices.bandwidth import DRAM_MAX_BYTES, DRAM_MIN_BYTES, buffer_sizes, read_loop_ir
from farm.target import Target

HOST = Target.host()


def test_buffer_sizes_follow_the_caches() -> None:
    zen3 = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 32 << 20}
    assert buffer_sizes(zen3) == {"L1": 16 << 10, "L2": 256 << 10, "L3": 2 << 20, "DRAM": 64 << 20}
    # a board without L3: DRAM is the level after L2, still a buffer no cache holds
    pi = {"L1d": 32 << 10, "L2": 1 << 20}
    assert buffer_sizes(pi, memory_bytes=1 << 30) == {"L1": 16 << 10, "L2": 512 << 10, "DRAM": DRAM_MIN_BYTES}
    # a server's shared L3: the DRAM buffer stays bounded (touching it is the probe's cost)
    server = {"L1d": 48 << 10, "L2": 2 << 20, "L3": 300 << 20}
    assert buffer_sizes(server)["DRAM"] == DRAM_MAX_BYTES
    assert buffer_sizes(server, memory_bytes=256 << 20)["DRAM"] == DRAM_MIN_BYTES  # a sixteenth of memory
    assert buffer_sizes({})["L1"] == 16 << 10  # no sysfs: a common L1d


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_read_loop_is_vector_loads_into_independent_ors(lanes: int) -> None:
    from farm.target import _llvm

    tgt = Target.parse("llvm -mtriple=x86_64-unknown-linux-gnu -mcpu=skylake-avx512")
    llvm = _llvm()
    tm = llvm.Target.from_triple(tgt.triple).create_target_machine(cpu=tgt.cpu, features=tgt.features, opt=3)
    asm = str(tm.emit_assembly(llvm.parse_assembly(read_loop_ir(tgt.triple, lanes))))
    reg = {4: "%xmm", 8: "%ymm", 16: "%zmm"}[lanes]
    ors = [ln for ln in asm.splitlines() if ln.strip().startswith("vpor") and "(%" in ln and reg in ln]
    assert len(ors) == 8, asm  # eight loads folded into eight ORs, one accumulator each
    assert len({ln.split(",")[-1] for ln in ors}) == 8


def test_bandwidth_probe_on_this_machine() -> None:
    caches = fpmod._caches()
    c0 = time.process_time()
    probe = fpmod.micro_probe(caches)
    cpu_s = time.process_time() - c0
    bw = probe["bandwidth_gbps"]
    assert set(bw) == set(probe["bandwidth_bytes"]) >= {"L1", "DRAM"}
    # L1 per vector width up to the widest (whose figure is the L1's)
    by_bits = probe["l1_gbps_by_bits"]
    assert set(by_bits) == {str(b) for b in (128, 256, 512) if b <= HOST.simd().bits}
    assert by_bits[str(HOST.simd().bits)] == bw["L1"] and min(by_bits.values()) > 0
    assert ("L2" in bw) == bool(caches.get("L2")) and ("L3" in bw) == bool(caches.get("L3"))
    # Plausible: each level slower than the one above it (noise only lowers a figure, and the
    # levels differ by more than a busy machine's noise), all positive, L1 at least a vector per ns.
    levels = [bw[k] for k in ("L1", "L2", "L3", "DRAM") if k in bw]
    assert levels == sorted(levels, reverse=True) and levels[-1] > 0, bw
    assert bw["L1"] >= 4 * HOST.simd().lanes_f32 * 0.5, bw
    # The whole probe (FMA, clock and bandwidth) stays under a second of this process's time;
    # wall time also counts the other processes of a shared machine.
    assert cpu_s < 1.0, (cpu_s, probe["seconds"])
    assert probe["L3"] == caches.get("L3")


def test_probe_version_names_the_bandwidth() -> None:
    """Caches written by the probe before it measured bandwidth are not trusted."""
    assert fpmod.PROBE_VERSION >= 2
