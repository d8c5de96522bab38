"""Native runtime emitted into every CPU object: thread launch and timing.

Parallel loops are outlined to ``void body(i8* closure, i64 begin, i64 end)``
and run by ``kf_parallel_for``. When the loader found libgomp it stores
``GOMP_parallel`` and ``omp_get_thread_num`` in ``kf_gomp_parallel`` /
``kf_gomp_thread_num`` and regions run on libgomp's persistent pool (waiters spin
briefly, then sleep: ~0.5 us a region here); otherwise (a board without libgomp, or the object linked into a
C program) ``kf_num_threads - 1`` pthreads are started per region (~33 us).
benchmarks/bench_parallel.py measures both.
"""
from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

I8P = ir.IntType(8).as_pointer()
I64 = ir.IntType(64)
I32 = ir.IntType(32)
VOID = ir.VoidType()
BODY_TY = ir.FunctionType(VOID, [I8P, I64, I64])
TASK_TY = ir.LiteralStructType([BODY_TY.as_pointer(), I8P, I64, I64])
MAX_THREADS = 256
CLOCK_MONOTONIC = 1


def emit_runtime(mod: ir.Module) -> ir.Function:
    """Adds kf_num_threads, kf_worker and kf_parallel_for; returns the latter."""
    nthreads = ir.GlobalVariable(mod, I32, "kf_num_threads")
    nthreads.initializer = I32(1)

    # Function pointers the loader fills in when libgomp is present (null: pthreads).
    omp_fn_ty = ir.FunctionType(VOID, [I8P])
    gomp_ty = ir.FunctionType(VOID, [omp_fn_ty.as_pointer(), I8P, I32, I32])
    tnum_ty = ir.FunctionType(I32, [])
    gomp_ptr = ir.GlobalVariable(mod, gomp_ty.as_pointer(), "kf_gomp_parallel")
    gomp_ptr.initializer = ir.Constant(gomp_ty.as_pointer(), None)
    tnum_ptr = ir.GlobalVariable(mod, tnum_ty.as_pointer(), "kf_gomp_thread_num")
    tnum_ptr.initializer = ir.Constant(tnum_ty.as_pointer(), None)
    omp_data_ty = ir.LiteralStructType([BODY_TY.as_pointer(), I8P, I64, I64])  # body, closure, n, chunk

    tramp = ir.Function(mod, omp_fn_ty, "kf_omp_trampoline")
    tramp.linkage = "internal"
    tb = ir.IRBuilder(tramp.append_basic_block("entry"))
    d = tb.bitcast(tramp.args[0], omp_data_ty.as_pointer())
    dbody, dclo, dn, dchunk = [tb.load(tb.gep(d, [I32(0), I32(k)])) for k in range(4)]
    tid = tb.sext(tb.call(tb.load(tnum_ptr), []), I64)
    tbeg = tb.mul(tid, dchunk)
    tend = tb.add(tbeg, dchunk)
    tend = tb.select(tb.icmp_signed(">", tend, dn), dn, tend)
    with tb.if_then(tb.icmp_signed("<", tbeg, tend)):
        tb.call(dbody, [dclo, tbeg, tend])
    tb.ret_void()

    worker_ty = ir.FunctionType(I8P, [I8P])
    pthread_create = ir.Function(mod, ir.FunctionType(I32, [I64.as_pointer(), I8P, worker_ty.as_pointer(), I8P]),
                                 "pthread_create")
    pthread_join = ir.Function(mod, ir.FunctionType(I32, [I64, I8P.as_pointer()]), "pthread_join")

    worker = ir.Function(mod, worker_ty, "kf_worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    task = b.bitcast(worker.args[0], TASK_TY.as_pointer())
    fields = [b.load(b.gep(task, [I32(0), I32(n)])) for n in range(4)]
    b.call(fields[0], fields[1:])
    b.ret(ir.Constant(I8P, None))

    pfor = ir.Function(mod, ir.FunctionType(VOID, [BODY_TY.as_pointer(), I8P, I64]), "kf_parallel_for")
    pfor.linkage = "internal"
    fn, clo, n = pfor.args
    entry = pfor.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    tasks = b.alloca(TASK_TY, MAX_THREADS, name="tasks")
    tids = b.alloca(I64, MAX_THREADS, name="tids")
    nt = b.sext(b.load(nthreads), I64)
    nt = b.select(b.icmp_signed("<", nt, I64(1)), I64(1), nt)
    nt = b.select(b.icmp_signed(">", nt, I64(MAX_THREADS)), I64(MAX_THREADS), nt)
    nt = b.select(b.icmp_signed(">", nt, n), n, nt)
    chunk = b.sdiv(b.add(n, b.sub(nt, I64(1))), nt)
    single = pfor.append_basic_block("single")
    multi = pfor.append_basic_block("multi")
    b.cbranch(b.icmp_signed("<=", nt, I64(1)), single, multi)
    b.position_at_end(single)
    b.call(fn, [clo, I64(0), n])
    b.ret_void()

    b.position_at_end(multi)
    gomp = b.load(gomp_ptr)
    use_gomp = pfor.append_basic_block("gomp")
    use_pthreads = pfor.append_basic_block("pthreads")
    b.cbranch(b.icmp_unsigned("!=", b.ptrtoint(gomp, I64), I64(0)), use_gomp, use_pthreads)
    b.position_at_end(use_gomp)
    data = b.alloca(omp_data_ty)
    for k, v in enumerate([fn, clo, n, chunk]):
        b.store(v, b.gep(data, [I32(0), I32(k)]))
    b.call(gomp, [tramp, b.bitcast(data, I8P), b.trunc(nt, I32), I32(0)])
    b.ret_void()

    b.position_at_end(use_pthreads)
    # Threads 1..nt-1 take chunks 1..; chunk 0 runs here, then join all.
    def spawn(t: ir.Value) -> None:
        begin = b.mul(t, chunk)
        end = b.add(begin, chunk)
        end = b.select(b.icmp_signed(">", end, n), n, end)
        begin = b.select(b.icmp_signed(">", begin, n), n, begin)
        slot = b.gep(tasks, [t])
        for k, v in enumerate([fn, clo, begin, end]):
            b.store(v, b.gep(slot, [I32(0), I32(k)]))
        b.call(pthread_create, [b.gep(tids, [t]), ir.Constant(I8P, None), worker, b.bitcast(slot, I8P)])

    _count_loop(b, pfor, I64(1), nt, "spawn", spawn)
    end0 = b.select(b.icmp_signed(">", chunk, n), n, chunk)
    b.call(fn, [clo, I64(0), end0])
    _count_loop(b, pfor, I64(1), nt, "join",
                lambda j: b.call(pthread_join, [b.load(b.gep(tids, [j])), ir.Constant(I8P.as_pointer(), None)]))
    b.ret_void()
    return pfor


def _count_loop(b: ir.IRBuilder, fn: ir.Function, start: ir.Value, stop: ir.Value, name: str,
                body: Callable[[ir.Value], object]) -> None:
    """for (i = start; i < stop; i++) body(i); ``body`` emits into one basic block."""
    pre = b.block
    head = fn.append_basic_block(name)
    loop = fn.append_basic_block(f"{name}.body")
    after = fn.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), loop, after)
    b.position_at_end(loop)
    body(i)
    i.add_incoming(b.add(i, I64(1)), b.block)
    b.branch(head)
    b.position_at_end(after)


