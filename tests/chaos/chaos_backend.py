"""A real CPU device backend with injected faults, for the chaos suite.

``--kind tests.chaos.chaos_backend:ChaosBackend`` runs every artifact through
the real CpuBackend (MCJIT load, reference check, native timing) unless the
artifact's content hash selects a fault, in the job child, for real:

* ``segfault`` -- a read of address 0 (SIGSEGV in the child);
* ``hang``     -- a busy loop that never returns (the hard timeout kills it);
* ``oob``      -- a write that runs past the end of a buffer into a guard page
  (mprotect'ed PROT_NONE), as a kernel with a bad index would: SIGSEGV.

Selection is a pure function of the hash, so a requeued or resubmitted job
fails the same way on any device, and the test can predict which trials must
carry which outcome. Environment (read in the child, which inherits it):
``KF_CHAOS_FAULTS="segfault:0.08,hang:0.04,oob:0.06"`` and ``KF_CHAOS_SLOW_S``
(extra seconds before each job: a slow device).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import time

from devices.cpu import CpuBackend
from farm.records.artifact import Artifact
from farm.records.measure import MeasureResult, RunOptions

FAULTS = ("segfault", "hang", "oob")


def parse_faults(spec: str) -> list[tuple[str, float]]:
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rate = part.partition(":")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {FAULTS}")
        out.append((name, float(rate)))
    return out


def fault_for(art_hash: str, faults: list[tuple[str, float]]) -> str | None:
    """The fault a hash selects: its first 8 hex digits as a uniform draw in [0, 1)."""
    u = int(art_hash[:8], 16) / float(1 << 32)
    edge = 0.0
    for name, rate in faults:
        edge += rate
        if u < edge:
            return name
    return None


def _write_past_end() -> None:
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(base + page), page, 0) != 0:  # PROT_NONE guard after the buffer
        raise OSError(ctypes.get_errno(), "mprotect failed")
    ctypes.memset(base, 0x7F, page + 64)  # 64 bytes past the end: into the guard page


class ChaosBackend(CpuBackend):
    """CpuBackend plus hash-selected native faults and an optional delay."""

    def run_job(self, artifact: Artifact, options: RunOptions) -> MeasureResult:
        slow = float(os.environ.get("KF_CHAOS_SLOW_S", "0") or 0)
        if slow > 0:
            time.sleep(slow)
        fault = fault_for(artifact.hash, parse_faults(os.environ.get("KF_CHAOS_FAULTS", "")))
        if fault == "segfault":
            ctypes.string_at(0)
        elif fault == "hang":
            while True:
                pass
        elif fault == "oob":
            _write_past_end()
        return super().run_job(artifact, options)
