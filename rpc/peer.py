"""The tracker's side of one connection, what it holds to send a device one job, and the sending."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from rpc import codec
from rpc.artifacts import ArtifactStore, checked_hash
from rpc.errors import ArtifactMissing, BadRequest, RpcError
from rpc.transport import Connection

log = logging.getLogger("rpc.tracker")


@dataclass(eq=False)
class Peer:
    """One authenticated connection as the tracker holds it: an outbox drained by its own writer
    task, so actions never interleave on a connection and a slow peer blocks nobody else."""

    conn: Connection
    outbox: asyncio.Queue[tuple[dict[str, Any], list[bytes]]] = field(default_factory=asyncio.Queue)
    has: set[str] = field(default_factory=set)  # devices: artifact hashes it holds
    version: int = 1  # the protocol version its handshake agreed

    def post(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> None:
        self.outbox.put_nowait((header, blobs or []))

    async def writer(self) -> None:
        try:
            while True:
                header, blobs = await self.outbox.get()
                await self.conn.send(header, blobs)
        except RpcError as e:  # peer gone, or a message we could not frame
            log.info("writer to %s stopped: %s", self.conn.peer, e)
            self.conn.abort()


@dataclass(frozen=True)
class Payload:
    """What the tracker must send a device to run one job."""

    artifact: dict[str, Any]
    code: bytes
    options: dict[str, Any]
    reference: tuple[dict[str, Any], bytes] | None = None  # the check the artifact names (protocol 2)


def send_job(peer: Peer, device_id: str, job_id: str, p: Payload, stats: dict[str, int]) -> dict[str, Any] | None:
    """Post one job to its device: its reference ahead of it and its code, each only if the device
    does not hold that hash yet. Returns the job's result instead when the device cannot run it."""
    art_hash = p.artifact["hash"]
    if p.reference is not None:
        if peer.version < codec.REFERENCE_VERSION:
            # An older server would not check the reference: it never runs this job.
            return {"outcome": "LOAD_ERROR", "costs": [], "message":
                    f"device {device_id} speaks protocol {peer.version}, which cannot check this kernel's "
                    "reference; upgrade kernelfarm on it"}
        ref_header, ref_code = p.reference
        if ref_header["hash"] not in peer.has:  # sent ahead of the job, once per device
            peer.post({"op": "artifact", "artifact": ref_header}, [ref_code])
            peer.has.add(ref_header["hash"])
            stats["device_uploads"] += 1
            stats["device_upload_bytes"] += len(ref_code)
    blobs = []
    if art_hash not in peer.has:  # content addressing: each device gets each hash once
        blobs = [p.code]
        peer.has.add(art_hash)
        stats["device_uploads"] += 1
        stats["device_upload_bytes"] += len(p.code)
    job = {"op": "job", "job_id": job_id, "artifact": p.artifact, "options": p.options}
    if p.reference is not None:
        job["reference"] = p.reference[0]
    peer.post(job, blobs)
    return None


def reference_of(store: ArtifactStore, artifact: dict[str, Any],
                 header: dict[str, Any] | None) -> tuple[dict[str, Any], bytes] | None:
    """The (header, code) of the reference ``artifact`` names; ArtifactMissing if not held."""
    want = artifact.get("reference")
    if want is None:
        return None
    if header is None or header.get("hash") != want["hash"]:
        raise BadRequest(f"submit: artifact names reference {want['hash'][:12]}... but the request's "
                         "'reference' header is another (or missing)")
    code = store.get(want["hash"])
    if code is None:
        raise ArtifactMissing(f"tracker does not hold reference {want['hash'][:12]}...; put it first")
    checked_hash(header, code)
    return header, code
