"""Cache keys: a SHA-256 fingerprint of everything that determines an edit's output.

The fingerprint covers the decoded image and mask (not their encoded bytes: two PNGs of
the same pixels are one request), every parameter as actually used (defaults filled in),
the seed, the model's name and its content hash (a new model version never serves an old
result). Keys are namespaced `<prefix>:v<schema>:<kind>:...`, so results, request_id
records and locks never collide, and a schema change never reads old entries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from service.backends.base import ModelInfo
from service.requests import EditJob

SCHEMA_VERSION = 1  # bump when the fingerprint or the stored value changes meaning


@dataclass(frozen=True)
class RequestKey:
    fingerprint: str  # hex SHA-256
    seeded: bool  # only seeded (deterministic) edits are cached as results
    request_id: str = ""


def _hash_array(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(json.dumps([array.dtype.str, list(array.shape)]).encode())
    digest.update(array.tobytes())


def request_key(job: EditJob, info: ModelInfo) -> RequestKey:
    p = job.params
    header = {
        "schema": SCHEMA_VERSION,
        "model": info.name,
        "model_hash": info.content_hash,
        "t0": float(p.t0).hex(),  # exact, not a rounded decimal
        "steps": p.steps,
        "repeats": p.repeats,
        "sampler": p.sampler,
        "spacing": p.spacing,
        "eta": float(p.eta).hex(),
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
    return RequestKey(digest.hexdigest(), job.request.seed is not None, job.request.request_id)


class KeySpace:
    def __init__(self, prefix: str):
        self.base = f"{prefix}:v{SCHEMA_VERSION}"

    def result(self, fingerprint: str) -> str:
        return f"{self.base}:result:{fingerprint}"

    def request(self, request_id: str) -> str:
        return f"{self.base}:request:{hashlib.sha256(request_id.encode()).hexdigest()}"

    def lock(self, key: str) -> str:
        """The single-flight lock of a result or request key."""
        return f"{self.base}:lock:{key.removeprefix(self.base + ':')}"
