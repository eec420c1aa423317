"""Jobs through the gRPC API: the codec the jobs layer stores events, results and errors with
(protobuf bytes, so a job's result is byte for byte the EditResponse its edit made), Job records to messages, and
the body of a completion webhook (the Job as proto3 JSON, less the images' bytes)."""

from __future__ import annotations

import json

from google.protobuf import json_format, timestamp_pb2
from google.rpc import status_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.jobs import JobRecord
from service.requests import EditOutcome, ProgressUpdate
from service.transport.grpc.convert import edit_response_to_proto, progress_message, progress_to_proto
from service.transport.grpc.status import status_for

JOB_STATES = {"queued": pb.JOB_STATE_QUEUED, "running": pb.JOB_STATE_RUNNING, "succeeded": pb.JOB_STATE_SUCCEEDED,
              "failed": pb.JOB_STATE_FAILED, "cancelled": pb.JOB_STATE_CANCELLED}
JOB_METHOD = "/sdedit.v1.ImageEditor/SubmitEdit"  # errors of a job's run name the call that made it


class ProtoJobCodec:
    def encode_event(self, update: ProgressUpdate) -> bytes:
        return progress_to_proto(update).SerializeToString()

    def encode_result(self, outcome: EditOutcome) -> bytes:
        return edit_response_to_proto(outcome).SerializeToString()

    def encode_error(self, exc: BaseException) -> bytes:
        return status_for(exc, JOB_METHOD).SerializeToString()

    def encode_webhook(self, record: JobRecord) -> bytes:
        return webhook_body(record)


def _timestamp(unix: float) -> timestamp_pb2.Timestamp | None:
    if not unix:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(unix * 1e9))
    return stamp


def job_to_proto(record: JobRecord) -> pb.Job:
    job = pb.Job(id=record.id, state=JOB_STATES[record.state], priority=record.priority, attempts=record.attempts,
                 create_time=_timestamp(record.created), start_time=_timestamp(record.started),
                 end_time=_timestamp(record.ended), expire_time=_timestamp(record.expires))
    if record.progress is not None:
        job.progress.CopyFrom(progress_message(record.progress))
    if record.result is not None:
        job.result.ParseFromString(record.result)
    if record.error:
        job.error.CopyFrom(status_pb2.Status.FromString(record.error))
    if record.webhook_url:
        job.webhook.CopyFrom(pb.WebhookDelivery(url=record.webhook_url, state=record.webhook_state,
                                                attempts=record.webhook_attempts,
                                                last_http_status=record.webhook_http_status,
                                                last_error=record.webhook_error))
    return job


def webhook_body(record: JobRecord) -> bytes:
    """The Job as proto3 JSON (lowerCamelCase names, enums by name, RFC 3339 times), its
    result's images without their data (GetJob has them) and without its own delivery state."""
    job = job_to_proto(record)
    job.ClearField("webhook")
    for image in job.result.images:
        image.ClearField("data")
    return json.dumps(json_format.MessageToDict(job), separators=(",", ":"), sort_keys=True).encode()
