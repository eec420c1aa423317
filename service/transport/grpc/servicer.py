"""gRPC handlers for sdedit.v1.ImageEditor: convert, call the service, convert back.

Each handler gets the admitted `Call` (service/pipeline/calls.py) from the interceptor, or from
the HTTP door: the caller's tenant as plain data, the parsed message and, for an edit, its plan.
Nothing here validates or plans an edit; a handler needs no gRPC context (the HTTP door calls
the same handlers), and a job that ended badly ends its WatchJob with its own status."""

from __future__ import annotations

from google.rpc import status_pb2

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.jobs import JobEnd, JobManager
from service.pipeline.calls import Call
from service.pipeline.editing import EditService
from service.requests import EditOutcome
from service.transport.grpc.convert import edit_response_to_proto, model_info_to_proto, progress_to_proto
from service.transport.grpc.jobs import job_to_proto
from service.transport.grpc.status import EndedWithStatus


class ImageEditorServicer(sdedit_pb2_grpc.ImageEditorServicer):
    def __init__(self, service: EditService, jobs: JobManager):
        self.service = service
        self.jobs = jobs

    async def Edit(self, call: Call, context=None) -> pb.EditResponse:
        outcome = await self.service.edit(call.plan, call.deadline, tenant=call.tenant)
        return edit_response_to_proto(outcome)

    async def StreamEdit(self, call: Call, context=None):
        stream = self.service.stream(call.plan, call.deadline, tenant=call.tenant)
        try:
            async for item in stream:
                if isinstance(item, EditOutcome):
                    yield pb.EditEvent(result=edit_response_to_proto(item))
                else:
                    yield progress_to_proto(item)
        finally:
            await stream.aclose()

    async def ListModels(self, call: Call, context=None) -> pb.ListModelsResponse:
        registry = self.service.registry
        return pb.ListModelsResponse(  # a tenant limited to some models sees those only
            models=[model_info_to_proto(m.info, m.info.name == registry.default) for m in registry.all()
                    if call.tenant.may_use(m.info.name)],
            jobs=self.jobs.kind,
        )

    async def SubmitEdit(self, call: Call, context=None) -> pb.Job:
        record = await self.jobs.submit(call.plan, priority=call.job.priority, owner=call.tenant.name,
                                        webhook_url=call.job.webhook_url)
        return job_to_proto(record)

    async def GetJob(self, call: Call, context=None) -> pb.Job:
        return job_to_proto(await self.jobs.get(call.message.id, call.tenant.name))

    async def CancelJob(self, call: Call, context=None) -> pb.Job:
        return job_to_proto(await self.jobs.cancel(call.message.id, call.tenant.name))

    async def ListJobs(self, call: Call, context=None) -> pb.ListJobsResponse:
        request = call.message
        offset = self.jobs.page_offset(request.page_token)
        records, following = await self.jobs.list(call.tenant.name, request.page_size, offset)
        return pb.ListJobsResponse(jobs=[job_to_proto(r) for r in records],
                                   next_page_token="" if following is None else str(following))

    async def WatchJob(self, call: Call, context=None):
        request = call.message
        events = self.jobs.watch(request.id, request.after_sequence, call.tenant.name)
        try:
            async for item in events:
                if isinstance(item, JobEnd):
                    if item.record.state == "succeeded" and item.record.result is not None:
                        event = pb.EditEvent(sequence=item.sequence)
                        event.result.ParseFromString(item.record.result)
                        yield event
                    else:  # failed or cancelled: the job's own status ends the stream
                        raise EndedWithStatus(status_pb2.Status.FromString(item.record.error))
                    return
                event = pb.EditEvent.FromString(item.payload)
                event.sequence = item.sequence
                yield event
        finally:
            await events.aclose()
