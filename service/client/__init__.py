"""A small synchronous client for sdedit.v1.ImageEditor (used by the CLI and tests)."""

from __future__ import annotations

from collections.abc import Iterator

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client.connection import MAX_MESSAGE, Connection
from service.transport.grpc.names import SAMPLER_ENUMS, SAMPLER_NAMES, SPACING_ENUMS, SPACING_NAMES

SAMPLERS = {None: pb.SAMPLER_UNSPECIFIED, **SAMPLER_ENUMS}  # None: the model's default
SPACINGS = {None: pb.SPACING_UNSPECIFIED, **SPACING_ENUMS}
__all__ = ["MAX_MESSAGE", "SAMPLERS", "SAMPLER_NAMES", "SPACINGS", "SPACING_NAMES", "Client", "Connection", "build_request"]


def build_request(image: bytes, *, mask: bytes = b"", t0: float = 0.5, steps: int = 0, repeats: int = 1,
                  sampler: str | None = None, eta: float = 0.0, seed: int | None = None, num_samples: int = 1,
                  model: str = "", npy: bool = False, preview_every: int = 0, request_id: str = "",
                  spacing: str | None = None, full_schedule: bool = False) -> pb.EditRequest:
    """steps = 0: the model's default edit; full_schedule: every level from t0 down."""
    request = pb.EditRequest(
        model=model, image=image, mask=mask, t0=t0, steps=steps, repeats=repeats, sampler=SAMPLERS[sampler], eta=eta,
        num_samples=num_samples, output_format=pb.OUTPUT_FORMAT_NPY if npy else pb.OUTPUT_FORMAT_PNG,
        preview_every=preview_every, request_id=request_id, spacing=SPACINGS[spacing], full_schedule=full_schedule,
    )
    if seed is not None:
        request.seed = seed
    return request


class Client:
    def __init__(self, address: str | Connection):
        """address: HOST:PORT (plaintext, no token) or a Connection (TLS, mutual TLS, token)."""
        connection = address if isinstance(address, Connection) else Connection(address)
        self.channel = connection.channel()
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
