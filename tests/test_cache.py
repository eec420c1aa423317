"""The cache's parts: the byte-bounded LRU, keys, stored values, the breaker, single-flight,
and the Redis store's locks (against a real redis-server)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import pickle
import threading
import time

import numpy as np
import pytest

from service import sde
from service.backends.base import ModelInfo
from service.backends.onnx import OnnxScoreModel
from service.backends.oracle import gaussian_model
from service.backends.registry import load_registry
from service.backends.repository import model_info_from_config, model_parameters, read_config, write_model
from service.backends.variants import PlanProfile, cpu_config, tensorrt_plan_config
from service.cache import ResultCache, request_key
from service.cache.codec import MAGIC, CorruptEntry, Entry, decode_entry, encode_entry
from service.cache.failopen import CircuitBreaker, FailOpen
from service.cache.keys import KeySpace
from service.cache.memory import MemoryStore
from service.cache.redis import RedisStore
from service.cache.stats import CacheStats
from service.cache.store import CacheUnavailable
from service.errors import Cancelled, ModelConfigError, Unavailable
from service.pipeline.plan import prepare_job
from service.requests import EditOutcome, EditRequestData, OutputImage
from service.sde import EditParams
from service.testing.servers import local_settings, wait_for
from tests.helpers import VP, image_bytes, png


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


# --- the in-memory LRU ---------------------------------------------------------------------

def test_memory_cache_never_exceeds_its_byte_bound_even_with_entries_larger_than_it():
    bound = 1000
    store = MemoryStore(bound)
    rng = np.random.default_rng(0)
    present: dict[str, bytes] = {}

    async def exercise() -> None:
        for i in range(2000):
            key = f"k{rng.integers(0, 60)}"
            if rng.random() < 0.3:
                value = await store.get(key)
                assert value == present.get(key)
                continue
            size = int(rng.choice([rng.integers(0, 200), rng.integers(bound - 10, 3 * bound)]))  # some too large
            value = bytes([i % 256]) * size
            before = dict(store._entries)
            stored = await store.set(key, value, ttl_seconds=60)
            present.pop(key, None)
            if MemoryStore.cost(key, value) > bound:
                assert not stored
                # a too-large entry evicts nothing else (only the stale value under its own key)
                assert set(store._entries) == set(before) - {key}
            else:
                assert stored
                present[key] = value
            for gone in set(present) - set(store._entries):
                del present[gone]  # evicted
            assert store.size <= bound
            assert store.size == sum(MemoryStore.cost(k, v) for k, (v, _) in store._entries.items())

    run(exercise())
    assert len(store) > 3  # the bound was used, not emptied


def test_memory_cache_evicts_the_least_recently_used_and_expires_entries():
    clock = Clock()
    store = MemoryStore(MemoryStore.cost("a", b"x" * 100) * 3, clock=clock)

    async def exercise() -> None:
        for key in "abc":
            await store.set(key, b"x" * 100, ttl_seconds=10)
        assert await store.get("a") is not None  # a is now the most recently used
        await store.set("d", b"x" * 100, ttl_seconds=10)
        assert await store.get("b") is None and await store.get("a") is not None
        clock.now += 10
        assert [await store.get(k) for k in "acd"] == [None, None, None]
        assert store.size == 0 and len(store) == 0

    run(exercise())


def test_memory_locks_are_exclusive_token_checked_and_expire():
    clock = Clock()
    store = MemoryStore(100, clock=clock)

    async def exercise() -> None:
        assert await store.acquire_lock("l", "t1", 5)
        assert not await store.acquire_lock("l", "t2", 5)
        assert not await store.release_lock("l", "t2")
        assert await store.release_lock("l", "t1")
        assert await store.acquire_lock("l", "t2", 5)
        clock.now += 5
        assert await store.acquire_lock("l", "t3", 5)  # the dead holder's lock expired
        clock.now += 4
        assert not await store.extend_lock("l", "t2", 5)  # only its holder renews it
        assert await store.extend_lock("l", "t3", 5)
        clock.now += 4
        assert not await store.acquire_lock("l", "t4", 5)  # renewed: still held 8 s after it was taken
        clock.now += 1
        assert not await store.extend_lock("l", "t3", 5)  # expired: lost, not revived
        assert await store.add("r", b"first", 5) == (True, None)
        assert await store.add("r", b"second", 5) == (False, b"first") and await store.get("r") == b"first"

    run(exercise())


# --- keys --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def settings(oracle_repository):
    return local_settings(oracle_repository, default_model="gauss")


@pytest.fixture(scope="module")
def registry(settings):
    registry = load_registry(settings)
    yield registry
    registry.close()


def job_key(registry, settings, info: ModelInfo | None = None, **fields):
    request = dict(image=png(np.arange(256, dtype=np.uint8).reshape(16, 16)), t0=0.5, model="gauss", steps=10, seed=3)
    request.update(fields)
    model = registry.get(request["model"])
    return request_key(prepare_job(EditRequestData(**request), model, settings), info or model.info)


def test_the_key_covers_every_field_that_changes_the_output(registry, settings, monkeypatch):
    def key_of(info: ModelInfo | None = None, **fields) -> str:
        return job_key(registry, settings, info, **fields).fingerprint

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:8] = 255
    other_pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)[::-1].copy()
    base_info = registry.get("gauss").info
    variants = {
        "base": {},
        "image": dict(image=png(other_pixels)),
        "mask": dict(mask=png(mask)),
        "t0": dict(t0=0.6),
        "steps": dict(steps=11),
        "repeats": dict(repeats=2),
        "sampler": dict(sampler="ddim"),
        "spacing": dict(spacing="time_uniform"),
        "eta": dict(sampler="ddim", eta=0.5),
        "num_samples": dict(num_samples=2),
        "output_format": dict(output_format="npy"),
        "seed": dict(seed=4),
        "unseeded": dict(seed=None),
        "model": dict(model="gauss-ve"),
        "model version": dict(info=dataclasses.replace(base_info, content_hash="0" * 64)),
        # an fp16 TensorRT replica and an fp32 ONNX Runtime one make different images
        "precision": dict(info=dataclasses.replace(base_info, precision="fp16")),
    }
    keys = {}
    for name, fields in variants.items():
        fields = dict(fields)
        keys[name] = key_of(fields.pop("info", None), **fields)
    with monkeypatch.context() as patched:  # the SDE code changed its outputs (and bumped its version)
        patched.setattr(sde, "ENGINE_VERSION", sde.ENGINE_VERSION + 1)
        keys["engine version"] = key_of()
    assert len(set(keys.values())) == len(keys), "two different requests share a key"
    # what does not change the output does not change the key
    assert key_of(preview_every=2, request_id="abc") == keys["base"]
    assert key_of(steps=0) == key_of(steps=20)  # steps as used: the model's default_steps
    assert key_of(full_schedule=True, steps=0) == key_of(steps=500, sampler="ddpm", spacing="time_uniform")  # every level
    assert key_of(sampler="dpmpp_2m_sde", spacing="logsnr_uniform") == keys["base"]  # the defaults, named or not
    other_png = image_bytes(np.arange(256, dtype=np.uint8).reshape(16, 16), compress_level=9)
    assert key_of(image=other_png) == keys["base"]  # same pixels, other PNG bytes


def changed(value):
    """Another value of the same type, for a parameter the test does not know by name."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.125  # never the same float
    if isinstance(value, str):
        return value + "-other"
    raise AssertionError(f"teach this test another value of {type(value).__name__} ({value!r})")


