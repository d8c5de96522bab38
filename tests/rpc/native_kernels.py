"""Real native kernels that misbehave, for the device server's isolation tests.

They follow the CPU artifact ABI (see farm/artifact.py) and are compiled with
llvmlite to relocatable objects, so the real CpuBackend loads them with MCJIT
and runs them in the real job child: one writes to an unmapped address
(SIGSEGV), one spins forever. A wrong-answer kernel is an honest matmul
schedule that reads the wrong column of B, labelled as matmul so the device's
reference check catches it.
"""
from __future__ import annotations

from farm.records.artifact import ArgSpec, Artifact

_TIMER = """
define double @kf_time(ptr %args, i64 %n) {
  call void @kf_main(ptr %args)
  ret double 1.0e-3
}
"""

SEGFAULT_IR = """
@kf_num_threads = global i32 1
define void @kf_main(ptr %args) {
  store volatile i32 42, ptr inttoptr (i64 16 to ptr)
  ret void
}
""" + _TIMER

HANG_IR = """
@kf_num_threads = global i32 1
define void @kf_main(ptr %args) {
entry:
  br label %spin
spin:
  store volatile i32 1, ptr @kf_num_threads
  br label %spin
}
""" + _TIMER


def native_artifact(ir: str, tag: str) -> Artifact:
    """Compile ``ir`` for this host into an object artifact (no workload: nothing to check)."""
    import llvmlite.binding as llvm

    from farm.target import Target

    host = Target.host()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    mod = llvm.parse_assembly(f'; {tag}\ntarget triple = "{host.triple}"\n' + ir)
    mod.verify()
    tm = llvm.Target.from_triple(host.triple).create_target_machine(cpu=host.cpu, features=host.features, reloc="pic")
    return Artifact(
        target=str(host), triple=host.triple, cpu=host.cpu, features=host.features, kind="object",
        code=tm.emit_object(mod), args=(ArgSpec("C", (4,), "float32", "out"),), flops=8.0,
    )


def wrong_matmul(n: int = 32) -> Artifact:
    """A matmul that reads column (j+1) % n of B, but claims to be matmul n,n,n."""
    from farm import te
    from farm.compiler.builder import build

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, (j + 1) % n], axis=k), name="C")
    s = te.create_schedule(c.op)
    return build(s, [a, b, c], "llvm -mcpu=native", workload={"name": "matmul", "args": [n, n, n]}).artifact
