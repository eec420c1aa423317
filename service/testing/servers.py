"""The real service for tests and benchmarks: in process (own thread and event loop) or as a subprocess.

Both bind free loopback ports and wait for grpc.health.v1 to report SERVING; a subprocess
writes its log to a file, for the caller to print when something fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client.connection import Connection
from service.config import Settings, load_settings
from service.server import RunningServer, start_server

ROOT = Path(__file__).resolve().parents[2]  # the repository (service/testing/servers.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(address: str | Connection, service: str = "", timeout: float = 1.0) -> int | None:
    with (address if isinstance(address, Connection) else Connection(address)).channel() as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


class InProcessServer:
    """Runs start_server() on its own event loop in a background thread."""

    def __init__(self, settings: Settings, wrap_model=None):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(start_server(settings))
        if wrap_model is not None:
            for loaded in self.running.service.registry.all():
                object.__setattr__(loaded, "backend", wrap_model(loaded.backend))

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_url(self) -> str:
        """The HTTP/JSON door's base URL (the server runs with http_port >= 0)."""
        assert self.running.http_port is not None, "this server has no HTTP port (http_port=-1)"
        scheme = "https" if self.settings.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{self.running.http_port}"

    @property
    def service(self):
        return self.running.service

    def stop(self, grace: float = 5.0) -> None:
        if not self.thread.is_alive():
            return  # stopped already
        try:
            self.call(self.running.drain_and_stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def local_settings(repository: Path, **overrides) -> Settings:
    """Settings for a server on loopback: free gRPC and HTTP ports, no metrics port, no linger, no environment."""
    values = dict(host="127.0.0.1", port=0, http_port=0, metrics_port=-1, model_repository=repository, grace_seconds=5.0,
                  shutdown_linger_seconds=0.0)
    values.update(overrides)
    return load_settings(env={}, **values)


def triton_settings(repository: Path, url: str, shm: bool, **overrides) -> Settings:
    """The service on the Triton backend; `repository` only supplies weights for content hashes.

    No result cache: these tests are about the network calls, and a repeated request must reach Triton."""
    overrides.setdefault("cache", "none")
    return local_settings(repository, default_model="gauss", backend="triton", triton_url=url,
                         triton_shared_memory=shm, **overrides)


def shm_files(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(prefix))


def triton_regions(client, prefix: str) -> list[str]:
    """Names of the system shared-memory regions Triton has registered under prefix."""
    status = client.get_system_shared_memory_status(client_timeout=5)
    return sorted(name for name in status.regions if name.startswith(prefix))


class ServeProcess:
    """`sdedit serve` (the installed console script) in a subprocess."""

    def __init__(self, repository: Path, *extra: str, env: dict | None = None, log_path: Path, tls_ca: Path | None = None):
        """tls_ca: the server serves TLS (in extra) with a certificate of this CA."""
        self.port = free_port()
        self.http_port = free_port()
        self.tls_ca = tls_ca
        self.log_path = log_path
        self.log = log_path.open("w")
        sdedit = Path(sys.executable).parent / "sdedit"
        args = [str(sdedit), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--http-port", str(self.http_port),
                "--metrics-port", "-1",
                "--model-repository", str(repository), *extra]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.http_port}"

    def wait_serving(self, timeout: float = 60) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"sdedit serve exited with {self.process.returncode}:\n{self.output()}")
            return health_status(Connection(self.address, tls_ca_file=self.tls_ca)) == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, timeout, 0.1, "SERVING")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        terminate(self.process, 30)
        self.log.close()


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
