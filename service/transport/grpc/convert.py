"""Protobuf <-> service types. Protobuf types stop here; the service never sees them."""

from __future__ import annotations

import dataclasses

from sdedit.v1 import sdedit_pb2 as pb
from service.backends.base import ModelInfo
from service.errors import InvalidArgument
from service.pipeline.calls import SUBMIT_EDIT, JobOptions, Parsed
from service.requests import EditOutcome, EditRequestData, ProgressUpdate
from service.sde import Progress
from service.sde.samplers import reference_sampler
from service.transport.grpc.names import SAMPLER_ENUMS, SAMPLER_NAMES, SPACING_ENUMS, SPACING_NAMES

OUTPUT_FORMATS = {pb.OUTPUT_FORMAT_UNSPECIFIED: "png", pb.OUTPUT_FORMAT_PNG: "png", pb.OUTPUT_FORMAT_NPY: "npy"}


def edit_request_from_proto(msg: pb.EditRequest) -> EditRequestData:
    if msg.sampler not in SAMPLER_NAMES:
        raise InvalidArgument("sampler", f"unknown value {msg.sampler}; known: {', '.join(pb.Sampler.keys())}")
    if msg.spacing not in SPACING_NAMES:
        raise InvalidArgument("spacing", f"unknown value {msg.spacing}; known: {', '.join(pb.Spacing.keys())}")
    if msg.output_format not in OUTPUT_FORMATS:
        raise InvalidArgument("output_format", f"unknown value {msg.output_format}; known: {', '.join(pb.OutputFormat.keys())}")
    return EditRequestData(
        image=msg.image,
        t0=msg.t0,
        model=msg.model,
        mask=msg.mask,
        steps=msg.steps,
        repeats=msg.repeats,
        sampler=SAMPLER_NAMES[msg.sampler],
        eta=msg.eta,
        seed=msg.seed if msg.HasField("seed") else None,
        num_samples=msg.num_samples,
        output_format=OUTPUT_FORMATS[msg.output_format],
        preview_every=msg.preview_every,
        request_id=msg.request_id,
        spacing=SPACING_NAMES[msg.spacing],
        full_schedule=msg.full_schedule,
    )


def parse_call(method: str, message, deadline: float | None = None) -> Parsed:
    """A parsed message as the call pipeline takes it: an EditRequest with its plain request
    (and, for SubmitEdit, its job's options)."""
    if not isinstance(message, pb.EditRequest):
        return Parsed(message, deadline=deadline)
    job = JobOptions(message.job.priority, message.job.webhook_url) if method == SUBMIT_EDIT else None
    return Parsed(message, edit_request_from_proto(message), job, deadline)


def edit_response_to_proto(outcome: EditOutcome) -> pb.EditResponse:
    t = outcome.timings
    return pb.EditResponse(
        images=[pb.Image(data=i.data, media_type=i.media_type, seed=i.seed) for i in outcome.images],
        network_calls=outcome.network_calls,
        timings=pb.StageTimings(
            queue_seconds=t.queue_seconds, decode_seconds=t.decode_seconds, sde_seconds=t.sde_seconds,
            network_seconds=t.network_seconds, encode_seconds=t.encode_seconds, total_seconds=t.total_seconds,
        ),
        model=outcome.model.name,
        model_hash=outcome.model.content_hash,
        cached=outcome.cached,
        request_id=outcome.request_id,
        steps=outcome.steps,
        repeats=outcome.repeats,
        sampler=SAMPLER_ENUMS[outcome.sampler],
        spacing=SPACING_ENUMS[outcome.spacing],
    )


def progress_message(progress: Progress) -> pb.Progress:
    return pb.Progress(**dataclasses.asdict(progress))


def progress_to_proto(update: ProgressUpdate) -> pb.EditEvent:
    progress = progress_message(update.progress)
    if update.previews:
        images = [pb.Image(data=data, media_type="image/png") for data in update.previews]
        return pb.EditEvent(preview=pb.Preview(progress=progress, images=images))
    return pb.EditEvent(progress=progress)


def model_info_to_proto(info: ModelInfo, is_default: bool) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name, content_hash=info.content_hash, width=info.width, height=info.height,
        channels=info.channels, sde_type=info.sde.sde_type, timesteps=info.sde.timesteps,
        default_steps=info.default_steps, is_default=is_default, flexible_size=info.flexible_size,
        size_multiple=info.size_multiple, description=info.description,
        max_width=info.largest_size[0], max_height=info.largest_size[1],
        default_sampler=SAMPLER_ENUMS[info.default_sampler], default_spacing=SPACING_ENUMS[info.default_spacing],
        reference_sampler=SAMPLER_ENUMS[reference_sampler(info.sde.sde_type)],
    )
