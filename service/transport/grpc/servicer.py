"""gRPC handlers for sdedit.v1.ImageEditor: convert, call the service, convert back.

The caller's tenant (resolved by the interceptor) goes to the service as plain data."""

from __future__ import annotations

import time

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.errors import InvalidArgument
from service.jobs import JobEnd, JobManager
from service.pipeline.editing import EditService
from service.pipeline.requests import EditOutcome
from service.tenancy.tenants import current_tenant
from service.transport.grpc.convert import (
    edit_request_from_proto,
    edit_response_to_proto,
    model_info_to_proto,
    progress_to_proto,
)
from service.transport.grpc.jobs import job_to_proto


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ImageEditorServicer(sdedit_pb2_grpc.ImageEditorServicer):
    def __init__(self, service: EditService, jobs: JobManager):
        self.service = service
        self.jobs = jobs

    @staticmethod
    def owner(context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant (from the interceptor): jobs are scoped to it ("" without tokens)."""
        return current_tenant().name

    async def Edit(self, request: pb.EditRequest, context: grpc.aio.ServicerContext) -> pb.EditResponse:
        outcome = await self.service.edit(edit_request_from_proto(request), deadline_of(context), tenant=current_tenant())
        return edit_response_to_proto(outcome)

    async def StreamEdit(self, request: pb.EditRequest, context: grpc.aio.ServicerContext):
        stream = self.service.stream(edit_request_from_proto(request), deadline_of(context), tenant=current_tenant())
        try:
            async for item in stream:
                if isinstance(item, EditOutcome):
                    yield pb.EditEvent(result=edit_response_to_proto(item))
                else:
                    yield progress_to_proto(item)
        finally:
            await stream.aclose()

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        registry = self.service.registry
        tenant = current_tenant()  # a tenant limited to some models sees those only
        return pb.ListModelsResponse(
            models=[model_info_to_proto(m.info, m.info.name == registry.default) for m in registry.all()
                    if tenant.may_use(m.info.name)],
            jobs=self.jobs.kind,
        )

    async def SubmitEdit(self, request: pb.EditRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        record = await self.jobs.submit(edit_request_from_proto(request), request.SerializeToString(),
                                        priority=request.job.priority, owner=self.owner(context),
                                        webhook_url=request.job.webhook_url)
        return job_to_proto(record)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_to_proto(await self.jobs.get(request.id, self.owner(context)))

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_to_proto(await self.jobs.cancel(request.id, self.owner(context)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", "is not a token from a previous ListJobsResponse") from None
        if offset < 0:
            raise InvalidArgument("page_token", "is not a token from a previous ListJobsResponse")
        records, following = await self.jobs.list(self.owner(context), request.page_size, offset)
        return pb.ListJobsResponse(jobs=[job_to_proto(r) for r in records],
                                   next_page_token="" if following is None else str(following))

    async def WatchJob(self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext):
        events = self.jobs.watch(request.id, request.after_sequence, self.owner(context))
        try:
            async for item in events:
                if isinstance(item, JobEnd):
                    if item.record.state == "succeeded" and item.record.result is not None:
                        event = pb.EditEvent(sequence=item.sequence)
                        event.result.ParseFromString(item.record.result)
                        yield event
                    else:  # failed or cancelled: the job's own status ends the stream
                        await context.abort_with_status(rpc_status.to_status(status_pb2.Status.FromString(item.record.error)))
                    return
                event = pb.EditEvent.FromString(item.payload)
                event.sequence = item.sequence
                yield event
        finally:
            await events.aclose()
