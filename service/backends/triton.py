"""The production backend: the score network served by NVIDIA Triton, called over gRPC.

One long-lived tritonclient gRPC client for the process, shared by every model (gRPC
channels and stubs are thread-safe; the edit loops call from their worker threads). The
models, and their SDE metadata, come from Triton itself: its repository index and each
model's config, whose `parameters` are the ones the embedded backend reads from
config.pbtxt.

Each call is bounded by the edit's deadline and by `triton_timeout_seconds`; UNAVAILABLE
(Triton down or restarting) is retried for `triton_retry_seconds` at most, within the
deadline, then the edit fails with UNAVAILABLE (BackendError). With
`triton_shared_memory`, tensors travel through system shared memory (service/backends/shm.py)
instead of the gRPC message: Triton must run on this host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from service.backends.base import ModelInfo
from service.backends.repository import config_parameters, content_hash, model_files, model_info_from_config, read_config
from service.backends.shm import ShmPool
from service.config import Settings
from service.errors import BackendError, DeadlineExceeded, ServiceError
from service.sde.schedules import SDESpec

log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE_TIMEOUT = 0.5  # seconds for readiness checks: health must stay cheap
FIRST_RETRY_DELAY, MAX_RETRY_DELAY = 0.02, 0.2  # seconds, doubling between retries


class _Retry(Exception):
    """An attempt failed in a way worth another try (UNAVAILABLE, a lost shm registration)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TritonConnection:
    """The process's one Triton client: calls with deadline and retries; the shm pool."""

    def __init__(self, settings: Settings):
        self.url = settings.triton_url
        self.timeout = settings.triton_timeout_seconds
        self.retry_seconds = settings.triton_retry_seconds
        self.max_batch_images = settings.max_batch_images  # shared-memory sets are sized for a full batch
        limit = settings.max_message_bytes
        self.client = grpcclient.InferenceServerClient(self.url, channel_args=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # reconnect soon after Triton comes back (gRPC's default backoff grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        self.shm = ShmPool(self.client, timeout=min(self.timeout, 5.0), idle_seconds=settings.triton_shm_idle_seconds,
                           max_idle=settings.triton_shm_max_idle_sets) if settings.triton_shared_memory else None
        self._users = 0
        self._lock = threading.Lock()

    # --- readiness and metadata -------------------------------------------------------------

    def server_ready(self) -> bool:
        try:
            return self.client.is_server_ready(client_timeout=PROBE_TIMEOUT)
        except InferenceServerException:
            return False

    def model_ready(self, name: str) -> bool:
        try:
            return self.client.is_model_ready(name, client_timeout=PROBE_TIMEOUT)
        except InferenceServerException:
            return False

    def wait_until_ready(self, seconds: float) -> None:
        """Waits for Triton (all its models loaded); BackendError if it is not ready in time."""
        give_up = time.monotonic() + seconds
        while not self.server_ready():
            if time.monotonic() >= give_up:
                raise BackendError(f"Triton at {self.url} is not ready after {seconds:.0f} s "
                                   "(is it running, with its models loaded?)", kind="not_ready")
            time.sleep(0.2)

    def check_shared_memory(self) -> None:
        """Registers one small region set, so that a Triton on another host fails at start-up."""
        if self.shm is None:
            return
        try:
            with self.shm.lease(4, 4):
                pass
        except InferenceServerException as exc:
            raise BackendError(f"Triton at {self.url} cannot map this host's shared memory ({exc.message()}); "
                               "triton_shared_memory needs Triton on this host, sharing /dev/shm", kind="shm") from None
        self.shm.invalidate(self.shm.timeout)  # the probe's tiny set is of no use to real calls; Triton is up

    def score_models(self, local_repository: Path) -> list[ModelInfo]:
        """Every READY model on Triton whose config carries SDE metadata, read from Triton."""
        infos = []
        index = self._call(lambda timeout: self.client.get_model_repository_index(client_timeout=timeout), None, "index")
        for entry in index.models:
            if entry.state != "READY":
                log.warning("Triton model %s is %s (%s); not serving it", entry.name, entry.state or "not loaded", entry.reason)
                continue
            config = self._call(lambda timeout, name=entry.name: self.client.get_model_config(name, client_timeout=timeout).config,
                                None, f"config of {entry.name}")
            if "sde" not in config_parameters(config):
                log.info("Triton model %s has no SDE parameters; not a score network, skipped", entry.name)
                continue
            hasher = _content_hasher(local_repository / entry.name, entry.name, entry.version)
            infos.append(model_info_from_config(config, entry.name, hasher, where=f"Triton model {entry.name}: "))
        return infos

    # --- inference ----------------------------------------------------------------------------

    def infer(self, info: ModelInfo, x: np.ndarray, t: np.ndarray, deadline: float | None) -> np.ndarray:
        """eps for x [B, C, H, W] and t [B]; batches larger than the model's max are split."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = np.ascontiguousarray(t, dtype=np.float32)
        step = info.max_batch_size or len(x)
        parts = [self._call(lambda timeout, i=i: self._infer_once(info, x[i:i + step], t[i:i + step], timeout), deadline,
                            f"inference on {info.name}") for i in range(0, len(x), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _infer_once(self, info: ModelInfo, x: np.ndarray, t: np.ndarray, timeout: float) -> np.ndarray:
        x_name, t_name = info.input_names
        # batching configs take one timestep per batch element as [B, 1] (reshaped to [B])
        t = t.reshape(-1, 1) if info.max_batch_size else t
        inputs = [grpcclient.InferInput(x_name, list(x.shape), "FP32"), grpcclient.InferInput(t_name, list(t.shape), "FP32")]
        output = grpcclient.InferRequestedOutput(info.output_name)
        if self.shm is None:
            inputs[0].set_data_from_numpy(x)
            inputs[1].set_data_from_numpy(t)
            result = self.client.infer(info.name, inputs, outputs=[output], client_timeout=timeout)
            return result.as_numpy(info.output_name)
        # Sized for the largest batch this model is sent (the batch scheduler's calls grow and
        # shrink as edits join and leave): one set per shape serves every batch, not one per size.
        full = min(self.max_batch_images, info.max_batch_size or self.max_batch_images)
        per_image = max(1, len(x))
        with self.shm.lease(x.nbytes, t.nbytes, x.nbytes // per_image * max(full, len(x)),
                            t.nbytes // per_image * max(full, len(x))) as regions:
            regions.write("x", x)
            regions.write("t", t)
            inputs[0].set_shared_memory(regions.names["x"], x.nbytes)
            inputs[1].set_shared_memory(regions.names["t"], t.nbytes)
            output.set_shared_memory(regions.names["eps"], x.nbytes)
            self.client.infer(info.name, inputs, outputs=[output], client_timeout=timeout)
            return regions.read("eps", x.shape)

    def _call(self, attempt: Callable[[float], T], deadline: float | None, what: str) -> T:
        """Runs attempt(timeout) with the deadline and the UNAVAILABLE retries; maps errors to ours."""
        retry_until = time.monotonic() + self.retry_seconds
        delay = FIRST_RETRY_DELAY
        while True:
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise DeadlineExceeded(f"deadline exceeded before {what}")
            try:
                return self._translate(attempt, timeout, deadline, what)
            except _Retry as retry:
                now = time.monotonic()
                if now + delay > retry_until or (deadline is not None and now + delay >= deadline):
                    raise BackendError(f"Triton at {self.url} is unavailable ({what}: {retry.message})", kind="unavailable") from None
                time.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_DELAY)

    def _translate(self, attempt: Callable[[float], T], timeout: float, deadline: float | None, what: str) -> T:
        try:
            return attempt(timeout)
        except InferenceServerException as exc:
            code, message = exc.status(), exc.message()
        if code == "StatusCode.UNAVAILABLE":
            if self.shm is not None:
                self.shm.invalidate()  # a restarted Triton has forgotten our registrations
            raise _Retry(message)
        if code == "StatusCode.NOT_FOUND" and "shared memory region" in (message or ""):
            if self.shm is not None:
                self.shm.invalidate()  # Triton restarted between two calls
            raise _Retry(message)
        if code == "StatusCode.DEADLINE_EXCEEDED":
            if deadline is not None and time.monotonic() >= deadline - 1e-3:
                raise DeadlineExceeded(f"deadline exceeded during {what}")
            raise BackendError(f"Triton at {self.url} took more than {timeout:.1f} s for {what}", kind="timeout")
        if code == "StatusCode.NOT_FOUND":
            raise BackendError(f"Triton at {self.url} cannot serve {what}: {message}", kind="not_ready")
        # INVALID_ARGUMENT, INTERNAL, ...: a bug or a broken model, not worth a retry (INTERNAL)
        raise ServiceError(f"Triton at {self.url} failed {what}: {code}: {message}")

    # --- lifetime -----------------------------------------------------------------------------

    def acquire(self) -> TritonConnection:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        """The last model to let go frees the shared memory and closes the channel."""
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            if self.shm is not None:
                self.shm.close()
            self.client.close()

    def __enter__(self) -> TritonConnection:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _content_hasher(local_dir: Path, name: str, version: str) -> Callable[[SDESpec, int], str]:
    """The embedded backend's hash when the same model folder is here (weights included), else
    a hash of Triton's metadata, name and version: a new weight file then needs a new version."""
    def hasher(spec: SDESpec, channels: int) -> str:
        if (local_dir / "config.pbtxt").is_file():
            files = model_files(local_dir, read_config(local_dir))
            if files[0].is_file():
                return content_hash(files, spec, channels)
        log.warning("model %s: no local copy of its weights; its content hash covers Triton's metadata and version %s",
                    name, version or "?")
        payload = {"sde": spec.__dict__, "channels": channels, "triton_model": name, "version": version}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    return hasher


