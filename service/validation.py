"""Request validation: every problem is an InvalidArgument naming the field."""

from __future__ import annotations

import math
import secrets
import time

from service.config import Settings
from service.errors import InvalidArgument
from service.imaging import decode_image, decode_mask, to_model_range
from service.models import LoadedModel
from service.requests import EditJob, EditRequestData
from service.sdedit import EditParams
from service.sdedit.engine import max_steps
from service.sdedit.samplers import SAMPLERS, reference_sampler

MAX_REQUEST_ID = 128
SEED_MODULUS = 1 << 64
OUTPUT_FORMATS = ("png", "npy")


def sample_seeds(base: int | None, count: int) -> tuple[int, ...]:
    """Sample i uses base + i (mod 2^64), so any one can be rerun alone with its seed."""
    if base is None:
        base = secrets.randbits(64)
    return tuple((base + i) % SEED_MODULUS for i in range(count))


def validate_scalars(req: EditRequestData, model: LoadedModel, settings: Settings) -> EditParams:
    """Checks every non-image field; returns the loop's parameters with defaults filled in."""
    if not (isinstance(req.t0, float | int) and math.isfinite(req.t0) and 0.0 < req.t0 <= 1.0):
        raise InvalidArgument("t0", f"must be in (0, 1] (0 < t0 <= 1), got {req.t0}")
    sampler = req.sampler or reference_sampler(model.info.sde.sde_type)
    if sampler not in SAMPLERS:
        raise InvalidArgument("sampler", f"unknown sampler {req.sampler!r}")
    if not (math.isfinite(req.eta) and 0.0 <= req.eta <= 1.0):
        raise InvalidArgument("eta", f"must be in [0, 1], got {req.eta}")
    if req.eta and sampler != "ddim":
        raise InvalidArgument("eta", f"is only used by the DDIM sampler, not {sampler}")
    limit = max_steps(req.t0, model.schedule.num_levels)
    if req.steps < 0 or req.steps > limit:
        raise InvalidArgument(
            "steps", f"must be in [0, {limit}] at t0={req.t0:g} (round(t0 * {model.schedule.num_levels}) levels; 0 = all), got {req.steps}"
        )
    repeats = req.repeats or 1
    if not 1 <= repeats <= settings.max_repeats:
        raise InvalidArgument("repeats", f"must be in [1, {settings.max_repeats}], got {req.repeats}")
    num_samples = req.num_samples or 1
    if not 1 <= num_samples <= settings.max_num_samples:
        raise InvalidArgument("num_samples", f"must be in [1, {settings.max_num_samples}], got {req.num_samples}")
    if req.output_format not in OUTPUT_FORMATS:
        raise InvalidArgument("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, got {req.output_format!r}")
    if req.preview_every < 0:
        raise InvalidArgument("preview_every", f"must be >= 0, got {req.preview_every}")
    if len(req.request_id) > MAX_REQUEST_ID or not req.request_id.isprintable():
        raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID} printable characters")
    if req.seed is not None and not 0 <= req.seed < SEED_MODULUS:
        raise InvalidArgument("seed", f"must be in [0, 2^64), got {req.seed}")
    return EditParams(t0=float(req.t0), steps=req.steps or limit, repeats=repeats, sampler=sampler,
                      eta=float(req.eta), preview_every=req.preview_every)


def prepare_job(req: EditRequestData, model: LoadedModel, settings: Settings) -> EditJob:
    """Validates and decodes a request (CPU work: run it off the event loop)."""
    started = time.perf_counter()
    params = validate_scalars(req, model, settings)
    info = model.info
    pixels = decode_image(req.image, info.channels, settings.max_pixels)
    height, width = pixels.shape[:2]
    if not info.accepts_size(width, height):
        accepted = f"{info.width}x{info.height}"
        if info.flexible_size:
            accepted += f" or any size whose sides are multiples of {info.size_multiple}"
        raise InvalidArgument("image", f"size {width}x{height} is not accepted by model {info.name!r} ({accepted}); images are not resized")
    mask = None
    if req.mask:
        mask = decode_mask(req.mask, width, height, settings.max_pixels)
        if not mask.any():
            raise InvalidArgument("mask", "selects no pixels to regenerate (white = regenerate, black = keep)")
    num_samples = req.num_samples or 1
    return EditJob(
        request=req,
        model_name=info.name,
        pixels=pixels,
        guide=to_model_range(pixels),
        mask=mask,
        params=params,
        seeds=sample_seeds(req.seed, num_samples),
        output_format=req.output_format,
        decode_seconds=time.perf_counter() - started,
    )