def emit_entries(mod: ir.Module, kernel: ir.Function) -> None:
    """kf_main(i8** args) and kf_time(i8** args, i64 n) -> seconds."""
    main = ir.Function(mod, ir.FunctionType(VOID, [I8P.as_pointer()]), "kf_main")
    b = ir.IRBuilder(main.append_basic_block("entry"))
    b.call(kernel, _unpack(b, main.args[0], kernel))
    b.ret_void()

    ts_ty = ir.LiteralStructType([I64, I64])
    clock = ir.Function(mod, ir.FunctionType(I32, [I32, ts_ty.as_pointer()]), "clock_gettime")
    dbl = ir.DoubleType()
    timer = ir.Function(mod, ir.FunctionType(dbl, [I8P.as_pointer(), I64]), "kf_time")
    entry = timer.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    args = _unpack(b, timer.args[0], kernel)
    t0 = b.alloca(ts_ty)
    t1 = b.alloca(ts_ty)
    b.call(clock, [I32(CLOCK_MONOTONIC), t0])
    loop = timer.append_basic_block("loop")
    done = timer.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(I64(0), entry)
    b.call(kernel, args)
    nxt = b.add(i, I64(1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, timer.args[1]), loop, done)
    b.position_at_end(done)
    b.call(clock, [I32(CLOCK_MONOTONIC), t1])

    def secs(ts: ir.Value) -> ir.Value:
        s = b.sitofp(b.load(b.gep(ts, [I32(0), I32(0)])), dbl)
        ns = b.sitofp(b.load(b.gep(ts, [I32(0), I32(1)])), dbl)
        return b.fadd(s, b.fmul(ns, dbl(1e-9)))

    b.ret(b.fsub(secs(t1), secs(t0)))


def _unpack(b: ir.IRBuilder, argv: ir.Value, kernel: ir.Function) -> list[ir.Value]:
    return [b.bitcast(b.load(b.gep(argv, [I32(n)])), a.type) for n, a in enumerate(kernel.args)]
