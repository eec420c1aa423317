"""The result cache through the gRPC API: in-process servers, real ONNX oracle models, and
a real redis-server of each test's own (never the machine's)."""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from service.backends.oracle import gaussian_model
from service.backends.repository import model_parameters, write_model
from service.cache.codec import MAGIC, decode_entry
from service.client import Client, build_request
from service.testing.redis_server import RedisServer
from service.testing.servers import health_status, wait_for
from tests.helpers import VP, png
from tests.models_for_tests import counting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_SIGNATURE = b"\x93NUMPY"


@pytest.fixture(params=["memory", "redis"])
def cached_server(request, make_server):
    """A server with each cache backend, its model wrapped in a network-call counter."""

    def start(**overrides):
        wrap = counting()
        if request.param == "redis":
            overrides.setdefault("redis_url", request.getfixturevalue("redis_server").url)
        srv = make_server(wrap_model=wrap, cache=request.param, **overrides)
        return srv, wrap.models

    return start


def edit(address: str, request, timeout: float = 30):
    with Client(address) as client:
        return client.edit(request, timeout=timeout)


def images(response) -> list[bytes]:
    return [i.data for i in response.images]


# --- results ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("npy", [False, True])
def test_repeated_seeded_request_is_served_bit_identical_from_the_cache_without_the_backend(cached_server, guide16,
                                                                                           mask16, npy):
    srv, models = cached_server()
    request = build_request(png(guide16), mask=png(mask16), t0=0.6, steps=12, seed=9, num_samples=2, npy=npy)
    first = edit(srv.address, request)
    calls = models["gauss"].calls
    assert not first.cached and calls == 12  # both samples share one network call per step
    second = edit(srv.address, request)
    assert second.cached and models["gauss"].calls == calls, "a cache hit called the backend"
    assert images(second) == images(first)
    assert [i.seed for i in second.images] == [i.seed for i in first.images]
    assert (second.network_calls, second.steps, second.model_hash) == (first.network_calls, first.steps, first.model_hash)
    assert second.timings.sde_seconds == 0 and second.timings.queue_seconds == 0
    assert srv.service.cache.stats.hits == 1 and srv.service.cache.stats.misses == 1


def test_unseeded_requests_are_not_cached(cached_server, guide16):
    srv, models = cached_server()
    request = build_request(png(guide16), t0=0.5, steps=10)
    first, second = edit(srv.address, request), edit(srv.address, request)
    assert not first.cached and not second.cached
    assert models["gauss"].calls == 20 and first.images[0].seed != second.images[0].seed
    assert srv.service.cache.stats.uncacheable == 2 and srv.service.cache.stats.stored == 0


def test_a_cache_hit_in_stream_edit_sends_just_the_result(cached_server, guide16):
    srv, models = cached_server()
    request = build_request(png(guide16), t0=0.5, steps=8, seed=4, preview_every=2)
    first = edit(srv.address, request)
    with Client(srv.address) as client:
        events = list(client.stream_edit(request, timeout=30))
    assert [e.WhichOneof("event") for e in events] == ["result"]
    assert events[0].result.cached and images(events[0].result) == images(first) and models["gauss"].calls == 8


def test_a_cache_hit_needs_no_admission_slot(make_server, guide16):
    """With the only slot busy and no queue, a hit is still answered (a miss would be refused)."""
    wrap = counting(delay=0.05)
    srv = make_server(wrap_model=wrap, max_active_edits=1, max_queue=0)
    hit = build_request(png(guide16), t0=0.5, steps=2, seed=1)
    edit(srv.address, hit)
    busy = threading.Thread(target=edit, args=(srv.address, build_request(png(guide16), t0=0.5, steps=40, seed=2)))
    busy.start()
    wait_for(lambda: srv.service.admission.running == 1, 10, what="slot taken")
    assert edit(srv.address, hit).cached
    with pytest.raises(grpc.RpcError) as refused:
        edit(srv.address, build_request(png(guide16), t0=0.5, steps=2, seed=3))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    busy.join(30)


def test_identical_concurrent_requests_run_the_loop_once_in_a_process(cached_server, guide16):
    srv, models = cached_server()
    request = build_request(png(guide16), t0=1.0, steps=200, seed=5)
    models["gauss"].delay = 0.002  # 200 steps: about half a second, so all 8 overlap
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: edit(srv.address, request), range(8)))
    assert models["gauss"].calls == 200, "the loop ran more than once"
    assert sum(not r.cached for r in responses) == 1
    assert len({tuple(images(r)) for r in responses}) == 1


