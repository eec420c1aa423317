"""Jobs: SubmitEdit, GetJob, WatchJob, CancelJob, ListJobs, in memory (in process) and on a
real redis-server shared by `sdedit serve` processes, one of them killed mid-job."""

from __future__ import annotations

import itertools
import re

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.client import Client, build_request
from service.client.connection import Connection
from service.testing.servers import wait_for
from tests.helpers import TOKEN_A, TOKEN_B, get_job, png, write_tokens
from tests.models_for_tests import counting

JOB_FLAGS = ("--job-poll-seconds", "0.1")


def guide(size: int, seed: int = 1) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def long_request(seed: int | None = 21, size: int = 64, steps: int = 1000, repeats: int = 2) -> pb.EditRequest:
    return build_request(guide(size, seed or 0), t0=1.0, steps=steps, repeats=repeats, seed=seed)


def wait_state(client: Client, job_id: str, states, timeout: float = 60) -> pb.Job:
    wait_for(lambda: get_job(client, job_id).state in states, timeout, 0.05, f"job {job_id} in {states}")
    return get_job(client, job_id)


# --- in memory, in process ----------------------------------------------------------------

def test_a_job_runs_to_the_result_a_direct_edit_gives(make_server, guide16, mask16):
    srv = make_server(job_poll_seconds=0.1)
    request = build_request(png(guide16), mask=png(mask16), t0=0.6, steps=12, seed=9, num_samples=2)
    with Client(srv.address) as client:
        assert client.stub.ListModels(pb.ListModelsRequest()).jobs == "memory"
        job = client.stub.SubmitEdit(request)
        assert job.state == pb.JOB_STATE_QUEUED and len(job.id) >= 32 and job.create_time.seconds > 0
        events = list(client.stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=30))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds == ["progress"] * 12 + ["result"]
        assert [e.sequence for e in events] == list(range(1, 14))
        done = get_job(client, job.id)
        assert done.state == pb.JOB_STATE_SUCCEEDED and done.attempts == 1 and done.progress.step == 12
        assert done.end_time.ToNanoseconds() >= done.start_time.ToNanoseconds() >= done.create_time.ToNanoseconds()
        assert done.expire_time.seconds - done.end_time.seconds == 86400
        assert done.result == events[-1].result
    metrics = srv.running.metrics.registry
    assert metrics.get_sample_value("sdedit_jobs_submitted_total") == 1
    assert metrics.get_sample_value("sdedit_job_runs_total", {"kind": "first"}) == 1
    assert metrics.get_sample_value("sdedit_jobs_ended_total", {"state": "succeeded"}) == 1
    assert metrics.get_sample_value("sdedit_job_wait_seconds_count") == 1
    direct = make_server(cache="none")  # an independent run: no cache to answer from
    with Client(direct.address) as client:
        assert [i.data for i in client.edit(request).images] == [i.data for i in done.result.images]


