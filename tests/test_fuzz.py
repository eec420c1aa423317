"""A bounded, seeded fuzz of the gRPC surface (issue 10, item 18).

`sdedit serve` runs in a subprocess on the test oracle models with a memory budget; a fixed
seed draws `--fuzz-requests` requests (default 2,000) over the classes a hostile user tries:
random and truncated images, pixel bombs, every field at and past its limits, malformed
protobuf, tiny deadlines and cancelled streams. Every answer must be a deliberate status,
never UNKNOWN or INTERNAL; afterwards the server still serves, and its peak resident memory
is within its budget. A longer run: `pytest tests/test_fuzz.py --fuzz-requests 20000`.

The HTTP door gets the same count of raw requests against one in-process server with tenants:
real routes and junk paths and queries, every method, Authorization junk (not UTF-8 included),
Content-Types, JSON, broken and deeply nested JSON, random bytes and multipart bodies of random
parts. Its bar: no answer 5xx (nor a connection closed unanswered), no traceback in the log, and
the process's resident memory within the server's budget throughout.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import logging
import math
import struct
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.testing.servers import health_status, peak_rss_mib
from service.transport.http.routes import ROUTES
from tests.helpers import TOKEN_A, TOKEN_B, b64, image_bytes, two_tenants

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


# --- the HTTP door -----------------------------------------------------------------------------

HTTP_METHODS = ["GET", "GET", "POST", "POST", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]
HTTP_ROUTES = ["/v1/edits", "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/models", "/healthz",
               "/openapi.json", "/", "/static/main.js", "/static/editor.css"]


class HttpFuzzer(Fuzzer):
    """Draws raw HTTP requests (method, target, headers, body) over what a hostile caller sends the
    HTTP door: real routes and junk paths, junk queries, Authorization junk (not UTF-8 included),
    every Content-Type, JSON, broken and deeply nested JSON, random bytes and multipart bodies."""

    def __init__(self, seed: int, tokens: list[str], job_ids: list[str]):
        super().__init__(seed)
        self.tokens, self.job_ids = tokens, job_ids

    def junk(self, low: int = 0, high: int = 40) -> bytes:
        return bytes(self.rng.integers(0, 256, int(self.rng.integers(low, high)), dtype=np.uint8))

    def quoted(self, data: bytes) -> str:
        return urllib.parse.quote_from_bytes(data, safe="")

    def target(self) -> str:
        if self.rng.random() < 0.75:
            job = self.choice([*self.job_ids, "nope", "", "a:result", self.choice(self.job_ids or ["x"]) + ":request",
                               "%00", "x" * 300, "..%2f..", self.quoted(self.junk(1, 20))])
            path = self.choice(HTTP_ROUTES).replace("{id}", job)
        else:
            path = self.choice(["/static/%00", "/static/" + "y" * 300, "/static/../../etc/passwd", "/static/%2e%2e/x",
                                "/v1", "/v1/edits/x", "/v2/jobs", "//", "/" + self.quoted(self.junk(1, 60)),
                                "/static/" + self.quoted(self.junk(1, 30)), "/v1/jobs/" + "z" * 5000])
        if self.rng.random() < 0.3:
            keys = ["pageSize", "pageToken", "afterSequence", "id", "x", "pageSize"]
            values = ["0", "1", "1000", "1001", "-1", "9223372036854775807", "18446744073709551616", "abc", "",
                      "\u0663", "1e3", "nan"]
            path += "?" + "&".join(f"{self.choice(keys)}={self.choice([urllib.parse.quote(self.choice(values)), '%ff', '%ED%A0%80', '%00'])}"
                                   for _ in range(int(self.rng.integers(1, 4))))
        return path

    def headers(self) -> dict[str, bytes]:
        headers: dict[str, bytes] = {}
        if self.rng.random() < 0.6:
            headers["Authorization"] = f"Bearer {self.choice(self.tokens)}".encode()
        elif self.rng.random() < 0.8:
            headers["Authorization"] = self.choice([
                b"Bearer \xff\xfe\xfd", b"Bearer tok-\xc3\x28", b"\xff", b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwdw==",
                b"Bearer " + b"t" * 8000, b"bearer " + self.junk(1, 40).replace(b"\r", b"").replace(b"\n", b"")])
        if self.rng.random() < 0.3:
            headers["Request-Timeout"] = self.choice([b"30", b"abc", b"-1", b"0", b"nan", b"inf", b"1e99", b"\xff"])
        if self.rng.random() < 0.1:
            headers["Last-Event-ID"] = self.choice([b"0", b"3", b"99999999999999999999", b"x", b"\xff", b"-1"])
        return headers

    def multipart(self) -> tuple[bytes, bytes]:
        boundary = b"fuzz" + str(int(self.rng.integers(1 << 30))).encode()
        parts = []
        for _ in range(int(self.rng.integers(0, 5)) if self.rng.random() < 0.97 else 1001 + int(self.rng.integers(50))):
            name = self.choice([b"request", b"image", b"mask", b"image", b"junk", b"", "r\u00e9".encode()])
            head = b'Content-Disposition: form-data; name="' + name + b'"'
            if self.rng.random() < 0.5:
                head += b'; filename="f.png"'
            if self.rng.random() < 0.4:
                head += b"\r\nContent-Type: " + self.choice([b"application/json", b"image/png", b"text/plain; charset=latin-1",
                                                             b"application/octet-stream"])
            parts.append(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + self.payload() + b"\r\n")
        body = b"".join(parts) + b"--" + boundary + b"--\r\n"
        if self.rng.random() < 0.15:
            body = self.mutate(body)
        content_type = self.choice([b"multipart/form-data; boundary=" + boundary] * 4 + [b"multipart/form-data",
                                                                                         b"multipart/form-data; boundary="])
        return content_type, body

    def payload(self) -> bytes:
        """A part's or a body's bytes: an edit as JSON, broken or deep JSON, an image, junk."""
        kind = int(self.rng.integers(7))
        if kind == 0:
            return self.edit_json()
        if kind == 1:
            return self.edit_json()[: int(self.rng.integers(1, 40))]  # broken JSON
        if kind == 2:
            depth = self.choice([10, 900, 5000, 100_000])
            return self.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth])
        if kind == 3:
            return self.choice(self.images)
        if kind == 4:
            return self.choice([b"null", b"[]", b'"x"', b"1e999", b'{"t0": "x"}', b'{"image": 5}', b'{"steps": -1}',
                                b'{"\\ud800": 1}', b"{\"image\": \"\\u0000\"}", b"\xef\xbb\xbf{}"])
        return self.junk(0, 300)

    def edit_json(self) -> bytes:
        edit = {"image": base64.b64encode(self.good_png).decode(), "t0": float(self.rng.uniform(0.05, 1.0)),
                "steps": int(self.rng.integers(1, 5)), "seed": str(int(self.rng.integers(0, 2**63)))}
        if self.rng.random() < 0.3:
            edit[self.choice(["model", "sampler", "numSamples", "outputFormat", "job", "priority", "zzz"])] = self.choice(
                ["gauss", "nope", 99, -1, "SAMPLER_DDIM", {"webhookUrl": "http://x"}, [1], None, 1e300])
        return json.dumps(edit).encode()

    def request(self) -> tuple[str, str, dict[str, bytes], bytes]:
        target, headers = self.target(), self.headers()
        route = self.choice(ROUTES)
        if self.rng.random() < 0.6:  # a real route with its own method, its {id} a job's or junk
            method = route.method
            target = route.path.replace("{id}", self.choice([*self.job_ids, *self.job_ids, "nope", "a:result"]))
            target = target.replace("{name}", self.choice(["main.js", "nope.js", "%00", "x" * 300]))
        else:
            method = self.choice(HTTP_METHODS)
        body = b""
        if method in ("POST", "PUT", "PATCH") or self.rng.random() < 0.05:
            if self.rng.random() < 0.4:
                headers["Content-Type"], body = self.multipart()
            else:
                body = self.edit_json() if self.rng.random() < 0.4 else self.payload()
                if self.rng.random() < 0.9:
                    headers["Content-Type"] = self.choice([b"application/json", b"application/json", b"application/octet-stream",
                                                           b"text/plain", b"application/x-www-form-urlencoded", b"\xff/\xfe",
                                                           b"application/json; charset=utf-16"])
        return method, target, headers, body


def http_send(port: int, method: str, target: str, headers: dict[str, bytes], body: bytes) -> int:
    """One request on a connection of its own; the status code (0: the server closed it unanswered)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        try:
            connection.endheaders(body)
        except ConnectionError:  # the server answered (400) and closed before the body was all sent
            pass
        response = connection.getresponse()
        response.read()
        return response.status
    except (ConnectionError, http.client.RemoteDisconnected):
        return 0
    finally:
        connection.close()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def test_fuzzing_the_http_door_gets_no_5xx_and_no_traceback(make_server, tmp_path, request, caplog):
    caplog.set_level(logging.INFO)
    count = request.config.getoption("--fuzz-requests")
    # the server runs in this (test) process, whatever size earlier tests left it: its budget is
    # BUDGET_MIB over what the process holds now
    budget_mib = round(rss_mib()) + BUDGET_MIB
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")), memory_budget_mib=budget_mib,
                      max_queue=64, max_active_edits=2, job_poll_seconds=0.1)
    port = srv.running.http_port
    jobs = [requests.post(f"{srv.http_url}/v1/jobs", json={"image": b64(image_bytes(np.zeros((16, 16), np.uint8))),
                                                           "t0": 0.3, "steps": 2},
                          headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=30).json()["id"] for _ in range(3)]
    fuzzer = HttpFuzzer(SEED, [TOKEN_A, TOKEN_A, TOKEN_B], jobs)  # b: Edit on gauss only
    results: collections.Counter[tuple[str, int]] = collections.Counter()
    bad: list[tuple] = []
    samples = [rss_mib()]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        def run(case):
            code = http_send(port, *case)
            method, target, headers, body = case
            return method, code, (method, target[:80], headers, body[:80], code) if code >= 500 or code == 0 else None

        for first in range(0, count, 100):  # drawn 100 at a time (the same cases every run), memory sampled after each
            for method, code, failure in pool.map(run, [fuzzer.request() for _ in range(min(100, count - first))]):
                results[(method, code)] += 1
                if failure is not None:
                    bad.append(failure)
            samples.append(rss_mib())
    seconds = time.monotonic() - started
    print(f"\n{count} fuzzed HTTP requests in {seconds:.1f} s; RSS {samples[0]:.0f} -> max {max(samples):.0f} MiB;",
          dict(sorted(results.items())))
    assert not bad, bad[:10]
    assert requests.get(f"{srv.http_url}/healthz", timeout=10).status_code == 200
    assert results[("POST", 200)] > 0 and sum(n for (_, c), n in results.items() if c == 200) > count // 20
    assert sum(n for (_, c), n in results.items() if 400 <= c < 500) > count // 2
    assert max(samples) <= budget_mib
    logged = [(r.name, r.getMessage()[:300]) for r in caplog.records
              if r.exc_info is not None or "Traceback" in r.getMessage() or "never retrieved" in r.getMessage()]
    assert not logged, logged[:5]
