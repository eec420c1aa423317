"""Planning: a request checked once, with everything its run needs decided.

`Planner.plan` is the only place a request is validated (every problem an InvalidArgument
naming the field) and its levels planned: the call pipeline (service/pipeline/calls.py) plans
each request once, and the edit service, the batch scheduler and a job's worker run that plan.
A job stores its plan (`encode_plan`), so the worker that claims it runs it as submitted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import struct
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from service.backends.registry import LoadedModel, ModelRegistry
from service.config import Settings
from service.errors import InvalidArgument
from service.pipeline.costs import RequestCost, most_samples_within, request_cost, response_bytes
from service.pipeline.imaging import decode_image, decode_mask, image_size, to_model_range
from service.requests import EditJob, EditRequestData
from service.sde import EditParams
from service.sde.engine import max_steps, plan_levels
from service.sde.samplers import (
    EULER_MARUYAMA_MAX_VARIANCE_ERROR,
    SAMPLERS,
    euler_maruyama_variance_error,
    reference_sampler,
)
from service.sde.schedules import SPACINGS

MAX_REQUEST_ID = 128
SEED_MODULUS = 1 << 64
OUTPUT_FORMATS = ("png", "npy")


def sample_seeds(base: int | None, count: int) -> tuple[int, ...]:
    """Sample i uses base + i (mod 2^64), so any one can be rerun alone with its seed."""
    if base is None:
        base = secrets.randbits(64)
    return tuple((base + i) % SEED_MODULUS for i in range(count))


def validate_scalars(req: EditRequestData, model: LoadedModel, settings: Settings) -> EditParams:
    """Checks every non-image field; returns the loop's parameters with defaults filled in.

    steps = 0 is the model's default edit (default_steps, default_sampler, default_spacing);
    full_schedule is every level from t0 down with the reference sampler unless one is named.
    """
    if not (isinstance(req.t0, float | int) and math.isfinite(req.t0) and 0.0 < req.t0 <= 1.0):
        raise InvalidArgument("t0", f"must be in (0, 1] (0 < t0 <= 1), got {req.t0}")
    info = model.info
    if req.full_schedule:
        sampler = req.sampler or reference_sampler(info.sde.sde_type)
    else:
        sampler = req.sampler or info.default_sampler
    if sampler not in SAMPLERS:
        raise InvalidArgument("sampler", f"unknown sampler {req.sampler!r}")
    spacing = req.spacing or ("time_uniform" if req.full_schedule else info.default_spacing)
    if spacing not in SPACINGS:
        raise InvalidArgument("spacing", f"unknown spacing {req.spacing!r}; known: {', '.join(SPACINGS)}")
    if not (math.isfinite(req.eta) and 0.0 <= req.eta <= 1.0):
        raise InvalidArgument("eta", f"must be in [0, 1], got {req.eta}")
    if req.eta and sampler != "ddim":
        raise InvalidArgument("eta", f"is only used by the DDIM sampler, not {sampler}")
    limit = max_steps(req.t0, model.schedule.num_levels)
    if req.steps < 0 or req.steps > limit:
        raise InvalidArgument(
            "steps", f"must be in [0, {limit}] at t0={req.t0:g} (round(t0 * {model.schedule.num_levels}) levels; "
                     f"0 = the model's default, {info.default_steps}), got {req.steps}"
        )
    if req.full_schedule and req.steps:
        raise InvalidArgument("steps", f"must be 0 with full_schedule (which runs all {limit} levels), got {req.steps}")
    steps = limit if req.full_schedule else req.steps or min(info.default_steps, limit)
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
    params = EditParams(t0=float(req.t0), steps=steps, repeats=repeats, sampler=sampler,
                        eta=float(req.eta), preview_every=req.preview_every, spacing=spacing)
    if sampler == "euler_maruyama":
        _check_euler_maruyama(params, model, limit)
    return params


def _check_euler_maruyama(params: EditParams, model: LoadedModel, limit: int) -> None:
    """Refuses Euler-Maruyama where it is known to diverge (samplers.euler_maruyama_variance_error)."""
    def error(steps: int) -> float:
        return euler_maruyama_variance_error(model.schedule, plan_levels(replace(params, steps=steps), model.schedule))

    off = error(params.steps)
    if off <= EULER_MARUYAMA_MAX_VARIANCE_ERROR:
        return
    low, high = params.steps, limit  # the fewest steps that pass (the full schedule does)
    while low + 1 < high:
        middle = (low + high) // 2
        low, high = (low, middle) if error(middle) <= EULER_MARUYAMA_MAX_VARIANCE_ERROR else (middle, high)
    raise InvalidArgument(
        "steps", f"Euler-Maruyama diverges at {params.steps} steps from t0={params.t0:g} ({params.spacing}): "
                 f"its output variance on Gaussian data would be {100 * off:.0f}% off (limit "
                 f"{100 * EULER_MARUYAMA_MAX_VARIANCE_ERROR:.0f}%); use at least {high} steps, or sampler dpmpp_2m_sde"
    )


@dataclass(frozen=True, eq=False)
class RequestPlan:
    """A request checked from its scalars and image headers alone (nothing decoded yet), with
    what its run needs: its model, its loop parameters and levels, its network work and its
    memory cost (what admission holds)."""

    request: EditRequestData
    model: LoadedModel
    params: EditParams
    levels: np.ndarray  # the levels of one repeat, from the start level down
    width: int
    height: int
    num_samples: int
    cost: RequestCost

    @property
    def work(self) -> int:
        """What the request asks of the network: calls x images (the tenants' work quota)."""
        return len(self.levels) * self.params.repeats * self.num_samples


class Planner:
    """Plans requests against the served models, the settings and the memory budget for edits."""

    def __init__(self, registry: ModelRegistry, settings: Settings, budget_bytes: int | None):
        self.registry, self.settings, self.budget_bytes = registry, settings, budget_bytes
        self.plans = 0  # requests planned so far: each request is planned once (tests read it)

    def plan(self, req: EditRequestData) -> RequestPlan:
        self.plans += 1
        return plan_request(req, self.registry.get(req.model), self.settings, self.budget_bytes,
                            in_process_network=self.settings.in_process_network)


def plan_request(req: EditRequestData, model: LoadedModel, settings: Settings, budget_bytes: int | None,
                 in_process_network: bool = True) -> RequestPlan:
    """Validates every field and reads the image's size from its header; refuses requests
    that could never fit the memory budget or the response message limit. Cheap: no decode."""
    params = validate_scalars(req, model, settings)
    info = model.info
    width, height = image_size(req.image, settings.max_pixels)
    if not info.accepts_size(width, height):
        accepted = f"{info.width}x{info.height}"
        if info.flexible_size:
            max_width, max_height = info.largest_size
            accepted += f", or sides that are multiples of {info.size_multiple} up to {max_width}x{max_height}"
        raise InvalidArgument("image", f"size {width}x{height} is not accepted by model {info.name!r} ({accepted}); images are not resized")
    if req.mask:
        mask_size = image_size(req.mask, settings.max_pixels, field="mask", allowed=("PNG",))
        if mask_size != (width, height):
            raise InvalidArgument("mask", f"size {mask_size[0]}x{mask_size[1]} differs from the image's {width}x{height}")
    num_samples = req.num_samples or 1
    if num_samples > settings.max_batch_images:
        raise InvalidArgument("num_samples", f"must be at most max_batch_images ({settings.max_batch_images}): an edit's "
                                             f"samples run in one network call, got {num_samples}")
    request_bytes = len(req.image) + len(req.mask)
    cost_info = info if in_process_network else dataclasses.replace(info, memory_bytes_per_pixel=0.0, attention_downsample=0)
    cost = request_cost(cost_info, width, height, num_samples, req.output_format, request_bytes)
    message_limit = settings.max_message_bytes
    if cost.response_bytes > message_limit:
        one = response_bytes(info, width, height, 1, req.output_format)
        field = "num_samples" if num_samples > 1 and one <= message_limit else "output_format"
        raise InvalidArgument(field, f"the response ({num_samples} {req.output_format.upper()} image(s) of {width}x{height}, "
                                     f"about {cost.response_bytes >> 20} MiB) would exceed the {settings.max_message_mib} MiB "
                                     f"message limit; ask for fewer samples or PNG output")
    if budget_bytes is not None and cost.total_bytes > budget_bytes:
        fit = most_samples_within(cost_info, width, height, req.output_format, request_bytes, budget_bytes, num_samples)
        if fit:
            raise InvalidArgument("num_samples", f"{num_samples} samples of {width}x{height} on model {info.name!r} need about "
                                                 f"{cost.total_bytes >> 20} MiB, over the {budget_bytes >> 20} MiB memory budget "
                                                 f"for edits; at most {fit} fit at this size")
        one = request_cost(cost_info, width, height, 1, req.output_format, request_bytes)
        raise InvalidArgument("image", f"{width}x{height} on model {info.name!r} needs about {one.total_bytes >> 20} MiB even "
                                       f"with one sample, over the {budget_bytes >> 20} MiB memory budget for edits; send a smaller image")
    return RequestPlan(req, model, params, plan_levels(params, model.schedule), width, height, num_samples, cost)


def decode_job(plan: RequestPlan, settings: Settings) -> EditJob:
    """Decodes the images of a planned request (CPU work: run it off the event loop)."""
    started = time.perf_counter()
    req, info = plan.request, plan.model.info
    pixels = decode_image(req.image, info.channels, settings.max_pixels)
    if pixels.shape[:2] != (plan.height, plan.width):  # the header lied
        raise InvalidArgument("image", f"decoded to {pixels.shape[1]}x{pixels.shape[0]}, its header says {plan.width}x{plan.height}")
    mask = None
    if req.mask:
        mask = decode_mask(req.mask, plan.width, plan.height, settings.max_pixels)
        if not mask.any():
            raise InvalidArgument("mask", "selects no pixels to regenerate (white = regenerate, black = keep)")
    return EditJob(
        request=req,
        model_name=info.name,
        pixels=pixels,
        guide=to_model_range(pixels),
        mask=mask,
        params=plan.params,
        levels=plan.levels,
        seeds=sample_seeds(req.seed, plan.num_samples),
        output_format=req.output_format,
        decode_seconds=time.perf_counter() - started,
    )


def prepare_job(req: EditRequestData, model: LoadedModel, settings: Settings, budget_bytes: int | None = None) -> EditJob:
    """plan_request then decode_job, for callers without admission (tests, tools)."""
    return decode_job(plan_request(req, model, settings, budget_bytes), settings)


PLAN_FORMAT = b"sdedit-plan/1\n"  # a job's stored plan: this line, a length, JSON, then the image and mask bytes


def encode_plan(plan: RequestPlan) -> bytes:
    """The plan as bytes (what a job stores): every field of the request and of its plan."""
    req = plan.request
    header = json.dumps({
        "request": {k: v for k, v in asdict(req).items() if k not in ("image", "mask")},
        "image_bytes": len(req.image), "model": plan.model.info.name, "params": asdict(plan.params),
        "levels": [int(level) for level in plan.levels], "width": plan.width, "height": plan.height,
        "num_samples": plan.num_samples, "cost": asdict(plan.cost),
    }, sort_keys=True).encode()
    return PLAN_FORMAT + struct.pack(">I", len(header)) + header + req.image + req.mask


def decode_plan(data: bytes, registry: ModelRegistry) -> RequestPlan:
    """The plan encode_plan stored, on the models this replica serves (InvalidArgument "model"
    if its model is gone; "request" if the bytes are not a plan of this version)."""
    if not data.startswith(PLAN_FORMAT):
        raise InvalidArgument("request", "the job's stored plan is not in this version's format (queued by another version)")
    offset = len(PLAN_FORMAT) + 4
    (length,) = struct.unpack(">I", data[len(PLAN_FORMAT):offset])
    header = json.loads(data[offset:offset + length])
    body = data[offset + length:]
    image, mask = body[:header["image_bytes"]], body[header["image_bytes"]:]
    request = EditRequestData(image=image, mask=mask, **header["request"])
    return RequestPlan(request, registry.get(header["model"]), EditParams(**header["params"]),
                       np.asarray(header["levels"], dtype=np.int64), header["width"], header["height"],
                       header["num_samples"], RequestCost(**header["cost"]))
