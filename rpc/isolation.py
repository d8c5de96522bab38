"""Running jobs in isolated child processes with a hard timeout.

Each slot of a device server owns one long-lived ``rpc.worker`` child (spawned,
not forked, so no parent state leaks in; kept warm so a job does not pay the
numpy/llvmlite import). A child that dies mid-job turns that job into
RUNTIME_ERROR (with the signal name); one that misses the deadline is killed
with SIGKILL and the job is RUN_TIMEOUT. Either way the slot spawns a fresh
child and the server keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from farm.records.measure import Outcome
from rpc import codec
from rpc.errors import ProtocolError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


def _error(outcome: Outcome, message: str, flops: float = 0.0) -> dict[str, Any]:
    return {"outcome": outcome.value, "message": message, "costs": [], "flops": flops}


class WorkerProcess:
    """One child running ``python -m rpc.worker``; not safe for concurrent jobs."""

    def __init__(self, kind: str, cwd: str | None = None) -> None:
        self.kind = kind
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.describe: dict[str, Any] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rpc.worker", "--kind", self.kind,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=self.cwd,
            limit=1 << 20,
        )
        try:
            msg = await asyncio.wait_for(self._recv(), READY_TIMEOUT_S)
        except (asyncio.IncompleteReadError, TimeoutError, ProtocolError) as e:
            await self.kill()
            raise RuntimeError(f"worker for kind {self.kind!r} did not start: {type(e).__name__}") from None
        except asyncio.CancelledError:
            await asyncio.shield(self.kill())
            raise
        if msg.op != "ready":
            await self.kill()
            raise RuntimeError(f"worker for kind {self.kind!r} failed to start: {msg.header.get('error')}")
        self.describe = msg.header.get("describe") or {}

    async def _recv(self) -> codec.Message:
        assert self.proc and self.proc.stdout
        prefix = await self.proc.stdout.readexactly(codec.PREFIX_SIZE)
        json_len, blob_len = codec.parse_prefix(prefix)
        return codec.decode_body(json_len, blob_len, await self.proc.stdout.readexactly(json_len + blob_len))

    async def run(
        self, artifact: dict[str, Any], code: bytes, options: dict[str, Any], hard_timeout: float,
        reference: tuple[dict[str, Any], bytes] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Run one job. Returns (result JSON, child still usable)."""
        assert self.proc and self.proc.stdin
        flops = float(artifact.get("flops", 0.0) or 0.0)
        t0 = time.monotonic()
        try:
            header: dict[str, Any] = {"op": "run", "artifact": artifact, "options": options}
            blobs = [code]
            if reference is not None:  # the second blob is the reference's code
                header["reference"] = reference[0]
                blobs.append(reference[1])
            self.proc.stdin.writelines(codec.encode(header, blobs))
            await self.proc.stdin.drain()
            msg = await asyncio.wait_for(self._recv(), hard_timeout)
            if msg.op != "result" or not isinstance(msg.header.get("result"), dict):
                raise ProtocolError(f"worker sent {msg.op!r}")
            return msg.header["result"], True
        except TimeoutError:
            await self.kill()
            return _error(Outcome.RUN_TIMEOUT, f"killed after the hard timeout of {hard_timeout:.1f}s", flops), False
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as e:
            code_ = await self.kill()
            if code_ is not None and code_ < 0:
                try:
                    why = f"killed by {signal.Signals(-code_).name}"
                except ValueError:
                    why = f"killed by signal {-code_}"
            else:
                why = f"exited with status {code_}" if code_ is not None else f"{type(e).__name__}"
            log.warning("job child %s after %.2fs", why, time.monotonic() - t0)
            return _error(Outcome.RUNTIME_ERROR, f"kernel process {why}", flops), False

    async def kill(self) -> int | None:
        """SIGKILL and reap; returns the exit status (negative: signal)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            # os.kill, not proc.kill(): Popen.kill() polls first and would reap a
            # child that just crashed, stealing its status from asyncio's watcher
            # (which then reports 255 instead of the signal).
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:  # unkillable (D state): nothing more we can do
            return proc.returncode

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class WorkerPool:
    """``size`` slots, each with a warm child; a broken child is replaced at once."""

    def __init__(self, kind: str, size: int = 1, cwd: str | None = None) -> None:
        self.kind = kind
        self.size = size
        self.cwd = cwd or os.getcwd()
        self._free: asyncio.Queue[WorkerProcess] = asyncio.Queue()
        self._all: set[WorkerProcess] = set()
        self.describe: dict[str, Any] = {}
        self.crashes = 0
        self._respawning: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        workers = [WorkerProcess(self.kind, self.cwd) for _ in range(self.size)]
        await asyncio.gather(*(w.start() for w in workers))
        self.describe = workers[0].describe
        for w in workers:
            self._all.add(w)
            self._free.put_nowait(w)

    async def run(
        self, artifact: dict[str, Any], code: bytes, options: dict[str, Any], hard_timeout: float,
        reference: tuple[dict[str, Any], bytes] | None = None,
    ) -> dict[str, Any]:
        worker = await self._free.get()
        ok = False
        try:
            if worker.proc is None:  # replaced lazily after an earlier failure
                await worker.start()
            result, ok = await worker.run(artifact, code, options, hard_timeout, reference)
            if not ok:
                self.crashes += 1
            return result
        finally:
            if not ok:
                # Cancelled or crashed: never reuse a child in an unknown state.
                await asyncio.shield(worker.kill())
                if not self._closed:
                    task = asyncio.ensure_future(self._respawn(worker))
                    self._respawning.add(task)
                    task.add_done_callback(self._respawning.discard)
            else:
                self._free.put_nowait(worker)

    async def _respawn(self, worker: WorkerProcess) -> None:
        try:
            await worker.start()
        except RuntimeError as e:
            log.error("%s; will retry on the next job", e)
        self._free.put_nowait(worker)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
        for w in self._all:
            await w.kill()
