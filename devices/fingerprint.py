"""What a CPU device is, recorded at registration and stored with every measurement.

ISA and triple, CPU name and features as LLVM sees them, core count, cache
sizes, memory, OS and library versions. Under user-mode emulation (qemu) LLVM
reports the CPU as "generic" and /proc/cpuinfo describes the *host*; the
fingerprint says ``emulated: true`` then, so nobody compares those timings
with a real board's.

A real CPU also measures itself once (``probe``, well under a second, cached
per machine under ``~/.cache/kernelfarm`` by CPU name and features): FMA
latency and throughput per vector width from independent FMA chains
(:class:`FmaLoop`), the clock from a chain of dependent integer adds, its
vector registers, L1d/L2/L3 sizes, and one core's read bandwidth from L1, L2, L3
and DRAM (``devices.bandwidth``). Under emulation the probe is skipped and
says so: qemu's timings describe the host, not the board.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from farm.target import Target, _llvm

log = logging.getLogger(__name__)

_HOST_ARCH_WORDS = {"x86_64": ("x86_64", "amd64", "i686"), "aarch64": ("aarch64", "arm64"), "arm": ("arm",)}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_model() -> tuple[str, str]:
    """(model name, the architecture /proc/cpuinfo appears to describe)."""
    text = _read("/proc/cpuinfo")
    for key in ("model name", "Model", "Hardware", "CPU part"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            break
    model = m.group(1).strip() if m else ""
    if re.search(r"^flags\s*:.*\b(sse2|lm)\b", text, re.MULTILINE):
        arch = "x86_64"
    elif re.search(r"^Features\s*:", text, re.MULTILINE):
        arch = "aarch64" if "asimd" in text else "arm"
    else:
        arch = ""
    return model, arch


def _caches() -> dict[str, int]:
    """Cache sizes in bytes by level/type, from sysfs (cpu0)."""
    out: dict[str, int] = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, ctype, size = _read(f"{idx}/level").strip(), _read(f"{idx}/type").strip(), _read(f"{idx}/size").strip()
        m = re.match(r"(\d+)([KMG]?)", size)
        if not (level and m):
            continue
        mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(ctype, "")
        out[name] = int(m.group(1)) * mult
    return out


def _memory_bytes() -> int:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "llvmlite"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # a missing library is a fact about the device, not an error here
            out[mod] = ""
    try:
        from importlib.metadata import version

        out["kernelfarm"] = version("kernelfarm")
    except Exception:
        out["kernelfarm"] = ""
    return out


def cpu_fingerprint(probe: bool = True, cache_dir: Path | None = None) -> dict[str, Any]:
    """Describe this process's CPU device (the device server's backend calls this).

    ``probe``: add the micro-probe (``probe`` key; cached in ``cache_dir``, default
    ``~/.cache/kernelfarm``); a caller that describes a GPU's host passes False."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    machine = platform.machine()
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    try:
        features = sorted(f for f, on in llvm.get_host_cpu_features().items() if on)
    except RuntimeError:  # LLVM cannot read them on some hosts (and under emulation)
        features = []
    model, cpuinfo_arch = _cpuinfo_model()
    emulated = bool(cpuinfo_arch) and machine not in _HOST_ARCH_WORDS.get(cpuinfo_arch, (cpuinfo_arch,))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    caches = _caches()
    out = {
        "isa": machine,
        "triple": triple,
        "cpu_name": cpu,
        "cpu_features": features,
        "cpu_model": "" if emulated else model,
        "emulated": emulated,
        "cores": cores,
        "caches": caches,
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()).strip(),
        "versions": _versions(),
        "executable": sys.executable,
    }
    if probe:
        out["probe"] = {"skipped": "emulated"} if emulated else cached_probe(triple, cpu, features, caches, cache_dir)
    return out


# --- the micro-probe --------------------------------------------------------------

# Vector registers an FMA loop leaves to other values: its two FMA operands, plus headroom.
RESERVED_VREGS = 4


def fma_chains(registers: int, fmas_in_flight: int) -> int:
    """Independent FMA chains a throughput loop needs: enough to keep ``fmas_in_flight``
    (latency x pipes) FMAs issued, with half again for the loop's own instructions and
    port conflicts (measured on Emerald Rapids: exactly latency x pipes chains reach
    88% of the peak, 1.25x that reaches it), but never more than the registers hold
    beside the loop's operands: a spilled chain adds a load and a store per FMA."""
    return max(1, min(math.ceil(fmas_in_flight * 3 / 2), registers - RESERVED_VREGS))


