"""Single-flight across processes: two `sdedit serve` processes sharing one real Redis."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from service.client import Client, build_request
from tests.helpers import join_threads, png, start_threads

pytestmark = pytest.mark.e2e
LOOP_LOG_LINE = "running the SDEdit loop"  # logged (DEBUG) by every run of the loop


def test_identical_requests_on_two_processes_sharing_redis_run_the_loop_once(serve, redis_server):
    flags = ("--cache", "redis", "--redis-url", redis_server.url, "--log-level", "DEBUG")
    servers = [serve(*flags), serve(*flags)]
    guide = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    # 4,000 network calls at 128x128: about a second, so the 8 requests are all in flight at once
    request = build_request(png(guide), t0=1.0, steps=1000, repeats=4, seed=21)
    clients = [Client(servers[i % 2].address) for i in range(8)]
    for client in clients:
        grpc.channel_ready_future(client.channel).result(timeout=10)
    start = threading.Barrier(8)
    sent, received, responses = [0.0] * 8, [0.0] * 8, [None] * 8

    def send(i: int) -> None:
        start.wait()
        sent[i] = time.monotonic()
        responses[i] = clients[i].edit(request, timeout=120)
        received[i] = time.monotonic()

    join_threads(start_threads(send, range(8)), 120)
    for client in clients:
        client.close()

    assert max(sent) < min(received), "the requests did not overlap; the test proves nothing"
    assert sum(not r.cached for r in responses) == 1, [r.cached for r in responses]
    assert len({tuple(i.data for i in r.images) for r in responses}) == 1
    loops = [s.output().count(LOOP_LOG_LINE) for s in servers]
    assert sum(loops) == 1, f"the loop ran {loops} times in the two processes"
    with redis_server.client() as client:
        assert len(client.keys("sdedit:v2:result:*")) == 1 and client.keys("sdedit:v2:lock:*") == []