class TritonScoreModel:
    """ScoreModel for one model served by Triton (thread-safe)."""

    def __init__(self, connection: TritonConnection, info: ModelInfo):
        self.connection = connection.acquire()
        self.info = info
        self._closed = False

    def predict_eps(self, x: np.ndarray, t: np.ndarray, deadline: float | None = None) -> np.ndarray:
        if self._closed:
            raise BackendError(f"model {self.info.name} is closed", kind="closed")
        network = self.info.network  # the family's time input and output (conventions.py)
        x_in, t_in = network.network_inputs(x, t)
        return network.eps(self.connection.infer(self.info, x_in, t_in, deadline), t)

    def ready(self) -> bool:
        return not self._closed and self.connection.model_ready(self.info.name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.connection.release()


def load_triton_models(settings: Settings) -> dict[str, TritonScoreModel]:
    """Connects to Triton (waiting up to triton_startup_seconds) and wraps its score models."""
    connection = TritonConnection(settings).acquire()
    try:
        connection.wait_until_ready(settings.triton_startup_seconds)
        connection.check_shared_memory()
        infos = connection.score_models(settings.model_repository)
        return {info.name: TritonScoreModel(connection, info) for info in infos}
    finally:
        connection.release()  # the models hold it now (or nobody, and it closes)
