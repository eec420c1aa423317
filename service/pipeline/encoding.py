"""An edit's samples as the response's images: PNG (the kept region pasted back bit for bit)
or NPY (the raw float32 samples), with the outcome's timings."""

from __future__ import annotations

import time

import numpy as np

from service.backends.base import ModelInfo
from service.pipeline.imaging import NPY_MEDIA_TYPE, PNG_MEDIA_TYPE, composite_kept, encode_npy, encode_png, to_pixels
from service.requests import EditJob, EditOutcome, OutputImage, StageTimings
from service.sde import EditResult


def encode_sample(sample: np.ndarray, job: EditJob, seed: int) -> OutputImage:
    if job.output_format == "npy":
        return OutputImage(encode_npy(sample), NPY_MEDIA_TYPE, seed)
    pixels = composite_kept(job.pixels, to_pixels(sample), job.mask)
    return OutputImage(encode_png(pixels), PNG_MEDIA_TYPE, seed)


def encode_outcome(job: EditJob, info: ModelInfo, result: EditResult, sde_seconds: float) -> EditOutcome:
    """CPU work: run it off the event loop."""
    encode_started = time.perf_counter()
    images = [encode_sample(sample, job, seed) for sample, seed in zip(result.samples, job.seeds)]
    timings = StageTimings(sde_seconds=sde_seconds, network_seconds=result.network_seconds,
                           encode_seconds=time.perf_counter() - encode_started)
    return EditOutcome(images=images, network_calls=result.network_calls, model=info,
                       steps=job.params.steps, repeats=job.params.repeats,
                       sampler=job.params.sampler, spacing=job.params.spacing, timings=timings, request_id=job.request.request_id)
