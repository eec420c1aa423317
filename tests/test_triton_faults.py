"""Triton faults with the real server: killed mid-edit, started again, a model unloaded.

Each test starts its own tritonserver (one model, explicit model control) on free loopback
ports, and the service in process with shared memory on, so that leaked regions would show
in /dev/shm and in Triton's registry.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.backends.triton import TritonConnection
from service.client import Client, build_request
from service.server import LIVENESS
from service.testing.servers import health_status, shm_files, triton_regions, triton_settings, wait_for
from tests.helpers import join_threads, png, start_threads, start_triton

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def fault_triton(oracle_repository, tmp_path, request):
    server = start_triton([oracle_repository / "gauss"], tmp_path, explicit_models=True)
    yield server
    server.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- tritonserver log ---\n{server.log_tail(80)}")


@pytest.fixture
def service(fault_triton, make_server):
    return make_server.triton(fault_triton.url, shm=True, health_poll_seconds=0.1)  # it stops before fault_triton does


def _short_edit(guide, seed: int = 1):
    return build_request(png(guide), t0=0.5, steps=5, seed=seed)


def _assert_regions_consistent(service, triton) -> None:
    """Ours in /dev/shm == the pool's bookkeeping == what Triton has registered; not empty."""
    pool = service.service.registry.get("gauss").backend.connection.shm
    with TritonConnection(triton_settings(service.settings.model_repository, triton.url, shm=False)) as probe:
        registered = triton_regions(probe.client, pool.prefix)
    assert shm_files(pool.prefix) == pool.region_names() == registered
    assert len(registered) == 3  # one call at a time: one (x, t, eps) set, reused


def test_triton_killed_mid_edit_fails_fast_then_recovers_without_a_restart(service, fault_triton, guide16):
    pool = service.service.registry.get("gauss").backend.connection.shm
    with Client(service.address) as client:
        client.edit(_short_edit(guide16), timeout=30)
        _assert_regions_consistent(service, fault_triton)

        # thousands of network calls: the edit is still running when Triton dies
        events = iter(client.stream_edit(build_request(png(guide16), t0=1.0, steps=1000, repeats=5, seed=2), timeout=60))
        while next(events).progress.network_calls < 20:
            pass
        killed = time.monotonic()
        fault_triton.kill()
        with pytest.raises(grpc.RpcError) as raised:
            for _ in events:
                pass
        failed_after = time.monotonic() - killed
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"Triton at {fault_triton.url} is unavailable" in raised.value.details()
        assert failed_after < 2.0, f"the edit took {failed_after:.2f} s to fail"
        assert shm_files(pool.prefix) == [] and pool.region_names() == []  # nothing leaked

        wait_for(lambda: health_status(service.address) == NOT_SERVING, 5, what="NOT_SERVING")
        assert health_status(service.address, LIVENESS) == SERVING  # a liveness probe must not restart it
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            client.edit(_short_edit(guide16), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 2.0
        assert shm_files(pool.prefix) == []

        fault_triton.start()  # same ports; the service is not restarted
        wait_for(lambda: health_status(service.address) == SERVING, 10, what="SERVING again")
        assert len(client.edit(_short_edit(guide16, seed=3), timeout=30).images) == 1
        _assert_regions_consistent(service, fault_triton)
    service.stop()
    assert shm_files(pool.prefix) == []
    with TritonConnection(triton_settings(service.settings.model_repository, fault_triton.url, shm=False)) as probe:
        assert triton_regions(probe.client, pool.prefix) == []  # unregistered on shutdown


def test_an_unloaded_model_a_patient_retry_and_a_quiet_restart(service, fault_triton, guide16):
    settings = triton_settings(service.settings.model_repository, fault_triton.url, shm=False)
    with Client(service.address) as client, TritonConnection(settings) as admin:
        client.edit(_short_edit(guide16), timeout=30)
        admin.client.unload_model("gauss")
        wait_for(lambda: health_status(service.address) == NOT_SERVING, 5, what="NOT_SERVING")
        with pytest.raises(grpc.RpcError) as raised:
            client.edit(_short_edit(guide16), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "gauss" in raised.value.details()
        admin.client.load_model("gauss")
        wait_for(lambda: health_status(service.address) == SERVING, 10, what="SERVING again")
        client.edit(_short_edit(guide16), timeout=30)

        # Triton restarts between two edits. A call that may retry for long enough rides it out...
        fault_triton.stop()
        patient_settings = triton_settings(service.settings.model_repository, fault_triton.url, shm=True,
                                           triton_retry_seconds=60)
        info = service.service.registry.get("gauss").info
        x, t = np.ones((2, 1, 16, 16), np.float32), np.full(2, 100, np.float32)
        outcome: dict = {}
        with TritonConnection(patient_settings) as patient:
            waiting = threading.Thread(target=lambda: outcome.update(eps=patient.infer(info, x, t, time.monotonic() + 60)))
            waiting.start()
            time.sleep(0.5)
            assert waiting.is_alive() and not outcome  # still retrying UNAVAILABLE
            fault_triton.start()
            waiting.join(60)
        assert outcome["eps"].shape == x.shape
        # ... and the service's next edit works although Triton forgot the regions it had registered.
        assert len(client.edit(_short_edit(guide16, seed=4), timeout=30).images) == 1
        _assert_regions_consistent(service, fault_triton)


def test_triton_killed_mid_batch_fails_every_edit_in_it_and_leaks_nothing(service, fault_triton, guide16):
    """Four long edits share each infer call (step-level batching); Triton dies under them."""
    pool = service.service.registry.get("gauss").backend.connection.shm
    codes: list[grpc.StatusCode] = []
    started = threading.Barrier(5)

    def long_edit(seed: int) -> None:
        with Client(service.address) as client:
            events = iter(client.stream_edit(build_request(png(guide16), t0=1.0, steps=1000, repeats=5, seed=seed), timeout=60))
            while next(events).progress.network_calls < 20:
                pass
            started.wait(30)
            try:
                for _ in events:
                    pass
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())

    threads = start_threads(long_edit, range(4))
    started.wait(30)
    killed = time.monotonic()
    fault_triton.kill()
    join_threads(threads, 30)
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 4
    assert time.monotonic() - killed < 5.0
    assert shm_files(pool.prefix) == [] and pool.region_names() == []  # nothing leaked