def test_every_edit_parameter_is_in_the_key_even_ones_added_later(registry, settings):
    """The key takes EditParams' fields generically: a new field (a sampler option, a level
    spacing) is covered without touching keys.py. Only preview_every is left out: it changes
    the progress events, never the result."""
    model = registry.get("gauss")
    job = prepare_job(EditRequestData(image=png(np.zeros((16, 16), np.uint8)), t0=0.5, steps=10, seed=3), model,
                      settings)
    base = request_key(job, model.info).fingerprint
    for f in dataclasses.fields(EditParams):
        params = dataclasses.replace(job.params, **{f.name: changed(getattr(job.params, f.name))})
        fingerprint = request_key(dataclasses.replace(job, params=params), model.info).fingerprint
        if f.name == "preview_every":
            assert fingerprint == base
        else:
            assert fingerprint != base, f"EditParams.{f.name} does not change the cache key"
    assert request_key(dataclasses.replace(job, params=dataclasses.replace(job.params, t0=0.5 + 2 ** -40)),
                       model.info).fingerprint != base  # floats exactly, not rounded to a decimal


def test_the_backend_precision_comes_from_the_config_triton_serves(tmp_path):
    """fp16 for TensorRT plans (built with --fp16 unless told otherwise) and ONNX Runtime's
    TensorRT accelerator in FP16; fp32 for the CPU variant and ONNX Runtime on its own; an
    explicit `precision` parameter wins. The embedded backend always runs fp32."""
    model_dir = write_model(tmp_path, "m", gaussian_model(VP, 0.25, 0.5).SerializeToString(),
                            model_parameters(VP, 16, 16, 1, default_steps=20, description="m"), tensorrt=True)
    production = read_config(model_dir)

    def precision(config) -> str:
        return model_info_from_config(config, "m", lambda spec, channels: "0" * 64).precision

    plain = read_config(write_model(tmp_path / "plain", "m", gaussian_model(VP, 0.25, 0.5).SerializeToString(),
                                    model_parameters(VP, 16, 16, 1, default_steps=20, description="m")))
    assert precision(production) == "fp16" and precision(plain) == "fp32"
    assert precision(cpu_config(production)) == "fp32"
    assert precision(tensorrt_plan_config(plain, PlanProfile())) == "fp16"
    assert precision(tensorrt_plan_config(plain, PlanProfile(), fp16=False)) == "fp32"
    explicit = tensorrt_plan_config(plain, PlanProfile())
    explicit.parameters["precision"].string_value = "FP32"
    assert precision(explicit) == "fp32"
    explicit.parameters["precision"].string_value = "half-ish"
    with pytest.raises(ModelConfigError, match="precision"):
        precision(explicit)
    assert OnnxScoreModel(model_dir).info.precision == "fp32"  # ONNX Runtime's CPU provider, whatever Triton uses


