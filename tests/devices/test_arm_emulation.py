"""The emulated ARM board itself: arm64 Python under qemu runs host-compiled AArch64 code."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.armroot import ArmRoot, run_under_arm_python

pytestmark = pytest.mark.qemu

# Four-wide float vectors make LLVM use NEON registers; the scalar tail keeps
# non-multiple-of-4 lengths honest.
VADD_IR = r"""
target triple = "aarch64-unknown-linux-gnu"

define void @kf_vadd(ptr noalias %a, ptr noalias %b, ptr noalias %c, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %loop ]
  %pa = getelementptr float, ptr %a, i64 %i
  %pb = getelementptr float, ptr %b, i64 %i
  %pc = getelementptr float, ptr %c, i64 %i
  %x = load float, ptr %pa
  %y = load float, ptr %pb
  %s = fadd float %x, %y
  %t = fmul float %s, 2.0
  store float %t, ptr %pc
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret void
}

define <4 x float> @kf_fma4(<4 x float> %a, <4 x float> %b, <4 x float> %c) {
  %r = call <4 x float> @llvm.fma.v4f32(<4 x float> %a, <4 x float> %b, <4 x float> %c)
  ret <4 x float> %r
}
declare <4 x float> @llvm.fma.v4f32(<4 x float>, <4 x float>, <4 x float>)
"""

GUEST = r"""
import ctypes, platform, sys
import numpy as np
import llvmlite.binding as llvm

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
tm = llvm.Target.from_default_triple().create_target_machine()
engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
with open(sys.argv[1], "rb") as fh:
    engine.add_object_file(llvm.ObjectFileRef.from_data(fh.read()))
engine.finalize_object()
addr = engine.get_function_address("kf_vadd")
fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(addr)
n = 1003
a = np.arange(n, dtype=np.float32)
b = np.full(n, 0.5, dtype=np.float32)
c = np.zeros(n, dtype=np.float32)
fn(a.ctypes.data, b.ctypes.data, c.ctypes.data, n)
assert np.array_equal(c, (a + b) * 2), c[:8]
print("machine", platform.machine())
print("triple", llvm.get_process_triple())
print("checksum", float(c.sum()))
"""


def compile_aarch64(ir: str) -> bytes:
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    mod = llvm.parse_assembly(ir)
    mod.verify()
    target = llvm.Target.from_triple("aarch64-linux-gnu")
    tm = target.create_target_machine(cpu="generic", features="+neon", reloc="pic", opt=2)
    return bytes(tm.emit_object(mod))


def test_guest_is_aarch64_with_numpy_and_llvmlite(arm_root: ArmRoot) -> None:
    code = ("import platform, sys, numpy, llvmlite.binding; "
            "print(platform.machine(), sys.version_info[:2], numpy.__version__)")
    out = run_under_arm_python(code).stdout.split()
    assert out[0] == "aarch64"


def test_sys_executable_reenters_the_guest(arm_root: ArmRoot) -> None:
    code = (
        "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', 'import platform; print(platform.machine())'],"
        " capture_output=True, text=True, check=True)\n"
        "print(sys.executable); print(r.stdout.strip())\n"
    )
    exe, machine = run_under_arm_python(code).stdout.split()
    assert Path(exe) == arm_root.python
    assert machine == "aarch64"


def test_host_compiled_aarch64_object_runs_under_mcjit(arm_root: ArmRoot, tmp_path: Path) -> None:
    obj = compile_aarch64(VADD_IR)
    assert obj[:4] == b"\x7fELF" and obj[18] == 183  # e_machine == EM_AARCH64
    path = tmp_path / "vadd.o"
    path.write_bytes(obj)
    out = dict(line.split(" ", 1) for line in run_under_arm_python(GUEST, str(path)).stdout.splitlines())
    assert out["machine"] == "aarch64"
    assert out["triple"].startswith("aarch64")
    n = 1003
    assert float(out["checksum"]) == pytest.approx(sum((i + 0.5) * 2 for i in range(n)))


def test_guest_failure_is_reported(arm_root: ArmRoot) -> None:
    proc = run_under_arm_python("import sys; sys.exit(3)", check=False)
    assert proc.returncode == 3
    with pytest.raises(subprocess.TimeoutExpired):
        run_under_arm_python("import time; time.sleep(30)", timeout=2)
