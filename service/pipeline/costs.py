"""What a request costs, estimated before anything is decoded: memory, response size, work.

Admission (service/pipeline/admission.py) holds every edit's estimate against one memory budget, so
no legal request can take the process past it; validation refuses at once what could never
fit. The estimates are upper bounds built from what a model declares in its config.pbtxt
(`memory_bytes_per_pixel`, `attention_downsample`, `attention_bytes_per_entry`, measured
with scripts/measure_model_memory.py) and from the loop's own arrays:

    network  = samples x (bytes_per_pixel x P + bytes_per_attention_entry x (P / d^2)^2)
    loop     = samples x C x P x 4 bytes x LOOP_ARRAYS      (x, eps, noise, outputs, ...)
    decode   = P x DECODE_BYTES_PER_PIXEL + the request's own bytes
    response = samples x (C x P x 4 for NPY, or a PNG's worst case), twice (message + copy)

with P = width x height. Everything is multiplied by SAFETY, since allocators round up.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.backends.base import ModelInfo

SAFETY = 1.25
LOOP_ARRAYS = 12  # float32 arrays of one sample's size alive at once in the loop and encoder
DECODE_BYTES_PER_PIXEL = 16  # Pillow's decoded image, its converted copy, uint8 pixels, float guide and mask
PNG_OVERHEAD_BYTES = 1024  # headers, and stored blocks for incompressible data
MESSAGE_OVERHEAD_BYTES = 4096  # timings, seeds, media types


@dataclass(frozen=True)
class RequestCost:
    """Bytes a request holds while it waits (held) and adds while it runs (running)."""

    held_bytes: int  # its message and decoded inputs, from admission to the end
    running_bytes: int  # the loop and the network, while it runs
    response_bytes: int  # the encoded response message

    @property
    def total_bytes(self) -> int:
        return self.held_bytes + self.running_bytes


def network_bytes_per_image(info: ModelInfo, width: int, height: int) -> float:
    pixels = width * height
    total = info.memory_bytes_per_pixel * pixels
    if info.attention_downsample:
        tokens = pixels / info.attention_downsample**2
        total += info.attention_bytes_per_entry * tokens * tokens
    return total


def response_bytes(info: ModelInfo, width: int, height: int, samples: int, output_format: str) -> int:
    values = info.channels * width * height
    per_image = 4 * values + 128 if output_format == "npy" else values + height + PNG_OVERHEAD_BYTES
    return samples * per_image + MESSAGE_OVERHEAD_BYTES


def request_cost(info: ModelInfo, width: int, height: int, samples: int, output_format: str, request_bytes: int) -> RequestCost:
    pixels = width * height
    loop = samples * info.channels * pixels * 4 * LOOP_ARRAYS
    network = samples * network_bytes_per_image(info, width, height)
    response = response_bytes(info, width, height, samples, output_format)
    held = request_bytes + pixels * DECODE_BYTES_PER_PIXEL
    return RequestCost(
        held_bytes=round(SAFETY * held),
        running_bytes=round(SAFETY * (loop + network + 2 * response)),
        response_bytes=response,
    )


def most_samples_within(info: ModelInfo, width: int, height: int, output_format: str, request_bytes: int,
                        budget_bytes: int, limit: int) -> int:
    """The largest num_samples (<= limit) whose cost fits the budget; 0 if not even one."""
    best = 0
    for samples in range(1, limit + 1):
        if request_cost(info, width, height, samples, output_format, request_bytes).total_bytes > budget_bytes:
            break
        best = samples
    return best