def fma_loop_ir(triple: str, lanes: int, chains: int) -> str:
    """LLVM IR of ``float kf_fma(i64 n)``: ``chains`` independent ``lanes``-wide FMA
    chains, ``n`` steps each, no memory traffic (returns a lane of their sum)."""
    from llvmlite import ir

    mod = ir.Module("kf_fma")
    mod.triple = triple
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vt = ir.VectorType(f32, lanes)
    fma = ir.Function(mod, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(mod, ir.FunctionType(f32, [i64]), "kf_fma")
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    x = ir.Constant(vt, [f32(1.0000001)] * lanes)
    y = ir.Constant(vt, [f32(1e-7)] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    i.add_incoming(i64(0), entry)
    accs = []
    for c in range(chains):
        acc = b.phi(vt)
        acc.add_incoming(ir.Constant(vt, [f32(float(c))] * lanes), entry)
        accs.append(acc)
    new = [b.call(fma, [a, x, y]) for a in accs]
    for acc, n in zip(accs, new):
        acc.add_incoming(n, loop)
    nxt = b.add(i, i64(1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    tot = new[0]
    for n in new[1:]:
        tot = b.fadd(tot, n)
    b.ret(b.extract_element(tot, ir.IntType(32)(0)))
    return str(mod)


def _machine(target: Target) -> Any:
    return _llvm().Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, reloc="pic", codemodel="default")


def fma_loop_asm(target: Target, lanes: int, chains: int) -> str:
    """The FMA loop's assembly for ``target`` (any target LLVM knows, not only this host)."""
    return str(_machine(target).emit_assembly(_llvm().parse_assembly(fma_loop_ir(target.triple, lanes, chains))))


class _Jit:
    """One function of an LLVM IR module compiled for this host; ``fn(n)`` calls it."""

    def __init__(self, ir_text: str, name: str, restype: Any) -> None:
        llvm = _llvm()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(ir_text), _machine(Target.host()))
        self._engine.finalize_object()  # the engine owns the code: it lives as long as this object
        self.fn = ctypes.CFUNCTYPE(restype, ctypes.c_int64)(self._engine.get_function_address(name))

    def seconds(self, n: int) -> float:
        t0 = time.perf_counter()
        self.fn(n)
        return time.perf_counter() - t0

    def best_rate(self, seconds: float, tries: int = 5) -> float:
        """Steps per second: the best of ``tries`` runs sized to ``seconds`` each (other
        work on the machine only ever slows a run down)."""
        n = 1000
        while (dt := self.seconds(n)) < seconds / 8:
            n *= 4
        n = max(1, int(n * seconds / max(dt, 1e-9)))
        return n / min(self.seconds(n) for _ in range(tries))


class FmaLoop(_Jit):
    """``chains`` independent ``lanes``-wide FMA chains compiled for this host: ``fn(steps)``."""

    def __init__(self, lanes: int, chains: int) -> None:
        super().__init__(fma_loop_ir(Target.host().triple, lanes, chains), "kf_fma", ctypes.c_float)
        self.lanes, self.chains = lanes, chains

    @property
    def flops_per_step(self) -> float:
        return 2.0 * self.lanes * self.chains


# A chain of dependent register-register adds (one cycle each on every x86-64 and AArch64 core)
# measures the clock: inline assembly, since LLVM would fold the same chain written in IR, and
# no immediate operand, since newer cores (Golden Cove) fold small immediate adds at rename.
_ADD_STEP = {"x86_64": "addq $2, $0", "aarch64": "add $0, $0, $2"}
_ADDS_PER_STEP = 64


def _clock_ir(triple: str, step: str) -> str:
    from llvmlite import ir

    mod = ir.Module("kf_clock")
    mod.triple = triple
    i64 = ir.IntType(64)
    fn = ir.Function(mod, ir.FunctionType(i64, [i64]), "kf_clock")
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i, acc = b.phi(i64), b.phi(i64)
    i.add_incoming(i64(0), entry)
    acc.add_incoming(i64(0), entry)
    add = ir.InlineAsm(ir.FunctionType(i64, [i64, i64]), step, "=r,0,r", side_effect=True)
    v: Any = acc
    for _ in range(_ADDS_PER_STEP):
        v = b.call(add, [v, fn.args[0]])
    acc.add_incoming(v, loop)
    nxt = b.add(i, i64(1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    b.ret(v)
    return str(mod)


def clock_ghz(seconds: float = 0.01) -> float | None:
    """This core's clock while running scalar code (None on an ISA without an add step here, or
    when the measurement is implausible)."""
    host = Target.host()
    step = _ADD_STEP.get(host.arch)
    if step is None:
        return None
    _llvm().initialize_native_asmparser()  # MCJIT assembles the inline step
    ghz = _Jit(_clock_ir(host.triple, step), "kf_clock", ctypes.c_int64).best_rate(seconds) * _ADDS_PER_STEP / 1e9
    # Outside this range the adds were not one per cycle (a core that folds them): no clock rather than a wrong one.
    return ghz if 0.2 < ghz < 8.0 else None


def micro_probe(caches: dict[str, int] | None = None, seconds: float = 0.01) -> dict[str, Any]:
    """Measure this CPU once: per vector width (bits), FMA latency (one dependent chain)
    and throughput (as many chains as the registers hold); the clock; vector registers;
    L1d/L2/L3 sizes; one core's read bandwidth from L1, L2, L3 and DRAM
    (:func:`devices.bandwidth.bandwidth_probe`). ``fmas_in_flight`` (latency x FMAs per
    cycle, clock-free) is what an FMA loop must keep independent to reach the peak."""
    from devices.bandwidth import bandwidth_probe

    t0 = time.perf_counter()
    simd = Target.host().simd()
    ghz = clock_ghz(seconds)
    widths: dict[str, Any] = {}
    for lanes in sorted({lanes for lanes in (4, 8, 16) if lanes <= simd.lanes_f32}):
        one = FmaLoop(lanes, 1).best_rate(seconds)  # dependent FMAs per second
        many = FmaLoop(lanes, fma_chains(simd.registers, 10**6))
        per_s = many.best_rate(seconds) * many.chains  # independent FMAs per second
        w: dict[str, Any] = {"latency_ns": round(1e9 / one, 4), "fma_per_ns": round(per_s / 1e9, 4),
                             "fmas_in_flight": round(per_s / one, 2), "gflops_1core": round(2 * lanes * per_s / 1e9, 2)}
        if ghz:
            w.update(latency_cycles=round(ghz * 1e9 / one, 2), fma_per_cycle=round(per_s / (ghz * 1e9), 2))
        widths[str(32 * lanes)] = w
    caches = caches if caches is not None else _caches()
    return {"vector_registers": simd.registers, "fma": widths, "clock_ghz": round(ghz, 3) if ghz else None,
            "L1d": caches.get("L1d"), "L2": caches.get("L2"), "L3": caches.get("L3"),
            **bandwidth_probe(caches, _memory_bytes()), "seconds": round(time.perf_counter() - t0, 3)}


# Part of the cache key: a changed probe measures anew instead of trusting what an older one cached.
PROBE_VERSION = 2  # 2: read bandwidth per memory level


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "kernelfarm"


def cached_probe(triple: str, cpu: str, features: list[str], caches: dict[str, int],
                 cache_dir: Path | None = None) -> dict[str, Any]:
    """``micro_probe()``, measured once per machine: cached under ``cache_dir`` by triple,
    CPU name and features (a failed probe is reported, not cached)."""
    key = {"probe_version": PROBE_VERSION, "triple": triple, "cpu_name": cpu, "cpu_features": list(features)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_dir()) / f"probe-{cpu}-{digest}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("key") == key and isinstance(data.get("probe"), dict):
            return dict(data["probe"])
    except (OSError, ValueError):
        pass  # not probed on this machine yet (or an unreadable cache): measure
    try:
        probe = micro_probe(caches)
    except Exception as e:  # noqa: BLE001 - the device still registers, and says why it has no probe
        log.warning("micro-probe failed: %s: %s", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "probe": probe}))
        os.replace(tmp, path)  # atomic: servers starting together never read half a file
    except OSError as e:
        log.info("micro-probe not cached (%s): %s", path, e)
    return probe