def test_a_new_model_version_never_serves_an_old_result(make_server, redis_server, tmp_path, guide16):
    """Two replicas share Redis; the second serves a retrained "gauss" (new content hash)."""
    retrained = tmp_path / "repository"
    write_model(retrained, "gauss", gaussian_model(VP, 0.3, 0.5).SerializeToString(),
                model_parameters(VP, 16, 16, 1, default_steps=20, description="retrained"))
    old = make_server(cache="redis", redis_url=redis_server.url)
    new = make_server(cache="redis", redis_url=redis_server.url, model_repository=retrained)
    request = build_request(png(guide16), t0=0.5, steps=10, seed=1)
    first = edit(old.address, request)
    assert edit(old.address, request).cached  # shared...
    served = edit(new.address, request)
    assert not served.cached and served.model_hash != first.model_hash  # ...but never across versions


def test_replicas_of_different_precision_never_share_results(make_server, redis_server, guide16):
    """Replica B serves the same model (same weights, same content hash) in fp16, as a
    TensorRT plan would: its ModelInfo says so (read from the config Triton reports; faked
    here, since no TensorRT runs on this machine's CPU)."""
    wrap_a, wrap_b = counting(), counting()
    a = make_server(wrap_model=wrap_a, cache="redis", redis_url=redis_server.url)
    b = make_server(wrap_model=wrap_b, cache="redis", redis_url=redis_server.url)
    half = wrap_b.models["gauss"]
    half.info = dataclasses.replace(half.info, precision="fp16")
    assert half.info.content_hash == a.service.registry.get("gauss").info.content_hash
    request = build_request(png(guide16), t0=0.5, steps=10, seed=1)
    edit(a.address, request)
    assert edit(a.address, request).cached
    assert not edit(b.address, request).cached and half.calls == 10  # an fp32 result never answers fp16
    assert edit(b.address, request).cached and half.calls == 10  # but fp16 replicas share theirs


# --- request_id -----------------------------------------------------------------------------------

def test_a_repeated_request_id_returns_the_first_response_even_unseeded(cached_server, guide16):
    srv, models = cached_server()
    request = build_request(png(guide16), t0=0.5, steps=10, num_samples=2, request_id="retry-1")
    first = edit(srv.address, request)
    again = edit(srv.address, request)
    assert not first.cached and again.cached and again.request_id == "retry-1"
    assert images(again) == images(first) and [i.seed for i in again.images] == [i.seed for i in first.images]
    assert models["gauss"].calls == 10
    other = edit(srv.address, build_request(png(guide16), t0=0.5, steps=10, num_samples=2, request_id="retry-2"))
    assert not other.cached and images(other) != images(first)  # a new id, a new random edit
    assert srv.service.cache.stats.request_id_replays == 1


def test_a_request_id_reused_for_a_different_request_is_already_exists(cached_server, guide16):
    srv, models = cached_server()
    edit(srv.address, build_request(png(guide16), t0=0.5, steps=10, seed=1, request_id="order-7"))
    with pytest.raises(grpc.RpcError) as raised:
        edit(srv.address, build_request(png(guide16), t0=0.6, steps=10, seed=1, request_id="order-7"))
    error = raised.value
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and error.details().startswith("request_id: 'order-7'")
    details = rpc_status.from_call(error).details
    info = error_details_pb2.ErrorInfo()
    assert details[0].Unpack(info) and info.reason == "REQUEST_ID_REUSED"
    assert models["gauss"].calls == 10 and srv.service.cache.stats.request_id_conflicts == 1


def test_a_request_id_response_over_the_entry_limit_is_still_kept_for_its_retries(cached_server, guide16):
    srv, models = cached_server(cache_max_entry_bytes=64)  # no response fits: results are not cached
    request = build_request(png(guide16), t0=0.5, steps=10, num_samples=2, request_id="large-1")  # unseeded
    first = edit(srv.address, request)
    again = edit(srv.address, request)
    assert again.cached and images(again) == images(first) and models["gauss"].calls == 10
    stats = srv.service.cache.stats
    assert stats.request_id_replays == 1 and stats.request_id_unrecorded == 0


def assert_request_id_reused(raised) -> None:
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS, raised.value
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(raised.value).details[0].Unpack(info) and info.reason == "REQUEST_ID_REUSED"


def test_a_request_id_reused_with_another_model_is_already_exists_and_keeps_the_first_response(cached_server,
                                                                                              guide16):
    """The stored record belongs to another model: a conflict, never a miss that recomputes and overwrites."""
    srv, models = cached_server()
    original = build_request(png(guide16), t0=0.5, steps=10, num_samples=2, request_id="job-1")  # unseeded
    first = edit(srv.address, original)
    with pytest.raises(grpc.RpcError) as raised:
        edit(srv.address, build_request(png(guide16), t0=0.5, steps=10, num_samples=2, model="gauss-ve",
                                        request_id="job-1"))
    assert_request_id_reused(raised)
    assert models["gauss-ve"].calls == 0, "the conflicting request ran the loop"
    again = edit(srv.address, original)
    assert again.cached and images(again) == images(first), "the retry of the original got a different image"
    assert models["gauss"].calls == 10 and srv.service.cache.stats.request_id_conflicts == 1


