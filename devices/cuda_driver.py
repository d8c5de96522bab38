"""The CUDA driver API through ctypes (libcuda.so.1): only the calls the farm needs.

No toolkit and no Python CUDA package is required on a device: the driver
JIT-compiles the PTX the builders produce. Every call is checked; a failure
raises ``CudaError`` carrying the CUresult code and the driver's own name for
it, so the backend classifies by code, never by message text.

The device is picked by ordinal among the visible ones; choose a GPU for a
device server with ``CUDA_VISIBLE_DEVICES`` in its environment.
"""
from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from typing import Any

from farm.errors import FarmError

log = logging.getLogger(__name__)

_u32, _i32, _u64, _sz, _vp = ctypes.c_uint, ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p
_pvp = ctypes.POINTER(ctypes.c_void_p)

# CUresult codes the backend treats specially (cuda.h).
NOT_INITIALIZED, DEINITIALIZED, NO_DEVICE, INVALID_DEVICE = 3, 4, 100, 101
DEVICE_UNAVAILABLE, ECC_UNCORRECTABLE = 46, 214
DEVICE_LOST_CODES = frozenset({NOT_INITIALIZED, DEINITIALIZED, NO_DEVICE, INVALID_DEVICE, DEVICE_UNAVAILABLE,
                               ECC_UNCORRECTABLE})

# CUdevice_attribute values (cuda.h).
ATTR = {"max_threads_per_block": 1, "max_shared_per_block": 8, "clock_khz": 13, "sm_count": 16,
        "memory_clock_khz": 36, "memory_bus_bits": 37, "l2_bytes": 38, "cc_major": 75, "cc_minor": 76,
        "max_shared_per_block_optin": 97}
# CUfunction_attribute values.
FUNC_ATTR = {"max_threads_per_block": 0, "shared_bytes": 1, "local_bytes": 3, "registers": 4}
_JIT_ERROR_LOG_BUFFER, _JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 5, 6

# name -> argtypes; every function returns CUresult (int).
_SIGNATURES: dict[str, list[Any]] = {
    "cuInit": [_u32],
    "cuDriverGetVersion": [ctypes.POINTER(_i32)],
    "cuDeviceGetCount": [ctypes.POINTER(_i32)],
    "cuDeviceGet": [ctypes.POINTER(_i32), _i32],
    "cuDeviceGetName": [ctypes.c_char_p, _i32, _i32],
    "cuDeviceGetAttribute": [ctypes.POINTER(_i32), _i32, _i32],
    "cuDeviceTotalMem_v2": [ctypes.POINTER(_sz), _i32],
    "cuDevicePrimaryCtxRetain": [_pvp, _i32],
    "cuDevicePrimaryCtxRelease_v2": [_i32],
    "cuDevicePrimaryCtxReset_v2": [_i32],
    "cuCtxSetCurrent": [_vp],
    "cuCtxSynchronize": [],
    "cuModuleLoadDataEx": [_pvp, ctypes.c_char_p, _u32, ctypes.POINTER(_i32), _pvp],
    "cuModuleGetFunction": [_pvp, _vp, ctypes.c_char_p],
    "cuModuleUnload": [_vp],
    "cuFuncGetAttribute": [ctypes.POINTER(_i32), _i32, _vp],
    "cuMemAlloc_v2": [ctypes.POINTER(_u64), _sz],
    "cuMemFree_v2": [_u64],
    "cuMemcpyHtoD_v2": [_u64, _vp, _sz],
    "cuMemcpyDtoH_v2": [_vp, _u64, _sz],
    "cuMemsetD8_v2": [_u64, ctypes.c_ubyte, _sz],
    "cuLaunchKernel": [_vp, _u32, _u32, _u32, _u32, _u32, _u32, _u32, _vp, _pvp, _pvp],
    "cuEventCreate": [_pvp, _u32],
    "cuEventRecord": [_vp, _vp],
    "cuEventSynchronize": [_vp],
    "cuEventDestroy_v2": [_vp],
    "cuGetErrorName": [_i32, ctypes.POINTER(ctypes.c_char_p)],
}
# CUDA 12.8+ names the event timer cuEventElapsedTime_v2; older drivers only have the first.
_ELAPSED = ("cuEventElapsedTime_v2", "cuEventElapsedTime")


