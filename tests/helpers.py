"""What the test modules share: the factory that starts configured servers (behind the make_server,
make_module_server and serve fixtures of conftest.py), image bytes, tenants' tokens, job and
status-detail look-ups, threads, TLS and tool look-ups.

Test modules import these from here, never from one another nor from conftest.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from sdedit.v1 import sdedit_pb2 as pb
from service.backends.triton_local import LocalTriton
from service.backends.variants import write_cpu_repository
from service.client import Client
from service.config import Settings
from service.pipeline.imaging import encode_png
from service.sde.schedules import SDESpec
from service.tenancy.tenants import hash_token
from service.testing.servers import ROOT, InProcessServer, ServeProcess, local_settings, triton_settings
from tests.certs import serial_of

VP = SDESpec(sde_type="vp_discrete")
VE = SDESpec(sde_type="ve", timesteps=1000, sigma_min=0.01, sigma_max=50.0)

TOKEN_A = "tok-a-" + "7" * 32
TOKEN_B = "tok-b-" + "9" * 32


# --- servers ---------------------------------------------------------------------------------

class ServerFactory:
    """Starts servers on a model repository; as a context manager, stops every one it started on exit.

    A server on the factory's own repository gets `defaults` (the fixtures': default_model="gauss")
    under its overrides; one on another `repository` gets only its overrides, so that repository's
    own default model applies. `logs` is where `sdedit serve` processes write their logs, and
    `failed()` says whether the test failed, so that their logs are printed on the way out.
    """

    def __init__(self, repository: Path, *, logs: Path | None = None, failed: Callable[[], bool] = lambda: False, **defaults):
        self.repository, self.logs, self.failed, self.defaults = repository, logs, failed, defaults
        self.started: list[InProcessServer] = []
        self.processes: list[ServeProcess] = []

    def __call__(self, wrap_model=None, *, repository: Path | None = None, **overrides) -> InProcessServer:
        """An in-process server on local_settings with these overrides; wrap_model wraps each model's backend."""
        if repository is None:
            repository, overrides = self.repository, {**self.defaults, **overrides}
        return self.start(local_settings(repository, **overrides), wrap_model)

    def triton(self, url: str, shm: bool, *, repository: Path | None = None, **overrides) -> InProcessServer:
        """An in-process server on the Triton backend at `url` (triton_settings: model gauss, no result cache)."""
        return self.start(triton_settings(repository or self.repository, url, shm, **overrides))

    def start(self, settings: Settings, wrap_model=None) -> InProcessServer:
        server = InProcessServer(settings, wrap_model=wrap_model)
        self.started.append(server)
        return server

    def process(self, *flags: str, repository: Path | None = None, tls_ca: Path | None = None, env: dict | None = None,
                wait: float = 60) -> ServeProcess:
        """`sdedit serve` with these flags (after the defaults' flags), once it reports SERVING within `wait` s."""
        assert self.logs is not None, "this factory was made without a folder for logs"
        if repository is None:
            repository = self.repository
            flags = (*(word for name, value in self.defaults.items() for word in (f"--{name.replace('_', '-')}", str(value))),
                     *flags)
        process = ServeProcess(repository, *flags, env=env, tls_ca=tls_ca, log_path=self.logs / f"serve{len(self.processes)}.log")
        self.processes.append(process)
        process.wait_serving(wait)
        return process

    def __enter__(self) -> ServerFactory:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
        for process in self.processes:
            process.stop()
            if self.failed():
                print(f"--- sdedit serve log ---\n{process.output()}")
        self.started, self.processes = [], []


def start_triton(model_dirs: list[Path], work: Path, **options) -> LocalTriton:
    """A real tritonserver on free loopback ports serving the CPU variant of these models."""
    return LocalTriton(write_cpu_repository(model_dirs, work / "repository"), work / "tritonserver.log", **options).start()


# --- images ----------------------------------------------------------------------------------

def png(pixels: np.ndarray) -> bytes:
    """The service's own PNG encoding of a (H, W) or (H, W, C) uint8 array."""
    return encode_png(pixels if pixels.ndim == 3 else pixels[:, :, None])


def image_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG", **options) -> bytes:
    """An array or a PIL image in an image file format, as Pillow writes it (not the service's encoder)."""
    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- threads --------------------------------------------------------------------------------

def start_threads(target: Callable, items: Iterable) -> list[threading.Thread]:
    """target(item) on a thread of its own per item, all started."""
    threads = [threading.Thread(target=target, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads


def join_threads(threads: list[threading.Thread], timeout: float) -> None:
    """Joins each thread, waiting up to `timeout` s for each."""
    for thread in threads:
        thread.join(timeout)


# --- tenants, jobs and errors ----------------------------------------------------------------

def write_tokens(path: Path, tenants: list[dict]) -> Path:
    path.write_text(json.dumps({"tenants": tenants}))
    return path


def two_tenants(path: Path, **light) -> Path:
    """Tenant a by its token's hash (the recommended form), b by the token itself."""
    return write_tokens(path, [{"name": "a", "token_sha256": [hash_token(TOKEN_A)]},
                               {"name": "b", "token": TOKEN_B, "models": ["gauss"], "methods": ["Edit"], **light}])


def get_job(client: Client, job_id: str) -> pb.Job:
    return client.stub.GetJob(pb.GetJobRequest(id=job_id), timeout=10)


def status_details(error: grpc.RpcError, kind: type[Message]) -> list:
    """The details of this type (error_details_pb2.BadRequest, RetryInfo...) in an error's google.rpc.Status, unpacked."""
    found = []
    for detail in rpc_status.from_call(error).details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def bad_fields(error: grpc.RpcError) -> list[str]:
    """The fields named by the BadRequest details of an error status, in order."""
    return [v.field for bad in status_details(error, error_details_pb2.BadRequest) for v in bad.field_violations]


# --- TLS and tools ---------------------------------------------------------------------------

def served_serial(port: int) -> str:
    """The serial number of the certificate the server on this loopback port presents to a new connection.

    The probe offers h2 and http/1.1, as a browser does: gRPC's TLS wants h2, the HTTP door takes either."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


def promtool() -> str:
    found = shutil.which("promtool", path=f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail("promtool is missing: `make test` installs it (scripts/install-promtool.sh)")
    return found


# --- asyncio ------------------------------------------------------------------------------------

class NeverRetrieved(logging.Handler):
    """asyncio's "Task exception was never retrieved" / "Future exception was never retrieved"
    records: a task or future that ended with an exception nobody consumed (logged when it is
    collected, from whichever thread drops it)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "exception was never retrieved" in message:
            exc = record.exc_info[1] if record.exc_info else None
            self.found.append(f"{message.splitlines()[0]} {exc!r}" if exc is not None else message)

    def take(self) -> list[str]:
        with self.lock:
            found, self.found = self.found, []
        return found


def error_of(response, code: int, status: str) -> dict:
    """The AIP-193 JSON error of an HTTP answer, checked to have this HTTP code and status."""
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status, error
    return error


def violated_field(error: dict) -> str:
    """The field the google.rpc.BadRequest of an AIP-193 error names."""
    bad = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    return bad[0]["fieldViolations"][0]["field"]