def test_key_namespaces_keep_results_requests_and_locks_apart():
    keys = KeySpace("app")
    result, request = keys.result("ab" * 32), keys.request("my id")
    assert result.startswith("app:v2:result:") and request.startswith("app:v2:request:")
    assert keys.lock(result).startswith("app:v2:lock:result:") and keys.lock(request).startswith("app:v2:lock:request:")
    assert "my id" not in request  # request ids are hashed: any printable id makes a plain key
    assert keys.is_request(request) and not keys.is_request(result) and not keys.is_request(keys.lock(request))


# --- stored values -------------------------------------------------------------------------------

def outcome(info: ModelInfo, fmt: str = "png", value: int = 1) -> EditOutcome:
    """Two images; `value` tells apart the outcomes of two runs of one unseeded request."""
    if fmt == "png":
        data = [png(np.full((4, 4), v, dtype=np.uint8)) for v in (value, value + 1)]
    else:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((1, 4, 4), np.float32), allow_pickle=False)
        data = [buffer.getvalue()] * 2
    media = "image/png" if fmt == "png" else "application/x-npy"
    return EditOutcome(images=[OutputImage(d, media, 7 + i) for i, d in enumerate(data)], network_calls=20, model=info,
                       steps=20, repeats=1, sampler="ddpm")


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_stored_values_are_json_and_raw_bytes_never_pickle(registry, fmt):
    info = registry.get("gauss").info
    original = outcome(info, fmt)
    value = encode_entry(Entry("f" * 64, original))
    assert value.startswith(MAGIC)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(value)
    decoded = decode_entry(value, info)
    assert decoded.fingerprint == "f" * 64 and decoded.outcome.cached
    assert [i.data for i in decoded.outcome.images] == [i.data for i in original.images]
    assert [(i.media_type, i.seed) for i in decoded.outcome.images] == [(i.media_type, i.seed) for i in original.images]
    assert (decoded.outcome.network_calls, decoded.outcome.steps, decoded.outcome.sampler) == (20, 20, "ddpm")


