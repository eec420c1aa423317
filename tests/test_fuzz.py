"""A bounded, seeded fuzz of the gRPC surface (issue 10, item 18).

`sdedit serve` runs in a subprocess on the test oracle models with a memory budget; a fixed
seed draws `--fuzz-requests` requests (default 2,000) over the classes a hostile user tries:
random and truncated images, pixel bombs, every field at and past its limits, malformed
protobuf, tiny deadlines and cancelled streams. Every answer must be a deliberate status,
never UNKNOWN or INTERNAL; afterwards the server still serves, and its peak resident memory
is within its budget. A longer run: `pytest tests/test_fuzz.py --fuzz-requests 20000`.
"""

from __future__ import annotations

import collections
import math
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.testing.servers import health_status, peak_rss_mib
from tests.helpers import image_bytes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BUDGET_MIB = 1024
SEED = 20261201
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.ALREADY_EXISTS,
}


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (a pixel bomb; the data is one row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class Fuzzer:
    """Draws one request description per call from a seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        good = self.rng.integers(0, 256, (16, 16), dtype=np.uint8)
        self.good_png = image_bytes(good)
        self.good_jpeg = image_bytes(good, "JPEG", quality=90)
        self.good_mask = image_bytes(np.where(np.arange(256).reshape(16, 16) % 2 == 0, 255, 0).astype(np.uint8))
        self.black_mask = image_bytes(np.zeros((16, 16), np.uint8))
        self.images = [
            self.good_png, self.good_jpeg, b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
            png_declaring(100_000, 100_000), png_declaring(1024, 1024), png_declaring(0, 16), png_declaring(2**31 - 1, 1),
            image_bytes(np.zeros((40, 24), np.uint8)), image_bytes(np.zeros((64, 64, 3), np.uint8)),
            image_bytes(np.zeros((16, 16, 4), np.uint8)), image_bytes(np.zeros((2048, 1024), np.uint8)),  # over max_pixels
            image_bytes(np.zeros((16, 16), np.uint16)), b"GIF89a" + bytes(40),
        ]

    def choice(self, values):
        return values[int(self.rng.integers(len(values)))]

    def mutate(self, data: bytes) -> bytes:
        kind = int(self.rng.integers(4))
        if kind == 0 or not data:
            return bytes(self.rng.integers(0, 256, int(self.rng.integers(0, 600)), dtype=np.uint8))
        if kind == 1:
            return data[: int(self.rng.integers(0, len(data)))]  # truncated
        buffer = bytearray(data)
        for _ in range(int(self.rng.integers(1, 8))):  # flipped bytes, header included
            buffer[int(self.rng.integers(len(buffer)))] = int(self.rng.integers(256))
        return bytes(buffer)

    def request(self) -> tuple[str, object, float]:
        """(kind, payload, timeout): payload is an EditRequest, or raw bytes for 'malformed'."""
        kind = self.choice(["field", "field", "field", "image", "image", "mask", "malformed", "deadline", "cancel", "valid"])
        if kind == "malformed":
            valid = self.valid().SerializeToString()
            payload = self.choice([b"\xff\xff\xff", self.mutate(valid), valid[: len(valid) // 2],
                                   b"\x0a\x03\xff\xfe\xfd", b"\x12" + b"\xff" * 9])
            return kind, payload, 10.0
        request = self.valid()
        if kind == "image":
            request.image = self.choice(self.images) if self.rng.random() < 0.5 else self.mutate(self.choice(self.images[:2]))
        elif kind == "mask":
            request.mask = self.choice([self.good_mask, self.black_mask, self.mutate(self.good_mask), self.good_jpeg,
                                        image_bytes(np.zeros((8, 8), np.uint8)), png_declaring(5000, 5000)])
        elif kind == "field":
            self.break_a_field(request)
        timeout = float(self.rng.uniform(0.001, 0.05)) if kind == "deadline" else 10.0
        return kind, request, timeout

    def valid(self) -> pb.EditRequest:
        request = pb.EditRequest(image=self.good_png, t0=float(self.rng.uniform(0.05, 1.0)), steps=int(self.rng.integers(1, 6)),
                                 num_samples=int(self.rng.integers(1, 3)))
        if self.rng.random() < 0.5:
            request.seed = int(self.rng.integers(0, 2**63))
        return request

    def break_a_field(self, request: pb.EditRequest) -> None:
        field = self.choice(["t0", "steps", "repeats", "sampler", "eta", "seed", "num_samples", "output_format",
                             "preview_every", "request_id", "model"])
        if field == "t0":
            request.t0 = self.choice([0.0, -1.0, 1.0, 1.0000001, math.nan, math.inf, -math.inf, 1e-9, 3.4e38])
        elif field == "steps":
            request.steps = self.choice([0, 1, 999, 1000, 1001, 2**32 - 1])
            request.t0 = 0.01 if request.steps == 0 else request.t0  # steps 0 runs every level: keep it short
        elif field == "repeats":
            request.repeats = self.choice([0, 1, 10, 11, 2**32 - 1])
        elif field == "sampler":
            request.sampler = self.choice([0, 1, 2, 3, 4, 99, 2**31 - 1])
        elif field == "eta":
            request.eta = self.choice([-1.0, 0.0, 0.5, 1.0, 1.5, math.nan, math.inf])
            request.sampler = self.choice([pb.SAMPLER_DDIM, pb.SAMPLER_DDPM])
        elif field == "seed":
            request.seed = self.choice([0, 2**64 - 1])
        elif field == "num_samples":
            request.num_samples = self.choice([0, 1, 16, 17, 2**32 - 1])
        elif field == "output_format":
            request.output_format = self.choice([0, 1, 2, 3, 2**31 - 1])
        elif field == "preview_every":
            request.preview_every = self.choice([0, 1, 2**32 - 1])
        elif field == "request_id":
            request.request_id = self.choice(["x" * 128, "x" * 129, "\x00\x01", "é" * 100, "id-1", "id-1"])
        else:
            request.model = self.choice(["", "gauss", "gauss-ve", "mix", "gauss-rgb", "nope", "m" * 5000, "\u2603"])


def send(channel: grpc.Channel, kind: str, payload, timeout: float) -> grpc.StatusCode:
    try:
        if kind == "malformed":
            channel.unary_unary("/sdedit.v1.ImageEditor/Edit", request_serializer=None,
                                response_deserializer=None)(payload, timeout=timeout)
        elif kind == "cancel":
            stream = sdedit_pb2_grpc.ImageEditorStub(channel).StreamEdit(payload, timeout=timeout)
            for _ in stream:
                stream.cancel()
                break
        else:
            sdedit_pb2_grpc.ImageEditorStub(channel).Edit(payload, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()



def test_fuzzing_the_grpc_surface_gets_no_unknown_and_no_internal(serve, request):
    count = request.config.getoption("--fuzz-requests")
    server = serve("--memory-budget-mib", str(BUDGET_MIB), "--max-queue", "64", "--max-active-edits", "2")
    fuzzer = Fuzzer(SEED)
    cases = [fuzzer.request() for _ in range(count)]  # drawn up front: the same cases every run
    results: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    started = time.monotonic()
    with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(8) as pool:
        def run(case):
            code = send(channel, *case)
            with lock:
                results[(case[0], code.name)] += 1
            return code
        codes = list(pool.map(run, cases))
    seconds = time.monotonic() - started
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING, server.output()
    assert server.process.poll() is None
    peak = peak_rss_mib(server.process.pid)
    print(f"\n{count} fuzzed requests in {seconds:.1f} s; peak RSS {peak:.0f} MiB;", dict(sorted(results.items())))
    bad = {code.name for code in codes} - {code.name for code in ALLOWED}
    assert not bad, (bad, dict(results), server.output()[-5000:])
    assert results[("valid", "OK")] > 0 and sum(n for (_, c), n in results.items() if c == "INVALID_ARGUMENT") > count // 4
    assert peak <= BUDGET_MIB
    assert "Traceback" not in server.output(), server.output()[-5000:]
