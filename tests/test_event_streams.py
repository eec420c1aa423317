"""Caps on open job event streams, per tenant and in all (--max-event-streams-per-tenant,
--max-event-streams): HTTP SSE and gRPC WatchJob share them; a slot is freed however a stream
ends (the client gone, the job ended)."""

from __future__ import annotations

import grpc
import pytest
import requests

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client.connection import Connection
from service.testing.servers import wait_for
from tests.helpers import TOKEN_A, TOKEN_B, b64, png, write_tokens
from tests.models_for_tests import counting

A, B = {"Authorization": f"Bearer {TOKEN_A}"}, {"Authorization": f"Bearer {TOKEN_B}"}


def open_stream(srv, job_id: str, headers: dict) -> requests.Response:
    """A job's event stream, its headers read, its body left unread (its own connection)."""
    return requests.Session().get(f"{srv.http_url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=30)


def refused(response: requests.Response, cap: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and cap in error["message"], error
    assert any(d.get("reason") == "TOO_MANY_EVENT_STREAMS" for d in error["details"]), error


@pytest.fixture
def two_jobs(make_server, tmp_path, guide16):
    """A server capped at 3 streams, 2 per tenant, and a long job of tenant a and of tenant b."""
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A}, {"name": "b", "token": TOKEN_B}])
    srv = make_server(auth_tokens_file=str(tokens), wrap_model=counting(0.2), cache="none",
                      max_event_streams=3, max_event_streams_per_tenant=2)
    edit = {"image": b64(png(guide16)), "t0": 0.9, "steps": 200}
    jobs = [requests.post(f"{srv.http_url}/v1/jobs", json=edit, headers=h, timeout=10).json()["id"] for h in (A, B)]
    yield srv, jobs
    for job_id, headers in zip(jobs, (A, B)):
        requests.delete(f"{srv.http_url}/v1/jobs/{job_id}", headers=headers, timeout=10)


def test_event_streams_are_capped_per_tenant_and_in_all_and_a_closed_one_frees_its_slot(two_jobs):
    srv, (job_a, job_b) = two_jobs
    a_streams = [open_stream(srv, job_a, A) for _ in range(2)]
    assert [r.status_code for r in a_streams] == [200, 200]
    refused(open_stream(srv, job_a, A), "--max-event-streams-per-tenant 2")
    with Connection(srv.address).channel() as channel:  # gRPC WatchJob: the same caps
        stub = sdedit_pb2_grpc.ImageEditorStub(channel)
        with pytest.raises(grpc.RpcError) as over:
            next(iter(stub.WatchJob(pb.WatchJobRequest(id=job_a), metadata=[("authorization", A["Authorization"])],
                                    timeout=10)))
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-event-streams-per-tenant 2" in over.value.details()

        b_stream = open_stream(srv, job_b, B)  # another tenant has its own, up to the total
        assert b_stream.status_code == 200
        refused(open_stream(srv, job_b, B), "--max-event-streams 3")
        slots = srv.running.http.calls.streams
        assert (slots.open, slots.of("a"), slots.of("b")) == (3, 2, 1)

        a_streams.pop().close()  # the client goes away: its slot is freed
        wait_for(lambda: slots.open == 2, 10, what="the closed stream's slot freed")
        b_again = open_stream(srv, job_b, B)
        assert b_again.status_code == 200 and slots.of("b") == 2

        b_stream.close()
        wait_for(lambda: slots.open == 2, 10, what="the closed stream's slot freed")
        watch = stub.WatchJob(pb.WatchJobRequest(id=job_a), metadata=[("authorization", A["Authorization"])], timeout=30)
        assert next(iter(watch)).sequence >= 1  # a gRPC stream takes a slot, and frees it when cancelled
        assert slots.of("a") == 2
        refused(open_stream(srv, job_b, B), "--max-event-streams 3")
        watch.cancel()
        wait_for(lambda: slots.open == 2, 10, what="the cancelled WatchJob's slot freed")

    for job_id, headers in ((job_a, A), (job_b, B)):  # the jobs end: their streams end, and free every slot
        assert requests.delete(f"{srv.http_url}/v1/jobs/{job_id}", headers=headers, timeout=10).status_code == 200
    wait_for(lambda: slots.open == 0, 20, what="every stream's slot freed when its job ended")
    assert slots.by_tenant == {}
    a_streams[0].close()
    b_again.close()