def test_a_request_id_sent_to_a_replica_with_an_updated_model_is_already_exists(make_server, redis_server, tmp_path,
                                                                                guide16):
    """Two replicas share Redis; the second serves a retrained "gauss" (same name, new content hash)."""
    retrained = tmp_path / "repository"
    write_model(retrained, "gauss", gaussian_model(VP, 0.3, 0.5).SerializeToString(),
                model_parameters(VP, 16, 16, 1, default_steps=20, description="retrained"))
    old_wrap, new_wrap = counting(), counting()
    old = make_server(wrap_model=old_wrap, cache="redis", redis_url=redis_server.url)
    new = make_server(wrap_model=new_wrap, cache="redis", redis_url=redis_server.url, model_repository=retrained)
    request = build_request(png(guide16), t0=0.5, steps=10, request_id="job-2")  # unseeded
    first = edit(old.address, request)
    with pytest.raises(grpc.RpcError) as raised:
        edit(new.address, request)
    assert_request_id_reused(raised)
    assert new_wrap.models["gauss"].calls == 0 and new.service.cache.stats.request_id_conflicts == 1
    again = edit(old.address, request)
    assert again.cached and images(again) == images(first) and old_wrap.models["gauss"].calls == 10


def test_a_seeded_request_with_a_request_id_is_also_a_cache_hit_for_other_ids(cached_server, guide16):
    srv, models = cached_server()
    first = edit(srv.address, build_request(png(guide16), t0=0.5, steps=10, seed=2, request_id="a"))
    second = edit(srv.address, build_request(png(guide16), t0=0.5, steps=10, seed=2, request_id="b"))
    assert second.cached and second.request_id == "b" and images(second) == images(first) and models["gauss"].calls == 10


# --- what Redis holds -------------------------------------------------------------------------------

def test_every_redis_key_has_a_ttl_and_no_value_is_a_pickle(make_server, redis_server, guide16, mask16):
    wrap = counting()
    srv = make_server(wrap_model=wrap, cache="redis", redis_url=redis_server.url, cache_ttl_seconds=600)
    requests = [
        build_request(png(guide16), t0=0.5, steps=5, seed=1),
        build_request(png(guide16), mask=png(mask16), t0=0.5, steps=5, seed=1, npy=True, num_samples=3),
        build_request(png(guide16), t0=0.5, steps=5, request_id="unseeded"),
        build_request(png(guide16), t0=0.5, steps=5, seed=8, request_id="seeded"),
    ]
    for request in requests:
        edit(srv.address, request)
    wrap.models["gauss"].delay = 0.01  # a slow edit, to catch its single-flight lock in Redis
    slow = threading.Thread(target=edit, args=(srv.address, build_request(png(guide16), t0=0.5, steps=100, seed=3)))
    slow.start()
    with redis_server.client() as client:
        wait_for(lambda: any(b":lock:" in k for k in client.keys("*")), 10, what="a lock")
        locked = [k for k in client.keys("*") if b":lock:" in k]
        assert all(0 < client.pttl(k) <= srv.settings.cache_lock_seconds * 1000 for k in locked)
        slow.join(30)
        everything = client.keys("*")
        # the job queue (Redis Streams, created at start-up) lives apart, under its own prefix
        keys = [k for k in everything if not k.startswith(srv.settings.job_key_prefix.encode() + b":")]
        assert all(k.startswith(b"sdedit:") for k in keys), everything
        kinds = {k.decode().split(":")[2] for k in keys}
        assert kinds == {"result", "request"}, kinds  # locks released; request ids apart from results
        assert all(k.startswith(b"sdedit:v2:") for k in keys)
        info = srv.service.registry.get("gauss").info
        for key in keys:
            assert 0 < client.pttl(key) <= 600_000, f"{key!r} has no TTL"
            value = client.get(key)
            assert value.startswith(MAGIC) and value[:1] != b"\x80"  # not a pickle (protocol 2+ starts with 0x80)
            with pytest.raises(pickle.UnpicklingError):
                pickle.loads(value)
            # every byte accounted for: the JSON header, then PNG or .npy files and nothing else
            entry = decode_entry(value, info)
            for image in entry.outcome.images:
                assert image.data.startswith(PNG_SIGNATURE if image.media_type == "image/png" else NPY_SIGNATURE)
                if image.media_type != "image/png":
                    np.load(io.BytesIO(image.data), allow_pickle=False)


# --- failing open -------------------------------------------------------------------------------------

