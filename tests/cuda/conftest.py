"""CUDA tests: PTX through ptxas (installed with the toolkit), the execution
simulator, the backend against a fake driver, and (marked ``gpu``) a real GPU."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(scope="session")
def ptxas() -> Any:
    """Assemble PTX for an arch; returns (returncode, stderr). Skips without ptxas."""
    exe = shutil.which("ptxas") or ("/usr/local/bin/ptxas" if Path("/usr/local/bin/ptxas").exists() else None)
    if exe is None:
        pytest.skip("ptxas is not on PATH (install the CUDA toolkit to check generated PTX)")

    def run(ptx: bytes, arch: str, tmp: Path) -> tuple[int, str]:
        src = tmp / f"kernel_{arch}.ptx"
        src.write_bytes(ptx)
        r = subprocess.run([exe, f"-arch={arch}", str(src), "-o", str(tmp / f"kernel_{arch}.cubin")],
                           capture_output=True, text=True, timeout=120, check=False)
        return r.returncode, r.stderr

    return run


def _gpu_skip_reason() -> str | None:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1) on this machine"
    from devices.cuda_driver import CudaUnavailable, Driver

    try:
        Driver(0)
    except CudaUnavailable as e:
        return f"CUDA driver present but no usable GPU: {e}"
    return None


@pytest.fixture(scope="session")
def cuda_backend() -> Any:
    reason = _gpu_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from devices.cuda import CudaBackend

    return CudaBackend(key="gpu-test")