def test_jobs_are_listed_newest_first_in_pages(make_server, guide16):
    srv = make_server(job_poll_seconds=0.1)
    with Client(srv.address) as client:
        ids = [client.stub.SubmitEdit(build_request(png(guide16), t0=0.3, steps=2, seed=i)).id for i in range(5)]
        first = client.stub.ListJobs(pb.ListJobsRequest(page_size=3))
        second = client.stub.ListJobs(pb.ListJobsRequest(page_size=3, page_token=first.next_page_token))
        assert [j.id for j in first.jobs] + [j.id for j in second.jobs] == ids[::-1]
        assert second.next_page_token == "" and not first.jobs[0].HasField("result")
        with pytest.raises(grpc.RpcError) as info:
            client.stub.ListJobs(pb.ListJobsRequest(page_token="x"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_jobs_and_bad_requests(make_server, guide16):
    srv = make_server()
    with Client(srv.address) as client:
        for call, message in ((client.stub.GetJob, pb.GetJobRequest(id="nope")),
                              (client.stub.CancelJob, pb.CancelJobRequest(id="nope"))):
            with pytest.raises(grpc.RpcError) as info:
                call(message)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            next(iter(client.stub.WatchJob(pb.WatchJobRequest(id=""))))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:  # refused at once, never queued
            client.stub.SubmitEdit(build_request(png(guide16), t0=1.5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "t0" in info.value.details()
        assert client.stub.ListJobs(pb.ListJobsRequest()).jobs == []


def test_watch_resumes_after_a_disconnect_without_losing_the_result(make_server):
    srv = make_server(job_poll_seconds=0.1)
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(long_request(steps=400, repeats=1))
        stream = client.stub.WatchJob(pb.WatchJobRequest(id=job.id))
        seen = [next(stream).sequence for _ in range(3)]
        stream.cancel()  # the client goes away mid-job
        rest = list(client.stub.WatchJob(pb.WatchJobRequest(id=job.id, after_sequence=seen[-1]), timeout=60))
        assert rest[0].sequence == seen[-1] + 1 and rest[-1].WhichOneof("event") == "result"
        assert all(a.sequence < b.sequence for a, b in itertools.pairwise(rest))
        # after the end: the terminal event is sent again, whatever the cursor
        again = list(client.stub.WatchJob(pb.WatchJobRequest(id=job.id, after_sequence=rest[-1].sequence), timeout=10))
        assert [e.WhichOneof("event") for e in again] == ["result"] and again[0].result == rest[-1].result


def test_cancel_stops_a_running_job_and_its_watchers_get_cancelled(make_server):
    srv = make_server(job_poll_seconds=0.1)
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(long_request(size=128, steps=1000, repeats=10))
        wait_state(client, job.id, {pb.JOB_STATE_RUNNING})
        cancelled = client.stub.CancelJob(pb.CancelJobRequest(id=job.id))
        assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.error.code == code_pb2.CANCELLED
        with pytest.raises(grpc.RpcError) as info:
            list(client.stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=10))
        assert info.value.code() == grpc.StatusCode.CANCELLED
        wait_for(lambda: srv.service.admission.in_flight == 0, 10, what="the cancelled edit left")
        assert client.stub.CancelJob(pb.CancelJobRequest(id=job.id)).state == pb.JOB_STATE_CANCELLED  # unchanged
    ended = srv.running.metrics.registry.get_sample_value
    assert ended("sdedit_jobs_ended_total", {"state": "cancelled"}) == 1  # once, though cancelled twice
    assert ended("sdedit_jobs_ended_total", {"state": "succeeded"}) == 0  # shown from the start, at 0


def test_an_ended_job_s_request_goes_at_once_and_its_record_after_the_ttl_without_a_submit(make_server, guide16):
    """In memory: the stored request goes when the job ends; the record, result and events go
    once the TTL has passed, purged by the store's own timer (no later submit needed)."""
    srv = make_server(job_poll_seconds=0.1, job_ttl_seconds=1.0)
    store = srv.running.jobs.store
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(build_request(png(guide16), t0=0.5, steps=2, seed=3))
        assert store._requests.keys() == {job.id}
        wait_state(client, job.id, {pb.JOB_STATE_SUCCEEDED})
        assert job.id not in store._requests and job.id in store._results
        wait_for(lambda: not store._records and not store._results and not store._events, 20, 0.05,
                 "the ended job purged without a new submit")


def test_a_job_with_bytes_after_its_image_s_end_is_refused_and_nothing_is_kept(make_server, guide16):
    """Validation reads each PNG to its end (IEND): padding after it, which a
    job would otherwise keep for a day, is INVALID_ARGUMENT naming the field."""
    srv = make_server(job_poll_seconds=0.1)
    with Client(srv.address) as client:
        for fields, field in ((dict(image=png(guide16) + b"\x00" * (1 << 20)), "image"),
                              (dict(image=png(guide16), mask=png(np.full((16, 16), 255, np.uint8)) + b"x"), "mask")):
            with pytest.raises(grpc.RpcError) as raised:
                client.stub.SubmitEdit(pb.EditRequest(t0=0.5, steps=2, **fields))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details().startswith(f"{field}: has ") and "after the end of the PNG" in raised.value.details()
    assert not srv.running.jobs.store._records


def test_higher_priority_jobs_run_first(make_server, guide16):
    srv = make_server(job_workers=1, job_poll_seconds=0.1)
    with Client(srv.address) as client:
        blocker = client.stub.SubmitEdit(long_request(steps=1000, repeats=2))
        wait_state(client, blocker.id, {pb.JOB_STATE_RUNNING})
        ids = {}
        for priority in (-1, 0, 5):
            request = build_request(png(guide16), t0=0.3, steps=2, seed=priority + 10)
            request.job.priority = priority
            ids[priority] = client.stub.SubmitEdit(request).id
        jobs = {p: wait_state(client, i, {pb.JOB_STATE_SUCCEEDED}) for p, i in ids.items()}
        starts = {p: j.start_time.ToNanoseconds() for p, j in jobs.items()}
        assert starts[5] < starts[0] < starts[-1] and jobs[5].priority == 5


# --- on Redis, across processes -------------------------------------------------------------

RUNNING_LINE = re.compile(r"job (\S{8}) running")


@pytest.mark.e2e
def test_a_killed_replica_s_jobs_are_reclaimed_and_every_job_survives_a_restart(serve, redis_server, make_server):
    flags = ("--cache", "redis", "--redis-url", redis_server.url, "--job-lease-seconds", "2", *JOB_FLAGS)
    doomed, survivor = serve(*flags), serve(*flags)
    # 20 jobs (the acceptance): 3 long ones first, so that the doomed replica is mid-job
    # when it is killed, then 16 short seeded ones and an unseeded one (unseeded jobs run too)
    requests = [long_request(seed=100 + i, size=64, steps=400, repeats=1) for i in range(3)]
    requests += [long_request(seed=200 + i, size=32, steps=60, repeats=1) for i in range(16)]
    requests.append(long_request(seed=None, size=16, steps=50, repeats=1))
    assert len(requests) == 20
    with Client(doomed.address) as client:
        assert client.stub.ListModels(pb.ListModelsRequest()).jobs == "redis"
        ids = [client.stub.SubmitEdit(r).id for r in requests]
    wait_for(lambda: RUNNING_LINE.search(doomed.output()), 60, 0.02, "the doomed replica running a job")
    doomed.process.kill()  # SIGKILL mid-job: its entries stay pending in the group
    doomed.process.wait(10)
    taken = set(RUNNING_LINE.findall(doomed.output()))
    with Client(survivor.address) as client:
        jobs = [wait_state(client, i, {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED}, 180) for i in ids]
    assert [j.state for j in jobs] == [pb.JOB_STATE_SUCCEEDED] * len(ids), [j.error for j in jobs]
    reclaimed = [j for j in jobs if j.id[:8] in taken and j.attempts == 2]
    assert reclaimed, "no job of the killed replica was run again"
    assert "reclaimed" in survivor.output()

    direct = make_server(cache="none")  # an independent run of each seeded request
    with Client(direct.address) as client:
        for request, job in zip(requests[:-1], jobs):
            assert [i.data for i in client.edit(request, timeout=120).images] == [i.data for i in job.result.images]

    survivor.stop()  # every replica gone; a new one still answers within the TTL
    fresh = serve(*flags)
    with Client(fresh.address) as client:
        assert [get_job(client, i) for i in ids] == jobs
        listed = client.stub.ListJobs(pb.ListJobsRequest(page_size=100)).jobs
        assert {j.id for j in listed} == set(ids)
    with redis_server.client() as redis:
        for lane in ("high", "normal", "low"):
            assert redis.xlen(f"sdedit-jobs:queue:{lane}") == 0  # ended jobs' entries are gone
            assert redis.xpending(f"sdedit-jobs:queue:{lane}", "workers")["pending"] == 0
        assert all(0 < redis.pttl(f"sdedit-jobs:job:{i}") <= 86400_000 for i in ids)


@pytest.mark.e2e
def test_a_job_reclaimed_from_a_killed_replica_does_not_wait_behind_its_dead_lock(serve, redis_server):
    """The killed replica held the job's single-flight lock in Redis; it stops renewing it, so
    the lock is gone within --cache-lock-seconds and the reclaimed job runs at once."""
    import time

    lease = 3.0
    flags = ("--cache", "redis", "--redis-url", redis_server.url, "--job-lease-seconds", str(lease), *JOB_FLAGS)
    doomed = serve(*flags)
    with Client(doomed.address) as client:
        job_id = client.stub.SubmitEdit(long_request(seed=31, size=64, steps=400, repeats=1)).id
    with redis_server.client() as redis:
        wait_for(lambda: redis.keys("sdedit:v2:lock:*"), 60, 0.02, "the doomed replica holding the job's lock")
        doomed.process.kill()  # SIGKILL mid-job: its job stays pending, its lock stays in Redis
        killed = time.monotonic()
        doomed.process.wait(10)
        [lock] = redis.keys("sdedit:v2:lock:*")
        left_ms = redis.pttl(lock)
    survivor = serve(*flags)
    with Client(survivor.address) as client:
        # the lease, the run itself (about a second) and a few seconds' slack: not the old 120 s lock
        job = wait_state(client, job_id, {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED}, lease + 15)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.attempts == 2, job.error
    assert 0 < left_ms <= 6000, "a dead replica's lock outlives it by at most --cache-lock-seconds"
    assert time.monotonic() - killed < lease + 15
    assert "reclaimed" in survivor.output()


@pytest.mark.e2e
def test_jobs_queued_while_no_replica_runs_are_run_by_the_next_one(serve, redis_server):
    flags = ("--cache", "redis", "--redis-url", redis_server.url, *JOB_FLAGS)
    first = serve(*flags, "--job-workers", "1")
    with Client(first.address) as client:
        ids = [client.stub.SubmitEdit(long_request(seed=200 + i, size=32, steps=200, repeats=1)).id for i in range(3)]
    first.stop()  # SIGTERM at once: what it had not run stays queued in Redis
    second = serve(*flags)
    with Client(second.address) as client:
        jobs = [wait_state(client, i, {pb.JOB_STATE_SUCCEEDED}, 120) for i in ids]
    assert all(len(j.result.images) == 1 for j in jobs)


def test_consumers_of_gone_replicas_are_forgotten_but_not_those_with_entries(redis_server):
    """Every replica start adds a consumer to the group; a sweep drops the idle ones that hold
    nothing and leaves a consumer whose entries another replica has not reclaimed yet."""
    import asyncio
    import time

    from service.jobs.redis import GROUP, RedisJobStore

    async def scenario() -> tuple[int, set[str]]:
        store = RedisJobStore(redis_server.url, 2.0, 4, prefix="sweep")
        await store.open()
        queue = store._queue("normal")
        redis = store._redis
        for job in ("j1", "j2", "j3"):
            await redis.xadd(queue, {"id": job})
        await redis.xreadgroup(GROUP, "dead-holding", {queue: ">"}, count=1)  # holds j1, pending
        [[_, [(entry, _)]]] = await redis.xreadgroup(GROUP, "dead-empty", {queue: ">"}, count=1)
        await redis.xack(queue, GROUP, entry)  # ran j2 to its end, then its replica went away
        await redis.xreadgroup(GROUP, "me", {queue: ">"}, count=1)
        time.sleep(0.05)
        dropped = await store.forget_dead_consumers("me", idle_seconds=0.01)
        left = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in await redis.xinfo_consumers(queue, GROUP)}
        await store.close()
        return dropped, left

    dropped, left = asyncio.run(scenario())
    assert dropped == 1 and left == {"dead-holding", "me"}


def test_the_owner_index_on_redis_drops_expired_jobs_on_submit(redis_server):
    """Records expire with their TTL; their entries in the owner's index go at the next submit,
    not only when ListJobs reads them: 40 expired and 7 live jobs leave 7 entries."""
    import asyncio
    import time

    from service.jobs.records import JobRecord
    from service.jobs.redis import RedisJobStore

    async def scenario() -> tuple[int, int, list[str]]:
        store = RedisJobStore(redis_server.url, 2.0, 4, prefix="trim")
        await store.open()
        for n in range(40):
            await store.submit(JobRecord(f"old{n}", owner="t", created=time.time()), b"x", 1.0)
        await store.submit(JobRecord("new0", owner="t", created=time.time()), b"x", 60.0)  # the index lives on
        while await store._redis.exists(*[store._job(f"old{n}") for n in range(40)]):
            await asyncio.sleep(0.02)  # waiting on the condition: every old record has expired
        before = await store._redis.zcard(store._owner("t"))
        for n in range(1, 7):
            await store.submit(JobRecord(f"new{n}", owner="t", created=time.time()), b"x", 60.0)
        after = await store._redis.zcard(store._owner("t"))
        listed, _ = await store.list("t", 0, 100)
        await store.close()
        return before, after, [r.id for r in listed]

    before, after, listed = asyncio.run(scenario())
    assert before == 41  # nothing read the index meanwhile
    assert after == 7 and listed == [f"new{n}" for n in reversed(range(7))]


# --- a tenant's max_in_flight bounds its running jobs -------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_tenant_s_running_jobs_hold_its_max_in_flight_and_its_waiting_jobs_stay_queued(
        make_server, tmp_path, guide16, request, store):
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A, "max_in_flight": 1},
                                                     {"name": "b", "token": TOKEN_B}])
    where = {"cache": "none"} if store == "memory" else {
        "cache": "redis", "redis_url": request.getfixturevalue("redis_server").url}
    srv = make_server(wrap_model=counting(0.01), auth_tokens_file=str(tokens), job_poll_seconds=0.1, job_workers=3,
                      quota_lease_seconds=0.5, **where)  # a run outlives its quota lease: it renews it
    with Client(Connection(srv.address, token=TOKEN_A)) as a, Client(Connection(srv.address, token=TOKEN_B)) as b:
        assert a.stub.ListModels(pb.ListModelsRequest()).jobs == store
        ids = [a.stub.SubmitEdit(long_request(seed=i, steps=150, repeats=1), timeout=10).id for i in range(3)]
        wait_for(lambda: any(get_job(a, job_id).state == pb.JOB_STATE_RUNNING for job_id in ids), 30, 0.02,
                 "one of tenant a's jobs running")
        jobs = [get_job(a, job_id) for job_id in ids]
        running = [job for job in jobs if job.state == pb.JOB_STATE_RUNNING]
        assert len(running) == 1 and all(job.state == pb.JOB_STATE_QUEUED for job in jobs if job not in running)
        wait_for(lambda: get_job(a, running[0].id).progress.step >= 80, 30, 0.02, "the job past its first quota lease")
        with pytest.raises(grpc.RpcError) as over:  # its running job holds its one place
            a.edit(build_request(png(guide16), t0=0.3, steps=2, seed=1), timeout=30)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_in_flight" in over.value.details()
        other = b.stub.SubmitEdit(build_request(png(guide16), t0=0.3, steps=2, seed=2), timeout=10).id
        wait_state(b, other, {pb.JOB_STATE_SUCCEEDED}, 30)
        assert sum(get_job(a, job_id).state == pb.JOB_STATE_SUCCEEDED for job_id in ids) < 3  # not held back by a
        ended = [wait_state(a, job_id, {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED}) for job_id in ids]
        assert [job.state for job in ended] == [pb.JOB_STATE_SUCCEEDED] * 3
        assert [job.attempts for job in ended] == [1, 1, 1]  # a waiting job is not started, nor failed
        runs = sorted((job.start_time.ToNanoseconds(), job.end_time.ToNanoseconds()) for job in ended)
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs))  # never 2 at once
        a.edit(build_request(png(guide16), t0=0.3, steps=2, seed=1), timeout=30)  # every place released


