"""The one call pipeline (service/pipeline/calls.py): every door plans a request once.

A tenant with a work quota and an in-flight limit is the longest path (authenticate, rights,
plan, webhook check, lease); each door is asked for the same edit, and the planner's own
count must rise by exactly one per request, with the job's worker planning nothing."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from sdedit.v1 import sdedit_pb2 as pb
from service.client import Client, Connection, build_request
from service.pipeline.imaging import encode_png
from service.pipeline.plan import decode_plan, encode_plan
from service.requests import EditRequestData
from service.testing.servers import wait_for

TOKEN = "pipeline-token-0123456789"


@pytest.fixture
def quota_server(make_server, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tenants": [
        {"name": "a", "token": TOKEN, "work_per_minute": 100000, "max_in_flight": 4}]}))
    return make_server(auth_tokens_file=str(tokens), http_port=0)


def planned(srv) -> int:
    return srv.service.planner.plans


def test_each_door_plans_a_request_once(quota_server, guide16):
    srv = quota_server
    request = build_request(encode_png(guide16[:, :, None]), t0=0.4, steps=3, seed=5)
    with Client(Connection(srv.address, token=TOKEN)) as client:
        before = planned(srv)
        client.edit(request, timeout=60)
        assert planned(srv) - before == 1, "Edit"

        before = planned(srv)
        events = list(client.stream_edit(request, timeout=60))
        assert events[-1].WhichOneof("event") == "result"
        assert planned(srv) - before == 1, "StreamEdit"

        before = planned(srv)
        job = client.stub.SubmitEdit(request, timeout=30)
        wait_for(lambda: client.stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10).state
                 == pb.JOB_STATE_SUCCEEDED, 60, what="the job to succeed")
        assert planned(srv) - before == 1, "SubmitEdit and its worker"

    body = {"image": base64.b64encode(request.image).decode(), "t0": 0.4, "steps": 3, "seed": "5"}
    before = planned(srv)
    answer = requests.post(f"{srv.http_url}/v1/edits", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert planned(srv) - before == 1, "POST /v1/edits"


def test_a_refused_request_is_planned_at_most_once_and_never_without_a_token(quota_server, guide16):
    srv = quota_server
    with Client(Connection(srv.address, token="not-a-token")) as stranger:
        before = planned(srv)
        with pytest.raises(Exception, match=r"UNAUTHENTICATED|not valid"):
            stranger.edit(build_request(encode_png(guide16[:, :, None]), t0=0.4, steps=3), timeout=30)
        assert planned(srv) == before  # the token is checked before the request is parsed or planned
    with Client(Connection(srv.address, token=TOKEN)) as client:
        before = planned(srv)
        with pytest.raises(Exception, match="t0"):
            client.edit(build_request(encode_png(guide16[:, :, None]), t0=1.5, steps=3), timeout=30)
        assert planned(srv) - before == 1


def test_a_stored_plan_decodes_to_the_plan_that_was_made(server, guide16):
    planner = server.service.planner
    plan = planner.plan(EditRequestData(image=encode_png(guide16[:, :, None]), t0=0.35, steps=4, seed=9, num_samples=2,
                                        mask=encode_png((guide16[:, :, None] > 128).astype("uint8") * 255), sampler="ddim", eta=0.5))
    again = decode_plan(encode_plan(plan), server.service.registry)
    assert again.request == plan.request and again.params == plan.params and again.cost == plan.cost
    assert again.model is plan.model and (again.width, again.height, again.num_samples) == (16, 16, 2)
    assert again.levels.tolist() == plan.levels.tolist() and again.levels.dtype == plan.levels.dtype
    assert again.work == plan.work == 4 * 2
