"""Read bandwidth of one core from each level of the memory hierarchy (part of the micro-probe).

A JIT-compiled loop ORs a buffer, with vector loads of the host's widest vector
(``Target.host().simd()``), into independent accumulators: a bitwise OR issues on more
ports than a float add (three or four a cycle), so it never limits the loads, and what
the loop measures is how fast one core pulls bytes from wherever the buffer lives. The
buffer is sized to sit in L1d, in L2, in L3 (when there is one) and beyond the last
level (DRAM), from the cache sizes sysfs reports.

The DRAM buffer is twice the last-level cache, but at most ``DRAM_MAX_BYTES`` (and a
sixteenth of the memory): touching it is most of the probe's time. On a machine whose
last level is larger than half of that (a server's shared L3), the figure is partly
that cache's; the probe records each buffer's size beside its bandwidth.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import time
from typing import Any

from farm.target import Target, _llvm

log = logging.getLogger(__name__)

# Independent accumulators, more than loads a core issues per cycle (2-3) times the OR's latency (1).
ACCUMULATORS = 8
DRAM_MIN_BYTES = 16 << 20
DRAM_MAX_BYTES = 64 << 20
FILL_BYTE = 0x3F


def read_loop_ir(triple: str, lanes: int, accumulators: int = ACCUMULATORS) -> str:
    """LLVM IR of ``i32 kf_read(i32* p, i64 n, i64 passes)``: ``passes`` times, OR the
    ``n`` 32-bit words at ``p`` (``n`` a multiple of ``lanes * accumulators``) with
    ``lanes``-wide loads into ``accumulators`` independent vectors."""
    from llvmlite import ir

    mod = ir.Module("kf_read")
    mod.triple = triple
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vt = ir.VectorType(i32, lanes)
    fn = ir.Function(mod, ir.FunctionType(i32, [i32.as_pointer(), i64, i64]), "kf_read")
    p, n, passes = fn.args
    entry, outer, inner, latch, done = (fn.append_basic_block(x) for x in ("entry", "outer", "inner", "latch", "done"))
    b = ir.IRBuilder(entry)
    zero = ir.Constant(vt, [i32(0)] * lanes)
    b.branch(outer)

    b.position_at_end(outer)
    k = b.phi(i64)
    k.add_incoming(i64(0), entry)
    outer_accs = [b.phi(vt) for _ in range(accumulators)]
    for a in outer_accs:
        a.add_incoming(zero, entry)
    b.branch(inner)

    b.position_at_end(inner)
    i = b.phi(i64)
    i.add_incoming(i64(0), outer)
    accs = [b.phi(vt) for _ in range(accumulators)]
    for a, o in zip(accs, outer_accs):
        a.add_incoming(o, outer)
    new = []
    for j, a in enumerate(accs):
        ptr = b.bitcast(b.gep(p, [b.add(i, i64(j * lanes))]), vt.as_pointer())
        new.append(b.or_(a, b.load(ptr, align=4 * lanes)))
    for a, x in zip(accs, new):
        a.add_incoming(x, inner)
    nxt = b.add(i, i64(lanes * accumulators))
    i.add_incoming(nxt, inner)
    b.cbranch(b.icmp_signed("<", nxt, n), inner, latch)

    b.position_at_end(latch)
    k_next = b.add(k, i64(1))
    k.add_incoming(k_next, latch)
    for a, x in zip(outer_accs, new):
        a.add_incoming(x, latch)
    b.cbranch(b.icmp_signed("<", k_next, passes), outer, done)

    b.position_at_end(done)
    tot = new[0]
    for x in new[1:]:
        tot = b.or_(tot, x)
    b.ret(b.extract_element(tot, i32(0)))
    return str(mod)


class ReadLoop:
    """The read loop compiled for this host; ``gbps(addr, nbytes, seconds)`` times it."""

    def __init__(self, lanes: int) -> None:
        llvm = _llvm()
        host = Target.host()
        machine = llvm.Target.from_triple(host.triple).create_target_machine(
            cpu=host.cpu, features=host.features, opt=3, reloc="pic", codemodel="default")
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(read_loop_ir(host.triple, lanes)), machine)
        self._engine.finalize_object()  # the engine owns the code: it lives as long as this object
        proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
        self.fn = proto(self._engine.get_function_address("kf_read"))
        self.step = 4 * lanes * ACCUMULATORS  # bytes one inner iteration reads

    def _seconds(self, addr: int, n: int, passes: int) -> float:
        t0 = time.perf_counter()
        self.fn(addr, n, passes)
        return time.perf_counter() - t0

    def gbps(self, addr: int, nbytes: int, seconds: float, tries: int = 3) -> float:
        """GB/s reading ``nbytes`` at ``addr``: the best of ``tries`` runs of about
        ``seconds`` each, after one warm pass that brings the buffer into its level
        (other work on the machine only ever slows a run down)."""
        n = max(1, nbytes // self.step) * self.step // 4
        self._seconds(addr, n, 1)
        # Sized on the warm buffer, by doubling: one pass of an L1-sized buffer is shorter
        # than the call itself, so timing a single pass would overstate it.
        passes = 1
        while (dt := self._seconds(addr, n, passes)) < seconds / 4:
            passes *= 2
        passes = max(1, int(passes * seconds / max(dt, 1e-9)))
        best = min(self._seconds(addr, n, passes) for _ in range(tries))
        return 4 * n * passes / best / 1e9


def buffer_sizes(caches: dict[str, int], memory_bytes: int = 0) -> dict[str, int]:
    """Bytes of the buffer read at each level: half of L1d, half of L2, four L2s (at most
    half of L3) when there is an L3, and twice the last level beyond it (bounded)."""
    l1 = int(caches.get("L1d") or 32 << 10)
    l2 = int(caches.get("L2") or 0)
    l3 = int(caches.get("L3") or 0)
    out = {"L1": l1 // 2}
    if l2 > l1:
        out["L2"] = l2 // 2
    if l3 > max(l1, l2):
        out["L3"] = min(4 * l2, l3 // 2) if l2 else l3 // 2
    last = max(l1, l2, l3)
    cap = min(DRAM_MAX_BYTES, memory_bytes // 16) if memory_bytes else DRAM_MAX_BYTES
    out["DRAM"] = max(min(2 * last, cap), DRAM_MIN_BYTES, 2 * out.get("L3", out.get("L2", 0)))
    return out


def bandwidth_probe(caches: dict[str, int], memory_bytes: int = 0, seconds: float = 0.004) -> dict[str, Any]:
    """``{"bandwidth_gbps": {level: GB/s}, "bandwidth_bytes": {level: buffer bytes},
    "l1_gbps_by_bits": {vector bits: GB/s}}``: one core reading L1, L2, L3 (when present) and
    DRAM with the host's widest vectors, and L1 with each narrower width too (a core issues a
    fixed number of loads per cycle up to some width: narrower loads read fewer bytes per
    cycle, and some cores split the widest)."""
    sizes = buffer_sizes(caches, memory_bytes)
    total = max(sizes.values())
    widest = Target.host().simd().lanes_f32
    loop = ReadLoop(widest)
    with mmap.mmap(-1, total) as mem:
        if hasattr(mmap, "MADV_HUGEPAGE"):  # fewer page faults: touching the buffer is most of the cost
            mem.madvise(mmap.MADV_HUGEPAGE)
        view = (ctypes.c_char * total).from_buffer(mem)
        try:
            addr = ctypes.addressof(view)
            ctypes.memset(addr, FILL_BYTE, total)  # written: untouched pages all read the one zero page
            gbps = {}
            for level, nbytes in sizes.items():
                # DRAM: a pass is long already (tens of ms), and the best of two suffices.
                dram = level == "DRAM"
                gbps[level] = round(loop.gbps(addr, nbytes, 0.0 if dram else seconds, tries=2 if dram else 3), 2)
            by_bits = {str(32 * widest): gbps["L1"]}
            for lanes in (4, 8, 16):
                if lanes < widest:
                    by_bits[str(32 * lanes)] = round(ReadLoop(lanes).gbps(addr, sizes["L1"], seconds), 2)
        finally:
            del view  # the mmap cannot close while a ctypes view exports it
    return {"bandwidth_gbps": gbps, "bandwidth_bytes": sizes, "l1_gbps_by_bits": dict(sorted(by_bits.items()))}
