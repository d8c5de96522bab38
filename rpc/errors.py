"""The RPC layer's exception tree, and its wire form.

These do not subclass ``farm.errors.FarmError``: the RPC layer stands on its
own (it imports only farm's records and error module, which are standard
library only); the CLI and the laptop API translate them at their boundaries.

Errors cross the wire as ``{"type": <class name>, "message": ...}`` and are
re-raised on the caller's side as the same class (``from_wire``); a type the
caller does not know becomes ``RemoteError`` with the remote type kept.
"""
from __future__ import annotations

from typing import Any

from farm.records.measure import Outcome


class RpcError(Exception):
    """Base of every error the RPC layer raises on purpose."""


class ProtocolError(RpcError):
    """The peer sent something that is not a valid frame or message."""


class FrameTooLarge(ProtocolError):
    """A length header announced more bytes than the size cap allows."""


class AuthError(RpcError):
    """The shared-token challenge-response failed (wrong or missing token)."""


class VersionMismatch(RpcError):
    """The peers share no protocol version."""


class ConnectionLost(RpcError, ConnectionError):
    """The connection closed or went silent past its deadline."""


class DeadlineExceeded(RpcError, TimeoutError):
    """A job waited in the queue (or a call waited for a reply) past its budget."""


class NoSuchLease(RpcError, KeyError):
    """A lease id is unknown, released, or its device was lost."""


class ArtifactMissing(RpcError):
    """A job named an artifact hash the receiver does not hold."""


class BadRequest(RpcError, ValueError):
    """A well-formed message with invalid fields (unknown op, bad options...)."""


class JobCancelled(RpcError):
    """The job was cancelled before it ran (its client or lease went away)."""


class RemoteError(RpcError):
    """An error of a type this side does not know; ``remote_type`` names it."""

    def __init__(self, message: str, remote_type: str = "RemoteError") -> None:
        super().__init__(message)
        self.remote_type = remote_type


class MeasurementFailed(RpcError):
    """A measurement ended with an outcome other than OK (raised only on request).

    ``result`` holds the full MeasureResult; subclasses name the common outcomes.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class KernelCrashed(MeasurementFailed):
    """RUNTIME_ERROR: the kernel crashed its isolated child (e.g. a segfault)."""


class KernelHung(MeasurementFailed):
    """RUN_TIMEOUT: the kernel ran past its hard timeout and was killed."""


class WrongAnswer(MeasurementFailed):
    """WRONG_ANSWER: the output did not match the workload's reference."""


class DeviceLost(MeasurementFailed):
    """DEVICE_LOST: devices kept vanishing under the job until retries ran out."""


class LoadFailed(MeasurementFailed):
    """LOAD_ERROR: the device could not load the artifact."""


# Outcome -> exception class, for failure_for.
_BY_OUTCOME: dict[Outcome, type[MeasurementFailed]] = {
    Outcome.RUNTIME_ERROR: KernelCrashed,
    Outcome.RUN_TIMEOUT: KernelHung,
    Outcome.WRONG_ANSWER: WrongAnswer,
    Outcome.DEVICE_LOST: DeviceLost,
    Outcome.LOAD_ERROR: LoadFailed,
}


def failure_for(outcome: Outcome | str, message: str, result: Any = None) -> MeasurementFailed:
    """The MeasurementFailed subclass for an outcome (or its name)."""
    try:
        outcome = Outcome(outcome)
    except ValueError:
        return MeasurementFailed(f"{outcome}: {message}", result)
    return _BY_OUTCOME.get(outcome, MeasurementFailed)(f"{outcome.value}: {message}", result)


# Only these may be re-created from the wire: a peer must not make us
# instantiate arbitrary classes by name.
_WIRE_TYPES: dict[str, type[RpcError]] = {
    c.__name__: c
    for c in (
        RpcError,
        ProtocolError,
        FrameTooLarge,
        AuthError,
        VersionMismatch,
        ConnectionLost,
        DeadlineExceeded,
        NoSuchLease,
        ArtifactMissing,
        BadRequest,
        JobCancelled,
    )
}


def to_wire(exc: BaseException) -> dict[str, str]:
    """Structured form of an error, safe to send to a peer."""
    name = type(exc).__name__ if isinstance(exc, RpcError) else "RemoteError"
    if isinstance(exc, RemoteError):
        name = exc.remote_type
    return {"type": name, "message": str(exc.args[0]) if exc.args else str(exc)}


def from_wire(d: Any) -> RpcError:
    """Re-create a typed exception from its wire form (unknown types: RemoteError)."""
    if not isinstance(d, dict):
        return ProtocolError(f"malformed remote error: {d!r:.200}")
    name = str(d.get("type", "RemoteError"))
    message = str(d.get("message", ""))
    cls = _WIRE_TYPES.get(name)
    if cls is None:
        return RemoteError(message, remote_type=name)
    return cls(message)