def test_submit_is_charged_work_only_so_a_tenant_at_its_limit_queues_a_job_that_runs_when_a_place_frees(
        make_server, tmp_path, guide16):
    tokens = write_tokens(tmp_path / "tokens.json", [
        {"name": "a", "token": TOKEN_A, "max_in_flight": 1, "work_per_minute": 400}])
    srv = make_server(wrap_model=counting(0.01), auth_tokens_file=str(tokens), job_poll_seconds=0.1, cache="none")
    with Client(Connection(srv.address, token=TOKEN_A)) as a:
        direct = a.stub.Edit.future(long_request(seed=1, steps=300, repeats=1), timeout=60)  # 300 of 400 work
        wait_for(lambda: srv.running.metrics.registry.get_sample_value("sdedit_edits_in_flight") == 1, 30, 0.02,
                 "the direct edit running")
        job = a.stub.SubmitEdit(long_request(seed=2, steps=60, repeats=1), timeout=10)  # charged 60: 40 left
        assert job.state == pb.JOB_STATE_QUEUED
        assert not direct.done() and get_job(a, job.id).state == pb.JOB_STATE_QUEUED  # waits for the place
        direct.result(60)
        done = wait_state(a, job.id, {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED})
        assert done.state == pb.JOB_STATE_SUCCEEDED and done.attempts == 1  # its run is not charged again
