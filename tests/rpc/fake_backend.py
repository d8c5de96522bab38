"""A tiny device backend for tests and the benchmark's sleeping kernel.

The artifact's code is JSON telling the backend what to do: sleep, crash
(a real SIGSEGV), hang, abort, or claim a wrong answer. It lets the RPC tests
exercise real processes and real isolation without compiling anything.
"""
from __future__ import annotations

import ctypes
import json
import os
import time
from typing import Any

from farm.records.artifact import ArgSpec, Artifact
from farm.records.measure import MeasureResult, Outcome, RunOptions

KIND = "tests.rpc.fake_backend:FakeBackend"


def fake_artifact(mode: str = "ok", sleep: float = 0.0, tag: Any = None, pad: int = 0) -> Artifact:
    code = json.dumps({"mode": mode, "sleep": sleep, "tag": tag}).encode() + b" " * pad
    return Artifact(
        target="llvm", triple="x86_64-unknown-linux-gnu", cpu="generic", features="", kind="object",
        code=code, args=(ArgSpec("A", (4,), "float32", "out"),), flops=1e6,
        workload={"name": "fake", "args": [mode]},
    )


class FakeBackend:
    kind = "fake"

    def describe(self) -> dict[str, Any]:
        return {"cpu": "fake", "triple": "x86_64-unknown-linux-gnu", "target": "llvm -mcpu=generic", "cores": 1}

    def run_job(self, artifact: Artifact, options: RunOptions) -> MeasureResult:
        spec = json.loads(artifact.code)
        started = time.time()
        mode = spec["mode"]
        if mode == "segfault":
            ctypes.string_at(0)  # a real SIGSEGV in this process
        elif mode == "abort":
            os.abort()
        elif mode == "hang":
            while True:
                time.sleep(0.05)
        elif mode == "raise":
            raise RuntimeError("backend exploded")
        time.sleep(spec["sleep"])
        extra = {"pid": os.getpid(), "tag": spec["tag"], "started": started}
        if mode == "wrong":
            return MeasureResult.error(
                Outcome.WRONG_ANSWER, "max abs error 1.0 at C[0]", flops=artifact.flops, extra=extra
            )
        cost = max(spec["sleep"], 1e-6)
        return MeasureResult(Outcome.OK, costs=(cost,) * options.repeat, flops=artifact.flops, number=1,
                             checked=True, extra=extra)
