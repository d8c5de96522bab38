"""The cores' peak float32 FLOP/s, measured: independent FMA chains in vector registers.

Theory for this machine is lanes x 2 (FMA) x FMA issue per cycle x clock x cores;
the measured figure is what the same cores reach on a loop with no memory traffic,
run on every core at once (ctypes releases the GIL), so it includes the real clock.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any

from llvmlite import ir

from farm.compiler.codegen import target_machine
from farm.target import Target, _llvm

CHAINS = 16  # enough independent FMAs to cover latency x throughput on current cores


def _build(lanes: int) -> tuple[Any, int]:
    llvm = _llvm()
    tgt = Target.host()
    mod = ir.Module("peak")
    mod.triple = tgt.triple
    f32 = ir.FloatType()
    vt = ir.VectorType(f32, lanes)
    fma = ir.Function(mod, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(mod, ir.FunctionType(ir.FloatType(), [ir.IntType(64)]), "kf_peak")
    entry, loop, done = fn.append_basic_block(), fn.append_basic_block(), fn.append_basic_block()
    b = ir.IRBuilder(entry)
    x = ir.Constant(vt, [f32(1.0000001)] * lanes)
    y = ir.Constant(vt, [f32(1e-7)] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(ir.IntType(64))
    i.add_incoming(ir.IntType(64)(0), entry)
    accs = []
    for c in range(CHAINS):
        p = b.phi(vt)
        p.add_incoming(ir.Constant(vt, [f32(float(c))] * lanes), entry)
        accs.append(p)
    new = [b.call(fma, [a, x, y]) for a in accs]
    for p, n in zip(accs, new):
        p.add_incoming(n, loop)
    nxt = b.add(i, ir.IntType(64)(1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    tot = new[0]
    for n in new[1:]:
        tot = b.fadd(tot, n)
    b.ret(b.extract_element(tot, ir.IntType(32)(0)))
    m = llvm.parse_assembly(str(mod))
    tm = target_machine(tgt.triple, tgt.cpu, tgt.features)
    eng = llvm.create_mcjit_compiler(m, tm)
    eng.finalize_object()
    return eng, eng.get_function_address("kf_peak")


def _timed(fn: Any, iters: int) -> float:
    t0 = time.perf_counter()
    fn(iters)
    return time.perf_counter() - t0


def _all_cores(fn: Any, iters: int, n: int) -> float:
    """Wall time of ``n`` threads each running ``fn(iters)`` (ctypes releases the GIL)."""
    ths = [threading.Thread(target=fn, args=(iters,)) for _ in range(n)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.perf_counter() - t0


def measured_peak_gflops(threads: int | None = None, seconds: float = 0.5, tries: int = 3) -> dict[str, float]:
    tgt = Target.host()
    lanes = tgt.vector_lanes_f32
    eng, addr = _build(lanes)
    fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(addr)
    fn(1000)
    iters = 1000
    while True:  # size a run to ~seconds on one core
        t0 = time.perf_counter()
        fn(iters)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        iters *= 4
    iters = int(iters * seconds / dt)
    flops_per_call = iters * CHAINS * lanes * 2.0
    # Best of a few tries: interference from other work only ever lowers a try.
    one = min(_timed(fn, iters) for _ in range(tries))
    n = threads or os.cpu_count() or 1
    wall = min(_all_cores(fn, iters, n) for _ in range(tries))
    del eng
    return {"lanes": lanes, "cores": n, "peak_1core_gflops": flops_per_call / one / 1e9,
            "peak_gflops": n * flops_per_call / wall / 1e9}
