"""The FMA peak loop (benchmarks/peak.py) and the device's registration probe (devices.fingerprint).

Both size their independent FMA chains from the target: enough to cover latency x pipes,
never more than the vector registers hold. 16 chains of 8-lane FMAs, written for
AVX-512's 32 registers, spill on AVX2's 16: the loop then measures a "peak" below numpy.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from devices import fingerprint as fpmod
from devices.fingerprint import RESERVED_VREGS, FmaLoop, cpu_fingerprint, fma_chains, fma_loop_asm
from farm.target import Target

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import peak  # noqa: E402

HOST = Target.host()
X86 = HOST.arch == "x86_64"


def loop_body(asm: str) -> list[str]:
    """The instructions of the (one) loop: from a label to the branch back to it."""
    lines = asm.splitlines()
    for n, line in enumerate(lines):
        m = re.match(r"^(\.LBB\d+_\d+):", line)
        if m:
            for k in range(n + 1, len(lines)):
                if re.search(rf"\s{re.escape(m.group(1))}$", lines[k]) and lines[k].strip().startswith(("j", "b")):
                    return lines[n + 1: k + 1]
    raise AssertionError("no loop in the assembly")


def test_chain_count_for_16_and_32_vector_registers() -> None:
    # 4-cycle FMAs on 2 pipes: 8 in flight, 12 chains with the margin; both register files hold them
    assert fma_chains(16, 8) == 12 and fma_chains(32, 8) == 12
    # 5-cycle FMAs (Haswell, Zen 2): 15 wanted, AVX2's 16 registers hold 12 beside the operands
    assert fma_chains(16, 10) == 16 - RESERVED_VREGS == 12
    assert fma_chains(32, 10) == 15
    # a long-latency core: the register file is the limit
    assert fma_chains(16, 20) == 12 and fma_chains(32, 20) == 28
    assert fma_chains(4, 8) == 1


@pytest.mark.parametrize("text, registers, lanes", [("llvm -mcpu=haswell", 16, 8),
                                                     ("llvm -mcpu=skylake-avx512", 32, 16)])
def test_peak_loop_has_no_spills(text: str, registers: int, lanes: int) -> None:
    tgt = Target.parse(text)
    simd = tgt.simd()
    assert (simd.registers, simd.lanes_f32) == (registers, lanes)
    chains = peak.chains_for(simd)
    assert 2 * simd.fmas_in_flight > chains >= simd.fmas_in_flight
    for width in {lanes, lanes // 2}:  # peak.py times the widest vectors and half of them
        body = loop_body(fma_loop_asm(tgt, width, chains))
        assert sum("vfmadd" in ln for ln in body) == chains
        assert not [ln for ln in body if "(%rsp)" in ln], "stack traffic in the FMA loop:\n" + "\n".join(body)


def test_the_spill_check_sees_a_spill() -> None:
    """Control: the old 16 chains of 8-lane FMAs do not fit AVX2's 16 registers."""
    body = loop_body(fma_loop_asm(Target.parse("llvm -mcpu=haswell"), 8, 16))
    assert any("(%rsp)" in ln for ln in body)


def test_aarch64_peak_loop_has_no_spills() -> None:
    tgt = Target.parse("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon")
    chains = peak.chains_for(tgt.simd())
    body = loop_body(fma_loop_asm(tgt, 4, chains))
    assert sum("fmla" in ln for ln in body) == chains and not [ln for ln in body if "[sp" in ln]


def test_fma_loop_runs_here() -> None:
    loop = FmaLoop(HOST.simd().lanes_f32, peak.chains_for(HOST.simd()))
    assert loop.fn(1000) > 0 and loop.best_rate(0.005, tries=2) > 0