def test_values_that_are_not_ours_or_for_another_model_version_are_refused(registry):
    info = registry.get("gauss").info
    value = encode_entry(Entry("f" * 64, outcome(info)))
    for bad in (b"", pickle.dumps({"a": 1}), value[:-1], value + b"x", MAGIC + b"\x00\x00\x00\x05{bad}"):
        with pytest.raises(CorruptEntry):
            decode_entry(bad, info)
    updated = dataclasses.replace(info, content_hash="0" * 64)
    with pytest.raises(CorruptEntry, match="model version"):
        decode_entry(value, updated)
    # a request_id record is read whatever model it answered, for its fingerprint to be compared
    assert decode_entry(value, updated, check_model=False).fingerprint == "f" * 64
    with pytest.raises(CorruptEntry):
        decode_entry(value[:-1], updated, check_model=False)


# --- fail-open ---------------------------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_and_probes_once_per_period():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, retry_seconds=2.0, clock=clock)
    assert breaker.allow()
    assert not breaker.record_failure() and not breaker.record_failure()
    assert breaker.record_success() is False  # a success resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.record_failure() and breaker.is_open
    assert not breaker.allow()
    clock.now += 2.0
    assert breaker.allow() and not breaker.allow()  # one probe, the others skip
    breaker.record_failure()
    assert breaker.is_open and not breaker.allow()
    clock.now += 2.0
    assert breaker.allow() and breaker.record_success() and not breaker.is_open and breaker.allow()


def test_fail_open_answers_the_fallback_counts_and_logs_once_per_interval(caplog):
    clock = Clock()
    stats = CacheStats()
    guard = FailOpen(stats, timeout=0.05, retry_seconds=1.0, failure_threshold=2, log_interval=30.0, clock=clock)

    async def down() -> bytes:
        raise CacheUnavailable("connection refused")

    async def hung() -> bytes:
        await asyncio.sleep(10)
        return b"late"

    async def up() -> bytes:
        return b"value"

    async def exercise() -> None:
        assert await guard.call("get", down, None) is None
        assert stats.available  # one fast error: still closed
        assert await guard.call("get", down, None) is None
        assert not stats.available and stats.errors == 2  # the second in a row opened it
        for _ in range(50):
            assert await guard.call("get", up, None) is None  # open: not even tried
        assert stats.skipped == 50
        clock.now += 1.0
        assert await guard.call("get", up, None) == b"value"
        assert stats.available
        assert await guard.call("get", hung, None) is None  # a bounded wait...
        assert not stats.available and stats.errors == 3  # ...that opens the breaker at once

    run(exercise())
    warnings = [r for r in caplog.records if r.name == "service.cache.failopen" and "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "reachable again" in caplog.text


# --- single-flight in one process ------------------------------------------------------------------

def memory_cache(**overrides) -> ResultCache:
    options = dict(ttl_seconds=60, max_entry_bytes=1 << 20, key_prefix="t", lock_seconds=5, timeout=1, retry_seconds=1)
    options.update(overrides)
    return ResultCache(MemoryStore(1 << 20), **options)


def test_identical_concurrent_requests_compute_once_and_a_cancelled_leader_hands_over(registry, settings):
    info = registry.get("gauss").info
    key = job_key(registry, settings)
    calls = []

    async def exercise() -> None:
        cache = memory_cache()
        gate = asyncio.Event()

        async def compute() -> EditOutcome:
            calls.append(1)
            await gate.wait()
            return outcome(info)

        tasks = [asyncio.create_task(cache.run(key, info, compute)) for _ in range(5)]
        await asyncio.sleep(0.05)
        tasks[0].cancel()  # the leader's caller goes away; one of the others takes over
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks[1:])
        assert len(calls) == 2
        assert sum(not r.cached for r in results) == 1
        assert {tuple(i.data for i in r.images) for r in results} == {tuple(i.data for i in outcome(info).images)}
        assert cache.stats.misses == 2 and cache.stats.coalesced == 3
        again = await cache.run(key, info, compute)
        assert again.cached and len(calls) == 2 and cache.stats.hits == 1

    run(exercise())


