"""The isolated child that runs jobs for a device server: ``python -m rpc.worker --kind KIND``.

It speaks codec frames over its stdin/stdout (never pickle). Native code may
print or crash: fd 1 is pointed at stderr before anything runs so stray output
cannot corrupt the protocol, which uses a private duplicate of the original
stdout. The parent treats our death (segfault, abort) as RUNTIME_ERROR and a
missed deadline as RUN_TIMEOUT, and starts a fresh child; we never need to
survive a bad kernel ourselves.

Messages: we send ``ready`` (with the backend's ``describe()``) once, then
answer each ``run`` (artifact header + code blob + options) with ``result``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from typing import Any, BinaryIO

from rpc import codec
from rpc.lifetime import die_with_parent

log = logging.getLogger(__name__)

# Backend kinds -> "module:Class", imported lazily in the child only.
BACKENDS = {
    "cpu": "devices.cpu:CpuBackend",
    "cuda": "devices.cuda:CudaBackend",
}


def load_backend(kind: str) -> Any:
    """Instantiate the backend for ``kind`` (a known name or ``module:Class``)."""
    spec = BACKENDS.get(kind, kind)
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"unknown device kind {kind!r}; known: {sorted(BACKENDS)} or module:Class")
    return getattr(importlib.import_module(module), attr)()


def read_message(stream: BinaryIO) -> codec.Message | None:
    prefix = stream.read(codec.PREFIX_SIZE)
    if not prefix:
        return None
    json_len, blob_len = codec.parse_prefix(prefix)
    body = stream.read(json_len + blob_len)
    return codec.decode_body(json_len, blob_len, body)


def write_message(stream: BinaryIO, header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
    stream.writelines(codec.encode(header, blobs))
    stream.flush()


def run_one(backend: Any, msg: codec.Message) -> dict[str, Any]:
    """One job -> MeasureResult JSON. Python-level failures are classified by type here;
    native crashes never return and are classified by the parent."""
    from farm.errors import CompileError, LoadError
    from farm.records.artifact import Artifact
    from farm.records.measure import MeasureResult, Outcome, RunOptions

    t0 = time.perf_counter()
    try:
        options = RunOptions.from_json(msg.header.get("options") or {})
        artifact = Artifact.from_header(msg.header["artifact"], msg.blobs[0] if msg.blobs else b"")
        reference = None
        if msg.header.get("reference") is not None:
            reference = Artifact.from_header(msg.header["reference"], msg.blobs[1] if len(msg.blobs) > 1 else b"")
    except (LoadError, KeyError, TypeError, ValueError) as e:
        return MeasureResult.error(Outcome.LOAD_ERROR, f"{type(e).__name__}: {e}").to_json()
    try:
        result = backend.run_job(artifact, options, reference) if reference is not None else \
            backend.run_job(artifact, options)
    except (LoadError, CompileError) as e:
        result = MeasureResult.error(Outcome.LOAD_ERROR, f"{type(e).__name__}: {e}", flops=artifact.flops)
    except Exception as e:  # the kernel's or backend's failure is this job's result, not ours
        log.debug("job failed", exc_info=True)
        result = MeasureResult.error(Outcome.RUNTIME_ERROR, f"{type(e).__name__}: {e}", flops=artifact.flops)
    out = result.to_json()
    out.setdefault("extra", {})["worker_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpc.worker")
    parser.add_argument("--kind", default="cpu")
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="worker %(levelname)s %(name)s: %(message)s")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed from here on (Python or native) goes to stderr
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    try:
        backend = load_backend(args.kind)
        describe = backend.describe()
    except Exception as e:
        write_message(proto_out, {"op": "failed", "error": f"{type(e).__name__}: {e}"})
        return 1
    write_message(proto_out, {"op": "ready", "describe": describe, "pid": os.getpid()})
    while True:
        msg = read_message(proto_in)
        if msg is None or msg.op == "exit":
            return 0
        if msg.op == "run":
            write_message(proto_out, {"op": "result", "result": run_one(backend, msg)})


if __name__ == "__main__":
    sys.exit(main())
