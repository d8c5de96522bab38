"""CudaBackend against a fake driver: the protocol around the GPU (buffers,
reference check, TVM timing semantics, outcome classification, context reset)
without a GPU. The fake "runs" a kernel by computing matmul with numpy."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from devices.cuda_driver import CudaError
from farm.records.measure import Outcome, RunOptions

GOOD = json.dumps({"knobs": {"tile_i": [-1, 4, 2], "tile_j": [-1, 4, 2], "tile_k": [-1, 4]}})


class FakeDriver:
    """Device memory is a dict of byte arrays; a launch computes C = A @ B (or garbage)."""

    def __init__(self, sm: tuple[int, int] = (8, 0), kernel_ms: float = 0.01) -> None:
        self.sm, self.kernel_ms = sm, kernel_ms
        self.mem: dict[int, np.ndarray] = {}
        self.next_ptr = 0x1000
        self.launches = 0
        self.resets = 0
        self.fail: dict[str, int] = {}  # method name -> CUresult to raise
        self.wrong = False
        self.events: dict[int, int] = {}
        self.modules = 0
        self.shapes: tuple[int, int, int] = (0, 0, 0)

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            raise CudaError(what, self.fail[what], f"CUDA_ERROR_FAKE_{self.fail[what]}")

    def attribute(self, name: str) -> int:
        return {"cc_major": self.sm[0], "cc_minor": self.sm[1], "sm_count": 108, "l2_bytes": 40 << 20}.get(name, 1024)

    def name(self) -> str:
        return "Fake A100"

    def total_memory(self) -> int:
        return 40 << 30

    def driver_version(self) -> int:
        return 12040

    def activate(self) -> None:
        self._maybe_fail("activate")

    def reset(self) -> None:
        self.resets += 1
        self.mem.clear()
        self.modules = 0

    def synchronize(self) -> None:
        self._maybe_fail("synchronize")

    def load_module(self, image: bytes) -> int:
        self._maybe_fail("load_module")
        assert image.startswith(b"//")
        self.modules += 1
        return 1

    def unload_module(self, module: int) -> None:
        self.modules -= 1

    def function(self, module: int, name: str) -> int:
        self._maybe_fail("function")
        return 7

    def function_attribute(self, fn: int, name: str) -> int:
        return {"max_threads_per_block": 1024, "registers": 40}.get(name, 0)

    def alloc(self, n: int) -> int:
        p = self.next_ptr
        self.next_ptr += n + 256
        self.mem[p] = np.zeros(n, np.uint8)
        return p

    def free(self, p: int) -> None:
        del self.mem[p]

    def copy_to_device(self, p: int, host: np.ndarray) -> None:
        self.mem[p][:] = host.view(np.uint8).reshape(-1)

    def copy_to_host(self, host: np.ndarray, p: int) -> None:
        host.view(np.uint8).reshape(-1)[:] = self.mem[p]

    def memset(self, p: int, v: int, n: int) -> None:
        self.mem[p][:n] = v

    def launch(self, fn: int, grid: Any, block: Any, shared: int, ptrs: Any) -> None:
        self._maybe_fail("launch")
        m, n, k = self.shapes
        a = self.mem[ptrs[0]].view(np.float32).reshape(m, k)
        b = self.mem[ptrs[1]].view(np.float32).reshape(k, n)
        c = self.mem[ptrs[2]].view(np.float32).reshape(m, n)
        c[...] = a @ b + (1.0 if self.wrong else 0.0)
        self.launches += 1

    def event(self) -> int:
        ev = len(self.events) + 1
        self.events[ev] = 0
        return ev

    def record(self, ev: int) -> None:
        self.events[ev] = self.launches

    def elapsed_ms(self, start: int, stop: int) -> float:
        return (self.events[stop] - self.events[start]) * self.kernel_ms

    def destroy_event(self, ev: int) -> None:
        del self.events[ev]


def _artifact(arch: str = "sm_80", shape: tuple[int, int, int] = (32, 24, 16)) -> Any:
    from farm.workloads.registry import build_workload

    return build_workload("matmul", shape, GOOD, f"cuda -arch={arch}").artifact


@pytest.fixture
def fake() -> Any:
    from devices.cuda import CudaBackend

    drv = FakeDriver()
    drv.shapes = (32, 24, 16)
    return drv, CudaBackend(key="fake-gpu", driver=drv)


def test_ok_checked_and_timed_with_tvm_semantics(fake: Any) -> None:
    drv, be = fake
    art = _artifact()
    res = be.run_job(art, RunOptions(number=1, repeat=3, min_repeat_ms=1.0))
    assert res.outcome is Outcome.OK, res.message
    assert res.checked and len(res.costs) == 3
    assert res.number >= 100  # raised until a repeat lasted min_repeat_ms at 0.01 ms per launch
    assert all(abs(c - 1e-5) < 1e-9 for c in res.costs)
    assert res.gflops == pytest.approx(art.flops / 1e-5 / 1e9)
    assert res.extra["registers"] == 40
    assert drv.mem == {} and drv.modules == 0 and drv.events == {}  # everything released


def test_wrong_answer(fake: Any) -> None:
    drv, be = fake
    drv.wrong = True
    res = be.run_job(_artifact(), RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.WRONG_ANSWER and "output C" in res.message


def test_load_errors(fake: Any) -> None:
    drv, be = fake
    drv.fail["load_module"] = 218  # CUDA_ERROR_INVALID_PTX
    res = be.run_job(_artifact(), RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.LOAD_ERROR and "218" in res.message
    del drv.fail["load_module"]
    res = be.run_job(_artifact("sm_90"), RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.LOAD_ERROR and "sm_90" in res.message and "sm_80" in res.message
    from farm.workloads.registry import build_workload

    cpu = build_workload("matmul", (8, 8, 8), "default", "llvm").artifact
    assert be.run_job(cpu, RunOptions()).outcome is Outcome.LOAD_ERROR


def test_runtime_error_resets_context_and_device_lost(fake: Any) -> None:
    drv, be = fake
    drv.fail["synchronize"] = 700  # CUDA_ERROR_ILLEGAL_ADDRESS: sticky
    res = be.run_job(_artifact(), RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.RUNTIME_ERROR and "700" in res.message
    assert drv.resets == 1
    drv.fail = {"launch": 100}  # CUDA_ERROR_NO_DEVICE
    assert be.run_job(_artifact(), RunOptions(min_repeat_ms=0)).outcome is Outcome.DEVICE_LOST
    drv.fail = {}
    assert be.run_job(_artifact(), RunOptions(min_repeat_ms=0)).outcome is Outcome.OK  # usable again


def test_describe(fake: Any) -> None:
    _, be = fake
    fp = be.describe()
    assert fp["gpu_name"] == "Fake A100" and fp["compute_capability"] == "8.0" and fp["sm_count"] == 108
    assert fp["driver_version"] == "12.4" and fp["memory_bytes"] == 40 << 30
    assert fp["target"] == "cuda -arch=sm_80"
    from farm.client.session import target_of

    assert target_of(fp) == "cuda -arch=sm_80"


def test_missing_driver_is_a_clear_error() -> None:
    from devices.cuda_driver import CudaUnavailable, Driver

    with pytest.raises(CudaUnavailable, match="no CUDA driver library"):
        Driver(0, library="libcuda-does-not-exist.so.1")


@pytest.fixture(scope="module")
def stub_lib(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C stand-in for libcuda (tests/cuda/stub_libcuda.c), compiled here."""
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stub libcuda")
    out = tmp_path_factory.mktemp("stubcuda") / "libcuda_stub.so"
    src = Path(__file__).with_name("stub_libcuda.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True, capture_output=True)
    return str(out)


def test_ctypes_driver_against_stub_library(stub_lib: str) -> None:
    """The real Driver's ctypes signatures, end to end: init, attributes, JIT options
    (error log), kernelParams marshalling, memory copies, events, error names."""
    import ctypes

    from devices.cuda import CudaBackend
    from devices.cuda_driver import Driver

    drv = Driver(0, library=stub_lib)
    shape = (48, 40, 24)
    ctypes.CDLL(stub_lib).stub_set_shape(*shape)
    be = CudaBackend(key="stub", driver=drv)
    fp = be.describe()
    assert fp["gpu_name"] == "Stub GPU" and fp["compute_capability"] == "8.6" and fp["sm_count"] == 84
    assert fp["memory_bytes"] == 24 << 30 and fp["driver_version"] == "12.4"
    art = _artifact("sm_80", shape)
    res = be.run_job(art, RunOptions(number=2, repeat=2, min_repeat_ms=0, flush_cache=True))
    assert res.outcome is Outcome.OK and res.checked, res.message
    assert len(res.costs) == 2 and all(c > 0 for c in res.costs) and res.extra["registers"] == 32
    dims = (ctypes.c_int * 6)()
    ctypes.CDLL(stub_lib).stub_last_dims(dims)
    assert list(dims) == art.meta["grid"] + art.meta["block"]
    bad = type(art)(**{**art.__dict__, "code": art.code + b"\n// INVALID\n"})
    res = be.run_job(bad, RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.LOAD_ERROR
    assert "CUDA_ERROR_INVALID_PTX" in res.message and "stub rejects INVALID" in res.message
    big = type(art)(**{**art.__dict__, "meta": {"grid": [1, 1, 1], "block": [2048, 1, 1], "shared_bytes": 0}})
    res = be.run_job(big, RunOptions(min_repeat_ms=0))
    assert res.outcome is Outcome.RUNTIME_ERROR and "2048" in res.message
