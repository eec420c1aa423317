"""Cache keys: a SHA-256 fingerprint of everything that determines an edit's output.

The fingerprint covers the decoded image and mask (not their encoded bytes: two PNGs of
the same pixels are one request), every parameter as actually used (defaults filled in;
every field of EditParams, taken generically so that a new one is covered, but
preview_every), the seed, the model's name and its content hash (a new model version
never serves an old result), the precision the backend computes in (an fp16 TensorRT
replica and an fp32 ONNX Runtime one never share results) and the SDE code's
ENGINE_VERSION (service/sde: bumped when the math changes its outputs). Keys are namespaced `<prefix>:v<schema>:<kind>:...`, so results, request_id
records and locks never collide, and a schema change never reads old entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import sde
from service.backends.base import ModelInfo
from service.requests import EditJob
from service.sde import EditParams

SCHEMA_VERSION = 2  # bump when the fingerprint or the stored value changes meaning
# EditParams fields that never change the output (only the progress events)
NOT_IN_KEY = frozenset({"preview_every"})


@dataclass(frozen=True)
class RequestKey:
    fingerprint: str  # hex SHA-256
    seeded: bool  # only seeded (deterministic) edits are cached as results
    request_id: str = ""
    tenant: str = ""  # request_ids are per tenant: one tenant's id never meets another's


def _hash_array(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(json.dumps([array.dtype.str, list(array.shape)]).encode())
    digest.update(array.tobytes())


def _exact(value: Any) -> Any:
    """A parameter as JSON, exactly: floats as their hex form, not a rounded decimal."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_exact(v) for v in value]
    return value  # str, int, bool, None; anything else makes json.dumps fail loudly


def _params(params: EditParams) -> dict[str, Any]:
    return {f.name: _exact(getattr(params, f.name)) for f in dataclasses.fields(params) if f.name not in NOT_IN_KEY}


def request_key(job: EditJob, info: ModelInfo, tenant: str = "") -> RequestKey:
    header = {
        "schema": SCHEMA_VERSION,
        "engine": sde.ENGINE_VERSION,
        "model": info.name,
        "model_hash": info.content_hash,
        "precision": info.precision,
        "params": _params(job.params),
        "num_samples": len(job.seeds),
        "output_format": job.output_format,
        "seed": job.request.seed,  # None for unseeded requests (their random seeds are not part of the request)
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    _hash_array(digest, job.pixels)
    if job.mask is None:
        digest.update(b"no mask")
    else:
        _hash_array(digest, job.mask)
    return RequestKey(digest.hexdigest(), job.request.seed is not None, job.request.request_id, tenant)


class KeySpace:
    def __init__(self, prefix: str):
        self.base = f"{prefix}:v{SCHEMA_VERSION}"

    def result(self, fingerprint: str) -> str:
        return f"{self.base}:result:{fingerprint}"

    def request(self, request_id: str, tenant: str = "") -> str:
        """A request_id record's key: the id within its tenant's own space (no tenant: the
        shared space of a service without tokens). Results are shared: same request, same bytes."""
        scoped = f"{tenant}\0{request_id}" if tenant else request_id
        return f"{self.base}:request:{hashlib.sha256(scoped.encode()).hexdigest()}"

    def is_request(self, key: str) -> bool:
        return key.startswith(f"{self.base}:request:")

    def lock(self, key: str) -> str:
        """The single-flight lock of a result or request key."""
        return f"{self.base}:lock:{key.removeprefix(self.base + ':')}"
