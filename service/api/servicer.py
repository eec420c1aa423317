"""gRPC handlers for sdedit.v1.ImageEditor: convert, call the service, convert back.

The caller's tenant (resolved by the interceptor) goes to the service as plain data."""

from __future__ import annotations

import time

import grpc

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.api.convert import (
    edit_request_from_proto,
    edit_response_to_proto,
    model_info_to_proto,
    progress_to_proto,
)
from service.editing import EditService
from service.requests import EditOutcome
from service.tenants import current_tenant


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ImageEditorServicer(sdedit_pb2_grpc.ImageEditorServicer):
    def __init__(self, service: EditService):
        self.service = service

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
        return pb.ListModelsResponse(
            models=[model_info_to_proto(m.info, m.info.name == registry.default) for m in registry.all()]
        )