class CudaError(FarmError):
    """A driver call failed; ``code`` is the CUresult, ``name`` the driver's name for it."""

    def __init__(self, call: str, code: int, name: str, detail: str = "") -> None:
        self.call, self.code, self.name = call, code, name
        super().__init__(f"{call} failed: {name} ({code})" + (f": {detail}" if detail else ""))


class CudaUnavailable(FarmError):
    """No CUDA driver library, or no device, on this machine."""


class Driver:
    """libcuda.so.1 with checked, typed calls. One context (the device's primary one)."""

    def __init__(self, ordinal: int = 0, library: str | None = None) -> None:
        lib, names = None, [library] if library else ["libcuda.so.1", "libcuda.so"]
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                err = e
        if lib is None:
            raise CudaUnavailable(f"no CUDA driver library on this machine (tried {', '.join(names)}: {err})")
        self.lib = lib
        for fname, argtypes in _SIGNATURES.items():
            try:
                fn = getattr(lib, fname)
            except AttributeError as e:
                raise CudaUnavailable(f"the CUDA driver is too old: it lacks {fname}") from e
            fn.argtypes, fn.restype = argtypes, _i32
        elapsed = next((getattr(lib, n) for n in _ELAPSED if hasattr(lib, n)), None)
        if elapsed is None:
            raise CudaUnavailable("the CUDA driver lacks cuEventElapsedTime")
        self._elapsed: Any = elapsed
        self._elapsed.argtypes, self._elapsed.restype = [ctypes.POINTER(ctypes.c_float), _vp, _vp], _i32
        try:
            self.check("cuInit", lib.cuInit(0))
            count = _i32()
            self.check("cuDeviceGetCount", lib.cuDeviceGetCount(ctypes.byref(count)))
        except CudaError as e:
            raise CudaUnavailable(f"CUDA driver present but unusable: {e}") from e
        if ordinal >= count.value:
            raise CudaUnavailable(f"CUDA device {ordinal} requested, {count.value} visible")
        dev = _i32()
        self.check("cuDeviceGet", lib.cuDeviceGet(ctypes.byref(dev), ordinal))
        self.device = dev.value
        self.ctx: int | None = None

    # --- plumbing -------------------------------------------------------------
    def error_name(self, code: int) -> str:
        s = ctypes.c_char_p()
        if self.lib.cuGetErrorName(code, ctypes.byref(s)) == 0 and s.value:
            return s.value.decode()
        return f"CUDA_ERROR_{code}"

    def check(self, call: str, code: int, detail: str = "") -> None:
        if code != 0:
            raise CudaError(call, code, self.error_name(code), detail)

    def _call(self, name: str, *args: Any) -> None:
        self.check(name, getattr(self.lib, name)(*args))

    # --- device and context -----------------------------------------------------
    def attribute(self, name: str) -> int:
        v = _i32()
        self._call("cuDeviceGetAttribute", ctypes.byref(v), ATTR[name], self.device)
        return v.value

    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", buf, 256, self.device)
        return buf.value.decode(errors="replace")

    def total_memory(self) -> int:
        v = _sz()
        self._call("cuDeviceTotalMem_v2", ctypes.byref(v), self.device)
        return int(v.value)

    def driver_version(self) -> int:
        v = _i32()
        self._call("cuDriverGetVersion", ctypes.byref(v))
        return v.value

    def activate(self) -> None:
        """Retain the primary context (once) and make it current on this thread."""
        if self.ctx is None:
            ctx = _vp()
            self._call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self.device)
            self.ctx = ctx.value
        self._call("cuCtxSetCurrent", self.ctx)

    def reset(self) -> None:
        """After a sticky error (illegal address, trap) the context is unusable: drop it."""
        try:
            self._call("cuDevicePrimaryCtxReset_v2", self.device)
        except CudaError:
            log.warning("resetting the primary context failed", exc_info=True)
        self.ctx = None

    def synchronize(self) -> None:
        self._call("cuCtxSynchronize")

    # --- modules ------------------------------------------------------------------
    def load_module(self, image: bytes) -> int:
        """Load PTX (NUL-terminated here); a JIT failure carries the JIT's log."""
        log_buf = ctypes.create_string_buffer(8192)
        opts = (_i32 * 2)(_JIT_ERROR_LOG_BUFFER, _JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        vals = (_vp * 2)(ctypes.cast(log_buf, _vp), _vp(8192))
        mod = _vp()
        code = self.lib.cuModuleLoadDataEx(ctypes.byref(mod), image if image.endswith(b"\0") else image + b"\0",
                                           2, opts, vals)
        self.check("cuModuleLoadDataEx", code, log_buf.value.decode(errors="replace").strip())
        return int(mod.value or 0)

    def unload_module(self, module: int) -> None:
        self._call("cuModuleUnload", _vp(module))

    def function(self, module: int, name: str) -> int:
        fn = _vp()
        self._call("cuModuleGetFunction", ctypes.byref(fn), _vp(module), name.encode())
        return int(fn.value or 0)

    def function_attribute(self, fn: int, name: str) -> int:
        v = _i32()
        self._call("cuFuncGetAttribute", ctypes.byref(v), FUNC_ATTR[name], _vp(fn))
        return v.value

    # --- memory ------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        p = _u64()
        self._call("cuMemAlloc_v2", ctypes.byref(p), max(1, nbytes))
        return p.value

    def free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ptr)

    def copy_to_device(self, ptr: int, host: Any) -> None:
        """``host``: a C-contiguous numpy array."""
        self._call("cuMemcpyHtoD_v2", ptr, _vp(host.ctypes.data), host.nbytes)

    def copy_to_host(self, host: Any, ptr: int) -> None:
        self._call("cuMemcpyDtoH_v2", _vp(host.ctypes.data), ptr, host.nbytes)

    def memset(self, ptr: int, value: int, nbytes: int) -> None:
        self._call("cuMemsetD8_v2", ptr, value, nbytes)

    # --- launch and timing ----------------------------------------------------------
    def launch(self, fn: int, grid: Sequence[int], block: Sequence[int], shared: int, ptrs: Sequence[int]) -> None:
        """Asynchronous launch on the default stream; arguments are device pointers."""
        vals = [_u64(p) for p in ptrs]
        # kernelParams is an array of pointers to each argument's value; ``vals`` outlives the call.
        params = (_vp * max(1, len(vals)))(*[ctypes.addressof(v) for v in vals])
        self._call("cuLaunchKernel", _vp(fn), *[int(x) for x in grid], *[int(x) for x in block], int(shared),
                   None, params, None)

    def event(self) -> int:
        ev = _vp()
        self._call("cuEventCreate", ctypes.byref(ev), 0)
        return int(ev.value or 0)

    def record(self, ev: int) -> None:
        self._call("cuEventRecord", _vp(ev), None)

    def elapsed_ms(self, start: int, stop: int) -> float:
        """Milliseconds between two recorded events (waits for ``stop``)."""
        self._call("cuEventSynchronize", _vp(stop))
        ms = ctypes.c_float()
        self.check("cuEventElapsedTime", self._elapsed(ctypes.byref(ms), _vp(start), _vp(stop)))
        return float(ms.value)

    def destroy_event(self, ev: int) -> None:
        self._call("cuEventDestroy_v2", _vp(ev))