@pytest.mark.skipif(not X86, reason="the clock is read from x86-64 / AArch64 add chains")
def test_micro_probe_measures_this_cpu() -> None:
    import time

    c0 = time.process_time()
    probe = fpmod.micro_probe()
    simd = HOST.simd()
    # under a second of this process's time (its wall time also counts a shared machine's other work)
    assert time.process_time() - c0 < 1.0
    assert probe["vector_registers"] == simd.registers
    assert set(probe["fma"]) == {str(b) for b in (128, 256, 512) if b <= simd.bits}
    assert 0.5 < probe["clock_ghz"] < 7
    for bits, w in probe["fma"].items():
        # noise only slows a run: latency reads high, throughput low - bounds wide enough for a busy host
        assert 2 <= w["latency_cycles"] < 16, (bits, w)
        assert 0.2 < w["fma_per_cycle"] <= 4.5, (bits, w)
        assert w["fmas_in_flight"] > 1
    assert probe["L1d"] == fpmod._caches().get("L1d") and probe["L2"] == fpmod._caches().get("L2")


def test_probe_is_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_probe(caches: Any = None) -> dict[str, Any]:
        calls.append(1)
        return {"vector_registers": 0, "fma": {}, "n": len(calls)}

    monkeypatch.setattr(fpmod, "micro_probe", fake_probe)
    first = cpu_fingerprint(cache_dir=tmp_path)
    again = cpu_fingerprint(cache_dir=tmp_path)
    assert first["probe"] == again["probe"] == {"vector_registers": 0, "fma": {}, "n": 1} and len(calls) == 1
    files = list(tmp_path.glob("probe-*.json"))
    assert len(files) == 1 and first["cpu_name"] in files[0].name
    # another CPU (here: other features) is another machine: probed anew, cached apart
    other = fpmod.cached_probe(first["triple"], first["cpu_name"], ["sse2"], {}, tmp_path)
    assert other["n"] == 2 and len(list(tmp_path.glob("probe-*.json"))) == 2
    # a cache file for another key under the same name is not trusted, nor one an older probe wrote
    files[0].write_text('{"key": {"cpu_name": "other"}, "probe": {"n": 99}}')
    assert cpu_fingerprint(cache_dir=tmp_path)["probe"]["n"] == 3
    monkeypatch.setattr(fpmod, "PROBE_VERSION", fpmod.PROBE_VERSION + 1)
    assert cpu_fingerprint(cache_dir=tmp_path)["probe"]["n"] == 4


def test_probe_skipped_and_marked_under_emulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/cpuinfo describing another architecture than the process: qemu user-mode emulation."""
    other = "aarch64" if X86 else "x86_64"
    monkeypatch.setattr(fpmod, "_cpuinfo_model", lambda: ("host CPU", other))
    monkeypatch.setattr(fpmod, "micro_probe", lambda caches=None: pytest.fail("probed under emulation"))
    fp = cpu_fingerprint(cache_dir=tmp_path)
    assert fp["emulated"] is True and fp["probe"] == {"skipped": "emulated"}
    assert not list(tmp_path.iterdir())


def test_no_probe_when_not_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fpmod, "micro_probe", lambda caches=None: pytest.fail("probed"))
    assert "probe" not in cpu_fingerprint(probe=False, cache_dir=tmp_path)


def test_failed_probe_is_reported_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(caches: Any = None) -> dict[str, Any]:
        raise RuntimeError("no JIT here")

    monkeypatch.setattr(fpmod, "micro_probe", broken)
    assert cpu_fingerprint(cache_dir=tmp_path)["probe"] == {"error": "RuntimeError: no JIT here"}
    assert not list(tmp_path.glob("probe-*.json"))


@pytest.mark.slow
@pytest.mark.skipif(not (X86 and HOST.simd().bits >= 256), reason="the claim is made for AVX2 and AVX-512 hosts")
def test_measured_peak_is_above_numpy() -> None:
    """The measured peak bounds what numpy's BLAS reaches on the same cores (the Zen 3 report:
    a spilling peak loop measured 98 GFLOPS, numpy 131)."""
    import time

    import numpy as np

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        best = max(best, 5 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9)
    pk = peak.measured_peak_gflops(seconds=0.3, tries=5)
    assert pk["chains"] <= pk["vector_registers"] - RESERVED_VREGS
    assert best <= pk["peak_gflops"], (best, pk)