def test_redis_killed_under_load_fails_no_edit_and_caching_resumes_when_it_returns(make_server, redis_server,
                                                                                   guide16, caplog):
    srv = make_server(cache="redis", redis_url=redis_server.url, max_active_edits=2)
    cache = srv.service.cache
    done: list = []
    errors: list = []

    def one(i: int) -> None:
        request = build_request(png(guide16), t0=0.5, steps=4, seed=i % 40)  # repeats: hits before the kill
        try:
            done.append(edit(srv.address, request, timeout=60))
        except grpc.RpcError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        wait_for(lambda: len(done) >= 60, 60, what="60 edits")
        assert cache.stats.hits > 0 and cache.stats.available
        redis_server.kill()
        for future in futures:
            future.result()
    assert errors == [] and len(done) == 200
    assert cache.stats.errors > 0 and not cache.stats.available
    assert health_status(srv.address) == health_pb2.HealthCheckResponse.SERVING
    warnings = [r for r in caplog.records if "result cache unavailable" in r.getMessage()]
    assert len(warnings) == 1, "errors are logged once per interval, not once per edit"

    redis_server.start()  # same port, empty
    restarted = time.monotonic()
    probe = build_request(png(guide16), t0=0.5, steps=4, seed=1000)
    while not edit(srv.address, probe).cached:
        assert time.monotonic() - restarted < 10, "no cache hit within 10 s of Redis coming back"
        time.sleep(0.1)
    assert cache.stats.available and "caching resumed" in caplog.text


def test_a_hung_redis_costs_a_few_bounded_waits_then_is_skipped(make_server, redis_server, guide16):
    srv = make_server(cache="redis", redis_url=redis_server.url, redis_timeout_seconds=0.2, cache_retry_seconds=60)
    cache = srv.service.cache
    edit(srv.address, build_request(png(guide16), t0=0.5, steps=2, seed=1))
    redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        for seed in range(2, 22):
            assert not edit(srv.address, build_request(png(guide16), t0=0.5, steps=2, seed=seed)).cached
        # the first timeout opened the breaker: no other call waited for Redis at all
        assert cache.stats.errors == 1 and cache.stats.skipped > 20 and not cache.stats.available
    finally:
        redis_server.resume()


def test_an_unreachable_redis_at_start_up_is_not_fatal_and_is_used_once_it_answers(make_server, guide16, tmp_path):
    later = RedisServer(tmp_path)  # a free port, nothing listening yet
    srv = make_server(cache="redis", redis_url=later.url, cache_retry_seconds=0.2)
    assert health_status(srv.address) == health_pb2.HealthCheckResponse.SERVING
    request = build_request(png(guide16), t0=0.5, steps=2, seed=1)
    assert not edit(srv.address, request).cached
    later.start()
    try:
        wait_for(lambda: edit(srv.address, request).cached, 10, interval=0.1, what="a cache hit")
    finally:
        later.stop()


# --- TLS and a password, through the URL ------------------------------------------------------------------

def test_redis_over_tls_with_a_password_in_the_url(make_server, tmp_path, guide16):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    tls = RedisServer(tmp_path, password="s3cret", tls_cert=cert, tls_key=key).start()
    try:
        url = tls.url
        assert url.startswith("rediss://:s3cret@")
        srv = make_server(cache="redis", redis_url=url)
        request = build_request(png(guide16), t0=0.5, steps=3, seed=1)
        edit(srv.address, request)
        assert edit(srv.address, request).cached
        wrong = make_server(cache="redis", redis_url=url.replace("s3cret", "wrong"))
        assert not edit(wrong.address, request).cached  # refused by Redis: runs uncached, never fails
        assert wrong.service.cache.stats.errors > 0
        assert "s3cret" not in srv.settings.describe()
    finally:
        tls.stop()


def test_redis_password_from_its_own_setting(make_server, tmp_path, guide16):
    """Kubernetes passes the password from a Secret as SDEDIT_REDIS_PASSWORD: no URL escaping."""
    secured = RedisServer(tmp_path, password="p@ss:/word%").start()  # characters a URL would need escaped
    try:
        srv = make_server(cache="redis", redis_url=f"redis://127.0.0.1:{secured.port}/0", redis_password=secured.password)
        request = build_request(png(guide16), t0=0.5, steps=3, seed=1)
        edit(srv.address, request)
        assert edit(srv.address, request).cached and srv.service.cache.stats.errors == 0
        assert "p@ss" not in srv.settings.describe()
        anonymous = make_server(cache="redis", redis_url=f"redis://127.0.0.1:{secured.port}/0")
        assert not edit(anonymous.address, request).cached  # refused without the password: runs uncached
        assert anonymous.service.cache.stats.errors > 0
    finally:
        secured.stop()
