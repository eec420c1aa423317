"""Stored values: a JSON header and the images' raw bytes, never pickle.

    MAGIC | header length (4 bytes, big-endian) | header (UTF-8 JSON) | image 0 | image 1 | ...

The header holds the fingerprint of the request the response answers, the response's
fields and each image's media type, seed and length; the images follow as they were sent
(PNG or .npy bytes), so a cached response is byte for byte the first one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from service.backends.base import ModelInfo
from service.cache.keys import SCHEMA_VERSION
from service.requests import EditOutcome, OutputImage

MAGIC = b"SDEDIT\x00"
_LENGTH = struct.Struct(">I")


class CorruptEntry(ValueError):
    """A stored value that is not ours or not for this model."""


@dataclass(frozen=True)
class Entry:
    """A response and the fingerprint of the request it answered."""

    fingerprint: str
    outcome: EditOutcome


def encode_entry(entry: Entry) -> bytes:
    o = entry.outcome
    header = {
        "schema": SCHEMA_VERSION,
        "fingerprint": entry.fingerprint,
        "model": o.model.name,
        "model_hash": o.model.content_hash,
        "network_calls": o.network_calls,
        "steps": o.steps,
        "repeats": o.repeats,
        "sampler": o.sampler,
        "images": [{"media_type": i.media_type, "seed": i.seed, "length": len(i.data)} for i in o.images],
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LENGTH.pack(len(raw)), raw, *(i.data for i in o.images)])


def decode_entry(value: bytes, model: ModelInfo, check_model: bool = True) -> Entry:
    """The entry, checked against `model`; CorruptEntry when it does not parse or fit.

    check_model=False reads an entry of another model version too: a request_id record
    must be read whatever it answered, so that its fingerprint (which covers the model and
    its hash) can be compared with the new request's. The outcome then names `model`, so
    use it only when the fingerprints match.
    """
    if not value.startswith(MAGIC) or len(value) < len(MAGIC) + _LENGTH.size:
        raise CorruptEntry("not a cache entry")
    start = len(MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(value, len(MAGIC))
    try:
        header = json.loads(value[start:start + length])
        schema, model_hash, described = header["schema"], header["model_hash"], header["images"]
        offset = start + length
        images = []
        for image in described:
            end = offset + image["length"]
            images.append(OutputImage(value[offset:end], image["media_type"], image["seed"]))
            offset = end
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"unreadable entry: {exc}") from exc
    if schema != SCHEMA_VERSION or (check_model and model_hash != model.content_hash):
        raise CorruptEntry("entry of another schema or model version")
    if offset != len(value):
        raise CorruptEntry(f"entry length {len(value)} does not match its header ({offset})")
    outcome = EditOutcome(images=images, network_calls=header["network_calls"], model=model, steps=header["steps"],
                          repeats=header["repeats"], sampler=header["sampler"], cached=True)
    return Entry(header["fingerprint"], outcome)
