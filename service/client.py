"""A small synchronous client for sdedit.v1.ImageEditor (used by the CLI and tests)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc

SAMPLERS = {None: pb.SAMPLER_UNSPECIFIED, "ddpm": pb.SAMPLER_DDPM, "ddim": pb.SAMPLER_DDIM,
            "euler_maruyama": pb.SAMPLER_EULER_MARUYAMA}
MAX_MESSAGE = 64 * 1024 * 1024


def build_request(image: bytes, *, mask: bytes = b"", t0: float = 0.5, steps: int = 0, repeats: int = 1,
                  sampler: str | None = None, eta: float = 0.0, seed: int | None = None, num_samples: int = 1,
                  model: str = "", npy: bool = False, preview_every: int = 0, request_id: str = "") -> pb.EditRequest:
    request = pb.EditRequest(
        model=model, image=image, mask=mask, t0=t0, steps=steps, repeats=repeats, sampler=SAMPLERS[sampler], eta=eta,
        num_samples=num_samples, output_format=pb.OUTPUT_FORMAT_NPY if npy else pb.OUTPUT_FORMAT_PNG,
        preview_every=preview_every, request_id=request_id,
    )
    if seed is not None:
        request.seed = seed
    return request


class Client:
    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.stub = sdedit_pb2_grpc.ImageEditorStub(self.channel)

    def edit(self, request: pb.EditRequest, timeout: float | None = None) -> pb.EditResponse:
        return self.stub.Edit(request, timeout=timeout)

    def stream_edit(self, request: pb.EditRequest, timeout: float | None = None) -> Iterator[pb.EditEvent]:
        return self.stub.StreamEdit(request, timeout=timeout)

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout).models)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
