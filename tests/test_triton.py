"""The Triton backend against a real tritonserver (the CPU variant of the same model files).

Parity with the embedded backend, metadata from Triton's model config, shared memory that
is registered once and always freed, deadlines and retries, and `sdedit serve --backend
triton`. Fault tests (Triton killed, restarted, models unloaded) are in test_triton_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.backends.onnx import OnnxScoreModel
from service.backends.registry import load_registry
from service.backends.triton import TritonConnection, TritonScoreModel, load_triton_models
from service.backends.triton_local import free_port
from service.client import Client, build_request
from service.config import Settings
from service.errors import BackendError, DeadlineExceeded, ServiceError
from service.pipeline.imaging import decode_npy
from service.testing.servers import health_status, shm_files, triton_regions, triton_settings, wait_for
from tests.helpers import ServerFactory, join_threads, png, start_threads
from tests.models_for_tests import counting

DEFAULT_MODEL = Settings().default_model  # follows the service's default, whatever it becomes
PARITY_MODELS = ["gauss", "gauss-ve", "mix", "gauss-rgb", DEFAULT_MODEL]
TOLERANCE = 1e-4  # float32 through two runtimes of the same graph; measured differences are 0


@pytest.fixture(scope="module")
def embedded(parity_repository, make_module_server):
    return make_module_server(repository=parity_repository, default_model="gauss")


@pytest.fixture(scope="module", params=["grpc", "shm"])
def via_triton(request, parity_repository, triton):
    with ServerFactory(parity_repository) as start:  # a factory of its own: each parameter's server stops before the next starts
        yield start.triton(triton.url, shm=request.param == "shm")


def _guide_and_mask(height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    shape = (height, width) if channels == 1 else (height, width, channels)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, : width // 2] = 255
    return rng.integers(0, 256, shape, dtype=np.uint8), mask


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("model", PARITY_MODELS)
def test_triton_matches_embedded_for_the_same_request_and_seed(embedded, via_triton, model, masked):
    info = embedded.service.registry.get(model).info
    guide, mask = _guide_and_mask(info.height, info.width, info.channels)
    request = build_request(png(guide), mask=png(mask) if masked else b"", t0=0.6, steps=8, repeats=2, seed=21,
                            num_samples=3, model=model, npy=True)
    with Client(embedded.address) as a, Client(via_triton.address) as b:
        expected, actual = a.edit(request, timeout=60), b.edit(request, timeout=60)
    assert actual.model_hash == expected.model_hash  # same weights and metadata, read through Triton
    assert actual.network_calls == expected.network_calls == 16
    assert [i.seed for i in actual.images] == [i.seed for i in expected.images]
    differences = [np.abs(decode_npy(x.data) - decode_npy(y.data)).max() for x, y in zip(actual.images, expected.images)]
    assert len(differences) == 3 and max(differences) <= TOLERANCE


def test_models_and_metadata_come_from_tritons_model_config(embedded, via_triton):
    with Client(embedded.address) as a, Client(via_triton.address) as b:
        assert b.list_models(timeout=10) == a.list_models(timeout=10)
    served = via_triton.service.registry.get("gauss-ve").backend
    assert isinstance(served, TritonScoreModel)
    assert served.info == embedded.service.registry.get("gauss-ve").info  # every field, parameters included


def test_concurrent_calls_use_their_own_regions_registered_once_and_freed(parity_repository, triton):
    connection = TritonConnection(triton_settings(parity_repository, triton.url, shm=True)).acquire()
    models = {info.name: TritonScoreModel(connection, info) for info in connection.score_models(parity_repository)}
    connection.release()  # the models hold it now
    reference = {name: OnnxScoreModel(parity_repository / name) for name in ("gauss", DEFAULT_MODEL)}
    prefix = connection.shm.prefix
    problems: list[str] = []

    def work(worker: int) -> None:
        rng = np.random.default_rng(worker)
        name = ("gauss", DEFAULT_MODEL)[worker % 2]
        info = reference[name].info
        for call in range(15):
            side = (info.height, 24 if name == "gauss" and call % 3 == 0 else info.width)
            x = rng.standard_normal((1 + worker % 3, info.channels, *side), dtype=np.float32)
            t = rng.uniform(1, 999, len(x)).astype(np.float32)
            difference = np.abs(models[name].predict_eps(x, t) - reference[name].predict_eps(x, t)).max()
            if difference > TOLERANCE:
                problems.append(f"worker {worker} call {call}: {difference}")

    join_threads(start_threads(work, range(4)), 60)
    assert not problems
    held = connection.shm.region_names()
    assert 3 <= len(held) <= 3 * 4 * 2  # (x, t, eps) per call in flight, a few sizes; reused, not per call
    assert shm_files(prefix) == held == triton_regions(connection.client, prefix)
    for model in models.values():
        model.close()
    assert shm_files(prefix) == [] and connection.shm.region_names() == []
    with TritonConnection(triton_settings(parity_repository, triton.url, shm=False)) as probe:
        assert triton_regions(probe.client, prefix) == []


def _shm_models(settings: Settings, repository) -> tuple[TritonConnection, TritonScoreModel]:
    connection = TritonConnection(settings).acquire()
    info = next(i for i in connection.score_models(repository) if i.name == "gauss")
    model = TritonScoreModel(connection, info)
    connection.release()  # the model holds it now
    return connection, model


def _predict(model: TritonScoreModel, width: int, batch: int = 1) -> None:
    x = np.zeros((batch, 1, 16, width), np.float32)
    assert model.predict_eps(x, np.full(batch, 500, np.float32)).shape == x.shape


def test_idle_region_sets_are_freed_after_the_idle_limit(parity_repository, triton):
    connection, model = _shm_models(triton_settings(parity_repository, triton.url, shm=True,
                                                    triton_shm_idle_seconds=0.5, max_batch_images=1), parity_repository)
    pool, prefix = connection.shm, connection.shm.prefix
    try:
        for width in (16, 24, 32):  # each larger than the last (sets sized for batch 1): one set each
            _predict(model, width)
        held = pool.region_names()
        assert len(held) == 9 and shm_files(prefix) == held == triton_regions(connection.client, prefix)
        def freed() -> bool:  # the reaper drops a set from the pool, then unlinks and unregisters it
            return not pool.region_names() and not shm_files(prefix) and not triton_regions(connection.client, prefix)

        wait_for(freed, timeout=5, what="idle sets freed")  # 0.5 s idle, then freed
        _predict(model, 16)  # the pool goes on working: a fresh set, registered again
        assert len(pool.region_names()) == 3 and shm_files(prefix) == triton_regions(connection.client, prefix)
    finally:
        model.close()
    assert shm_files(prefix) == []


def test_the_pool_keeps_at_most_its_bound_of_idle_sets(parity_repository, triton):
    connection, model = _shm_models(triton_settings(parity_repository, triton.url, shm=True, triton_shm_max_idle_sets=1,
                                                    triton_shm_idle_seconds=0, max_batch_images=1), parity_repository)  # never by age
    pool, prefix = connection.shm, connection.shm.prefix
    try:
        for width in (16, 24, 32):
            _predict(model, width)
        held = pool.region_names()
        assert len(held) == 3 and all(name.startswith(f"{prefix}2_") for name in held)  # the most recent set only
        assert shm_files(prefix) == held == triton_regions(connection.client, prefix)
        time.sleep(0.3)
        assert pool.region_names() == held  # idle_seconds 0: kept however long idle
    finally:
        model.close()
    assert shm_files(prefix) == []


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (process group, command line) of every live (not zombie) process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[2]), cmdline)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalling_the_launcher_stops_its_tritonserver_and_stubs(oracle_repository, tmp_path, sig):
    """`make triton-cpu` (python -m service.backends.triton_local) stopped by a signal leaves
    no tritonserver and no Python-backend stub of its run behind."""
    target = tmp_path / "repository"  # unique: on the tritonserver's command line
    ports = [str(free_port()) for _ in range(3)]
    launcher = subprocess.Popen([sys.executable, "-m", "service.backends.triton_local", "--model-repository",
                                 str(oracle_repository), "--target", str(target), "--grpc-port", ports[0],
                                 "--http-port", ports[1], "--metrics-port", ports[2]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group = None
    try:
        assert "ready on" in launcher.stdout.readline()  # printed once Triton and its models are ready
        servers = [pid for pid, (_, cmd) in _processes().items() if f"--model-repository={target}" in cmd]
        assert len(servers) == 1
        group = os.getpgid(servers[0])
        ours = {pid: cmd for pid, (pgrp, cmd) in _processes().items() if pgrp == group}
        assert any("triton_python_backend_stub" in cmd for cmd in ours.values())  # the stubs share its group
        launcher.send_signal(sig)
        code = launcher.wait(30)
        left = {pid: cmd for pid, (pgrp, cmd) in _processes().items() if pgrp == group or str(target) in cmd}
        assert left == {}
        assert code == 0  # a requested stop, not a crash
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # what the launcher left of its own run


def triton_requests(client, model: str) -> int:
    """How many inference requests Triton has run for the model (succeeded or failed)."""
    stats = client.get_inference_statistics(model, client_timeout=5).model_stats[0].inference_stats
    return stats.success.count + stats.fail.count


def test_the_deadline_bounds_each_call(parity_repository, triton):
    """A call whose deadline falls while Triton works on it fails DEADLINE_EXCEEDED at the
    deadline, and the request did reach Triton (its own statistics count it). A deadline of
    a millisecond or so would not prove that: gRPC gives up before the request is delivered."""
    models = load_triton_models(triton_settings(parity_repository, triton.url, shm=False))
    model = models.pop("gauss")
    for other in models.values():
        other.close()
    client = model.connection.client
    x = np.zeros((16, 1, 256, 256), np.float32)
    t = np.full(16, 500, np.float32)
    try:
        before = triton_requests(client, "gauss")
        with pytest.raises(DeadlineExceeded, match="before"):
            model.predict_eps(x, t, deadline=time.monotonic() - 1)
        assert triton_requests(client, "gauss") == before  # refused before calling

        def full_call() -> float:
            started = time.monotonic()
            model.predict_eps(x, t, deadline=started + 30)
            return time.monotonic() - started

        outcomes, durations = [], []
        for _ in range(5):  # a loaded machine may finish one call early or deliver one late: allow 5 tries
            # the budget from full calls made just before this one (a machine's speed drifts):
            # the request is delivered early; most of a call is Triton's work
            durations.append(min(full_call() for _ in range(2)))
            budget = max(durations[-1] / 2, 0.005)
            before = triton_requests(client, "gauss")
            started = time.monotonic()
            try:
                model.predict_eps(x, t, deadline=started + budget)
                outcomes.append("finished within the deadline")
                continue
            except DeadlineExceeded as exc:
                elapsed = time.monotonic() - started
                assert "during inference" in str(exc)
            try:  # Triton finishes the request after the client gave up, and counts it then
                wait_for(lambda b=before: triton_requests(client, "gauss") > b, 5, what="Triton to count the request")
            except TimeoutError:
                outcomes.append("never reached Triton")
                continue
            assert elapsed < budget + 0.25  # cut short at the deadline, not after the call's end
            break
        else:
            pytest.fail(f"no call was cut short by its deadline after reaching Triton (full calls {durations} s, "
                        f"deadlines half of each): {outcomes}")
        assert model.predict_eps(x[:1], t[:1], deadline=time.monotonic() + 30).shape == (1, 1, 256, 256)
    finally:
        model.close()


def test_a_served_edit_s_deadline_bounds_its_triton_calls(parity_repository, triton, make_server, guide16):
    """On the path the service takes (gRPC door, pipeline, batch scheduler, the Triton
    backend): every Triton call of an edit with a deadline is made with that deadline (the
    client timeout of the call), and one without a deadline calls with none."""
    wrap = counting()
    srv = make_server.start(triton_settings(parity_repository, triton.url, shm=False), wrap)
    model = wrap.models["gauss"]
    assert isinstance(model.inner, TritonScoreModel)
    with Client(srv.address) as client:
        client.edit(build_request(png(guide16), t0=0.5, steps=3, seed=1), timeout=None)
        unbounded = list(model.deadlines)
        sent = time.monotonic()
        response = client.edit(build_request(png(guide16), t0=0.5, steps=4, seed=2), timeout=20)
        answered = time.monotonic()
    assert unbounded == [None] * 3 and len(response.images) == 1
    bounded = model.deadlines[3:]
    assert len(bounded) == 4 and all(sent + 19 <= d <= answered + 21 for d in bounded), (sent, bounded)


def test_unavailable_is_retried_within_its_budget_and_the_deadline_only(parity_repository, triton, tmp_path):
    nobody = f"127.0.0.1:{free_port()}"
    info = OnnxScoreModel(parity_repository / "gauss").info
    x, t = np.zeros((1, 1, 16, 16), np.float32), np.ones(1, np.float32)
    with TritonConnection(triton_settings(tmp_path, nobody, shm=False, triton_retry_seconds=0.6)) as connection:
        started = time.monotonic()
        with pytest.raises(BackendError, match=f"Triton at {nobody} is unavailable"):
            connection.infer(info, x, t, deadline=None)
        assert 0.5 <= time.monotonic() - started < 1.5  # retried for its budget, then gave up
        started = time.monotonic()
        with pytest.raises(BackendError):
            connection.infer(info, x, t, deadline=started + 0.2)
        assert time.monotonic() - started < 0.45  # the deadline cuts the retries short
    with TritonConnection(triton_settings(tmp_path, triton.url, shm=False, triton_retry_seconds=3.0)) as connection:
        started = time.monotonic()
        with pytest.raises(ServiceError, match="INVALID_ARGUMENT") as raised:  # 2 channels for a 1-channel model
            connection.infer(info, np.zeros((1, 2, 16, 16), np.float32), t, deadline=None)
        assert not isinstance(raised.value, BackendError)  # INTERNAL to the caller: a bug, not an outage
        assert time.monotonic() - started < 1.0  # not retried


def test_start_up_fails_clearly_when_triton_is_not_there(tmp_path):
    settings = triton_settings(tmp_path, f"127.0.0.1:{free_port()}", shm=True, triton_startup_seconds=0.5)
    with pytest.raises(BackendError, match="is not ready after"):
        load_registry(settings)


def test_start_up_fails_clearly_when_triton_cannot_map_our_shared_memory(tmp_path, triton, monkeypatch):
    """As when Triton runs on another host: the region's key names nothing Triton can open."""
    from service.backends import shm

    monkeypatch.setattr(shm.RegionSet, "key", staticmethod(lambda name: "/not-" + name))
    with pytest.raises(BackendError, match="cannot map this host's shared memory"):
        load_registry(triton_settings(tmp_path, triton.url, shm=True))


@pytest.mark.e2e
def test_sdedit_serve_with_the_triton_backend(parity_repository, triton, serve, guide16):
    process = serve("--default-model", "gauss", "--backend", "triton", "--triton-url", triton.url, repository=parity_repository,
                    env={"SDEDIT_TRITON_SHARED_MEMORY": "true"})
    assert health_status(process.address) == health_pb2.HealthCheckResponse.SERVING
    with Client(process.address) as client:
        assert {m.name for m in client.list_models(timeout=10)} >= set(PARITY_MODELS)
        response = client.edit(build_request(png(guide16), t0=0.5, steps=5, seed=3), timeout=60)
        assert response.model == "gauss" and len(response.images) == 1
        with pytest.raises(grpc.RpcError) as raised:
            client.edit(build_request(png(guide16), model="nope"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "triton_shared_memory=True" in process.output()
