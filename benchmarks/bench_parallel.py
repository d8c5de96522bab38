#!/usr/bin/env python3
"""Cost of one parallel region: kernelfarm's pthread launch vs libgomp's GOMP_parallel.

Both run an empty body on every thread, in native code, N regions back to back;
the table gives microseconds per region and the ratio. This is the measurement
behind the choice in farm/codegen/runtime.py.

    python benchmarks/bench_parallel.py [--quick] [--json] [--threads N]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llvmlite import ir  # noqa: E402

from farm.compiler.codegen import target_machine  # noqa: E402
from farm.compiler.codegen.runtime import BODY_TY, I8P, I32, I64, emit_runtime  # noqa: E402
from farm.target import Target, _llvm  # noqa: E402


def build(with_gomp: bool) -> tuple[object, dict[str, int]]:
    llvm = _llvm()
    tgt = Target.host()
    tm = target_machine(tgt.triple, tgt.cpu, tgt.features)
    mod = ir.Module("bench")
    mod.triple = tgt.triple
    pfor = emit_runtime(mod)
    body = ir.Function(mod, BODY_TY, "empty_body")
    b = ir.IRBuilder(body.append_basic_block())
    b.ret_void()

    def loop(name: str, call) -> None:  # type: ignore[no-untyped-def]
        fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64]), name)
        entry = fn.append_basic_block()
        lp = fn.append_basic_block()
        done = fn.append_basic_block()
        bb = ir.IRBuilder(entry)
        bb.cbranch(bb.icmp_signed(">", fn.args[0], I64(0)), lp, done)
        bb.position_at_end(lp)
        i = bb.phi(I64)
        i.add_incoming(I64(0), entry)
        call(bb)
        nxt = bb.add(i, I64(1))
        i.add_incoming(nxt, lp)
        bb.cbranch(bb.icmp_signed("<", nxt, fn.args[0]), lp, done)
        bb.position_at_end(done)
        bb.ret_void()

    loop("bench_pthread", lambda bb: bb.call(pfor, [body, ir.Constant(I8P, None), I64(1 << 20)]))
    if with_gomp:
        omp_body = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P]), "omp_body")
        ir.IRBuilder(omp_body.append_basic_block()).ret_void()
        gomp = ir.Function(mod, ir.FunctionType(ir.VoidType(), [omp_body.type, I8P, I32, I32]), "GOMP_parallel")
        nt = mod.get_global("kf_num_threads")
        loop("bench_gomp", lambda bb: bb.call(gomp, [omp_body, ir.Constant(I8P, None), bb.load(nt), I32(0)]))
    m = llvm.parse_assembly(str(mod))
    eng = llvm.create_mcjit_compiler(m, tm)
    eng.finalize_object()
    addrs = {
        n: eng.get_function_address(n) for n in ("bench_pthread", "bench_gomp") if with_gomp or n == "bench_pthread"
    }
    addrs["threads"] = eng.get_global_value_address("kf_num_threads")
    return eng, addrs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as devices/cpu.py loads it
    gomp_path = ctypes.util.find_library("gomp")
    if gomp_path:
        _llvm().load_library_permanently(gomp_path)
    eng, addrs = build(bool(gomp_path))
    ctypes.c_int32.from_address(addrs["threads"]).value = args.threads
    n, rounds = (500, 5) if args.quick else (3000, 9)
    res: dict[str, float] = {}
    for name in ("bench_pthread", "bench_gomp"):
        if name not in addrs:
            continue
        fn = ctypes.CFUNCTYPE(None, ctypes.c_int64)(addrs[name])
        fn(50)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn(n)
            samples.append((time.perf_counter() - t0) / n * 1e6)
        res[name] = statistics.median(samples)
    print(f"parallel region cost, {args.threads} threads, median of {rounds} rounds of {n} regions")
    print(f"{'runtime':<28} {'us/region':>10}")
    print(f"{'pthread create/join (ours)':<28} {res['bench_pthread']:10.2f}")
    figures = {"threads": args.threads, "pthread_us_per_region": round(res["bench_pthread"], 3)}
    if "bench_gomp" in res:
        print(f"{'libgomp GOMP_parallel':<28} {res['bench_gomp']:10.2f}")
        print(f"ratio pthread/gomp: {res['bench_pthread'] / res['bench_gomp']:.2f}")
        figures["gomp_us_per_region"] = round(res["bench_gomp"], 3)
        figures["pthread_over_gomp"] = round(res["bench_pthread"] / res["bench_gomp"], 3)
    else:
        print("libgomp not found: only the pthread runtime was measured")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
