"""What a device compares a kernel's outputs with, and the comparison's cache.

* A built-in workload (the artifact names it, without a compute hash): its numpy reference in
  ``farm.workloads.references``, computed here.
* A user kernel: the reference the artifact carries, never the user's Python. ``naive`` is the
  same compute with nothing scheduled, compiled by the client for this device: it runs here on
  the same seeded inputs. ``outputs`` are expected arrays the client computed (its ``reference=``
  numpy function, or the naive schedule on its own CPU for a GPU device).

A job whose artifact names a reference that did not arrive is refused (LOAD_ERROR): it is never
timed unchecked. Results are cached per reference and seed: a campaign checks many configs of one
kernel on the same inputs.
"""
from __future__ import annotations

import collections
import json
from collections.abc import Sequence

import numpy as np

from farm.errors import LoadError
from farm.records.artifact import Artifact, outputs_of
from farm.runtime.buffers import aligned_empty
from farm.workloads.references import reference_for

_CACHE: collections.OrderedDict[str, list[np.ndarray] | None] = collections.OrderedDict()
_CACHE_SIZE = 4


def builtin_outputs(artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """The numpy reference of the built-in workload the artifact names, if it names one."""
    wl = artifact.workload
    if not wl or wl.get("hash"):  # a user kernel's name says nothing about what it computes
        return None
    ref = reference_for(str(wl["name"]))
    if ref is None:
        return None
    ins = [a for a, s in zip(inputs, artifact.args) if s.role == "in"]
    return [np.asarray(o) for o in ref(list(wl["args"]), ins)]


def _naive_outputs(artifact: Artifact, reference: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from farm.runtime.loader import LoadedKernel

    if [(s.shape, s.dtype, s.role) for s in reference.args] != [(s.shape, s.dtype, s.role) for s in artifact.args]:
        raise LoadError("the naive reference's arguments differ from the kernel's")
    kernel = LoadedKernel(reference)
    arrays = []
    for a, spec in zip(inputs, reference.args):
        if spec.role == "in":
            arrays.append(a)
        else:
            out = aligned_empty(spec.shape, spec.dtype)
            out[...] = 0
            arrays.append(out)
    kernel(*arrays)
    return [a for a, s in zip(arrays, reference.args) if s.role == "out"]


def _carried_outputs(artifact: Artifact, reference: Artifact | None, inputs: Sequence[np.ndarray],
                     seed: int) -> list[np.ndarray]:
    want = artifact.reference or {}
    if reference is None or reference.hash != want.get("hash"):
        raise LoadError(f"the job's {want.get('kind')} reference {str(want.get('hash'))[:12]}... did not arrive; "
                        "a kernel that carries a reference is never run unchecked")
    if want["kind"] == "outputs":
        if reference.kind != "outputs" or int(reference.meta.get("seed", -1)) != seed:
            raise LoadError(f"the reference outputs were computed for seed {reference.meta.get('seed')}, "
                            f"the job runs seed {seed}")
        return outputs_of(reference)
    if reference.kind != "object":
        raise LoadError(f"a naive reference must be a CPU object, got {reference.kind!r}")
    return _naive_outputs(artifact, reference, inputs)


def expected_outputs(artifact: Artifact, inputs: Sequence[np.ndarray], seed: int,
                     reference: Artifact | None = None) -> list[np.ndarray] | None:
    """The outputs ``artifact`` must produce on ``inputs`` (= seeded_inputs(artifact.args, seed)),
    or None when nothing says what they are. Raises LoadError for a missing or mismatched reference."""
    if artifact.reference:
        key = json.dumps(["carried", artifact.reference, seed], sort_keys=True)
    else:
        key = json.dumps([artifact.workload, seed, [a.to_json() for a in artifact.args]], sort_keys=True)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if artifact.reference:
        out: list[np.ndarray] | None = _carried_outputs(artifact, reference, inputs, seed)
    else:
        out = builtin_outputs(artifact, inputs)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out