def test_a_failed_edit_fails_its_waiting_duplicates_and_caches_nothing(registry, settings):
    info = registry.get("gauss").info
    key = job_key(registry, settings)

    async def exercise() -> None:
        cache = memory_cache()

        async def broken() -> EditOutcome:
            await asyncio.sleep(0.05)
            raise Unavailable("backend down")

        results = await asyncio.gather(*(cache.run(key, info, broken) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert cache.stats.stored == 0 and cache.stats.misses == 1

        async def cancelled() -> EditOutcome:
            raise Cancelled("cancelled")

        with pytest.raises(Cancelled):
            await cache.run(key, info, cancelled)

    run(exercise())


def test_responses_over_the_entry_limit_are_not_stored(registry, settings):
    info = registry.get("gauss").info
    key = job_key(registry, settings)

    async def exercise() -> None:
        cache = memory_cache(max_entry_bytes=64)

        async def compute() -> EditOutcome:
            return outcome(info)

        assert not (await cache.run(key, info, compute)).cached
        assert not (await cache.run(key, info, compute)).cached
        assert cache.stats.too_large == 2 and cache.stats.stored == 0

    run(exercise())


def test_request_id_records_are_kept_even_above_the_entry_limit(registry, settings):
    """The entry limit bounds what is worth caching; a request_id record is a promise to the client."""
    info = registry.get("gauss").info
    key = job_key(registry, settings, seed=None, request_id="big")  # unseeded: only the record makes it repeatable
    runs = iter(range(1, 100))

    async def compute() -> EditOutcome:
        return outcome(info, value=next(runs))

    async def exercise() -> None:
        cache = memory_cache(max_entry_bytes=64)
        first = await cache.run(key, info, compute)
        again = await cache.run(key, info, compute)
        assert again.cached and [i.data for i in again.images] == [i.data for i in first.images]
        assert cache.stats.stored == 1 and cache.stats.request_id_unrecorded == 0

    run(exercise())


def test_a_request_id_record_that_cannot_be_kept_is_counted_and_logged(registry, settings, caplog):
    info = registry.get("gauss").info

    async def compute() -> EditOutcome:
        return outcome(info)

    async def exercise() -> None:
        cache = memory_cache(max_entry_bytes=64, max_request_bytes=64)
        for request_id in ("huge-1", "huge-2"):
            key = job_key(registry, settings, seed=None, request_id=request_id)
            assert not (await cache.run(key, info, compute)).cached
        assert cache.stats.request_id_unrecorded == 2 and cache.stats.stored == 0

    run(exercise())
    warnings = [r for r in caplog.records if "request_id" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warnings) == 1, "logged once per interval, not once per edit"
    assert "not kept" in warnings[0].getMessage()


# --- the Redis store ---------------------------------------------------------------------------

def test_redis_locks_set_nx_with_a_ttl_and_release_only_with_their_token(redis_server):
    async def exercise() -> None:
        store = RedisStore(redis_server.url, timeout=1.0, max_connections=4)
        try:
            assert await store.acquire_lock("l", "mine", 30)
            assert not await store.acquire_lock("l", "theirs", 30)
            assert not await store.release_lock("l", "theirs")  # compare-and-delete
            assert await store.exists("l")
            assert await store.release_lock("l", "mine") and not await store.exists("l")
            assert await store.set("k", b"v", 30) and await store.get("k") == b"v"
            assert await store.acquire_lock("renewed", "mine", 0.2)
            assert not await store.extend_lock("renewed", "theirs", 30)  # token-checked PEXPIRE
            assert await store.extend_lock("renewed", "mine", 30)
            await asyncio.sleep(0.3)
            assert await store.exists("renewed")  # past its first TTL
            assert await store.add("record", b"first", 30) == (True, None)  # SET NX ...
            assert await store.add("record", b"second", 30) == (False, b"first")  # ... that answers what is there
            assert await store.get("record") == b"first"
        finally:
            await store.close()

    run(exercise())
    with redis_server.client() as client:
        assert 0 < client.pttl("k") <= 30_000
        assert 20_000 < client.pttl("renewed") <= 30_000 and 0 < client.pttl("record") <= 30_000
        assert not client.exists("theirs")


def test_redis_store_errors_are_cache_unavailable(redis_server):
    redis_server.kill()

    async def exercise() -> None:
        store = RedisStore(redis_server.url, timeout=0.5, max_connections=2)
        try:
            with pytest.raises(CacheUnavailable, match="redis at"):
                await store.get("k")
        finally:
            await store.close()

    run(exercise())


# --- single-flight across replicas (two ResultCaches on one real Redis) ------------------------------

def redis_cache(url: str, **overrides) -> ResultCache:
    options = dict(ttl_seconds=60, max_entry_bytes=1 << 20, key_prefix="t", lock_seconds=5, timeout=1, retry_seconds=1)
    options.update(overrides)
    return ResultCache(RedisStore(url, timeout=1.0, max_connections=4), **options)


def lock_keys(redis_server) -> list[bytes]:
    with redis_server.client() as client:
        return client.keys("t:*:lock:*")


def test_the_lock_is_renewed_while_a_long_edit_runs_so_another_replica_waits_instead_of_computing(
        registry, settings, redis_server):
    """An edit lasting over 3 lock lifetimes: the duplicate on the other replica follows it to the end."""
    info = registry.get("gauss").info
    key = job_key(registry, settings)
    calls = {"a": 0, "b": 0}
    ttl_during_edit: list[int] = []

    async def exercise() -> None:
        a, b = redis_cache(redis_server.url, lock_seconds=0.5), redis_cache(redis_server.url, lock_seconds=0.5)

        async def slow() -> EditOutcome:
            calls["a"] += 1
            await asyncio.sleep(1.6)
            with redis_server.client() as client:  # 1.1 s past the lock's first expiry
                ttl_during_edit.extend(client.pttl(k) for k in client.keys("t:*:lock:*"))
            return outcome(info, value=1)

        async def fast() -> EditOutcome:
            calls["b"] += 1
            return outcome(info, value=2)

        try:
            leader = asyncio.create_task(a.run(key, info, slow))
            await asyncio.sleep(0.1)
            follower = await b.run(key, info, fast)
            led = await leader
        finally:
            await a.close()
            await b.close()
        assert calls == {"a": 1, "b": 0}, "the edit ran on both replicas"
        assert follower.cached and [i.data for i in follower.images] == [i.data for i in led.images]
        assert b.stats.coalesced == 1 and b.stats.misses == 0

    run(exercise())
    assert len(ttl_during_edit) == 1 and 0 < ttl_during_edit[0] <= 500, ttl_during_edit
    assert lock_keys(redis_server) == [], "the lock outlived the edit"


def test_a_request_id_record_is_never_overwritten_by_a_replica_that_stalled_past_its_lock(
        registry, settings, redis_server):
    """Replica A's event loop stalls (a blocking call) longer than the lock lives, so it cannot
    renew it: replica B's retry of the same unseeded request_id computes and answers first.
    When A wakes, it must answer B's response (the one kept), not overwrite it with its own."""
    info = registry.get("gauss").info
    key = job_key(registry, settings, seed=None, request_id="pay-42")
    answers: dict[str, EditOutcome] = {}

    def replica(name: str, value: int, stall: float) -> None:
        async def compute() -> EditOutcome:
            time.sleep(stall)  # blocks this replica's event loop: no renewal can run
            return outcome(info, value=value)

        async def serve() -> None:
            cache = redis_cache(redis_server.url, lock_seconds=0.3)
            try:
                answers[name] = await cache.run(key, info, compute)
            finally:
                await cache.close()

        asyncio.run(serve())

    stalled = threading.Thread(target=replica, args=("a", 1, 1.2))
    stalled.start()
    wait_for(lambda: lock_keys(redis_server) != [], 5, interval=0.005, what="replica A's lock")
    replica("b", 2, 0.0)  # follows A's lock until it expires (0.3 s), then computes
    stalled.join(10)
    assert [i.data for i in answers["b"].images] == [i.data for i in outcome(info, value=2).images]
    assert [i.data for i in answers["a"].images] == [i.data for i in answers["b"].images], \
        "two answers to one request_id"
    assert answers["a"].cached

    async def retry() -> EditOutcome:
        cache = redis_cache(redis_server.url)
        try:
            async def never() -> EditOutcome:
                raise AssertionError("the retry ran the edit")
            return await cache.run(key, info, never)
        finally:
            await cache.close()

    assert [i.data for i in run(retry()).images] == [i.data for i in answers["b"].images]
