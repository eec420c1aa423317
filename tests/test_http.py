"""The HTTP/JSON door (docs/http.md) against real in-process servers: the same answers as
gRPC, job events as Server-Sent Events, the error model, auth, limits, health and TLS."""

from __future__ import annotations

import base64
import json
import threading
import time

import grpc
import pytest
import requests
from google.protobuf import json_format

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client import build_request
from service.client.connection import Connection
from service.testing.servers import wait_for
from tests.certs import ServedFiles, serial_of
from tests.helpers import TOKEN_A, TOKEN_B, b64, error_of, png, served_serial, two_tenants, violated_field, write_tokens
from tests.models_for_tests import counting


def grpc_edit(srv, request: pb.EditRequest) -> pb.EditResponse:
    with Connection(srv.address).channel() as channel:
        return sdedit_pb2_grpc.ImageEditorStub(channel).Edit(request, timeout=30)


def read_events(response: requests.Response) -> list[dict]:
    """SSE messages as dicts: id, event, data (parsed); comments are kept as {"comment": ...}."""
    messages, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if current:
                messages.append(current)
            current = {}
        elif line.startswith(":"):
            messages.append({"comment": line[1:].strip()})
        else:
            key, _, value = line.partition(": ")
            current[key] = json.loads(value) if key == "data" else value
    if current:
        messages.append(current)
    return messages


def events(srv, job_id: str, headers: dict | None = None, params: dict | None = None) -> list[dict]:
    with requests.get(f"{srv.http_url}/v1/jobs/{job_id}/events", headers=headers, params=params, stream=True,
                      timeout=60) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return read_events(response)


# --- the same answers as gRPC --------------------------------------------------------------

def test_a_sync_edit_by_json_and_by_multipart_returns_the_bytes_grpc_edit_returns(make_server, guide16, mask16):
    srv = make_server(cache="none")
    request = build_request(png(guide16), mask=png(mask16), t0=0.6, steps=6, seed=42, num_samples=2)
    expected = [image.data for image in grpc_edit(srv, request).images]

    as_json = requests.post(f"{srv.http_url}/v1/edits", json=json_format.MessageToDict(request), timeout=30)
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert [base64.b64decode(image["data"]) for image in body["images"]] == expected
    assert body["images"][0]["seed"] == "42" and body["networkCalls"] == 6 and body["sampler"].startswith("SAMPLER_")

    bare = pb.EditRequest()
    bare.CopyFrom(request)
    bare.ClearField("image")
    bare.ClearField("mask")
    as_parts = requests.post(f"{srv.http_url}/v1/edits", timeout=30, files={
        "request": (None, json.dumps(json_format.MessageToDict(bare, preserving_proto_field_name=True)), "application/json"),
        "image": ("guide.png", png(guide16), "image/png"), "mask": ("mask.png", png(mask16), "image/png")})
    assert as_parts.status_code == 200, as_parts.text
    assert [base64.b64decode(image["data"]) for image in as_parts.json()["images"]] == expected

    only_image = requests.post(f"{srv.http_url}/v1/edits", files={"image": ("g.png", png(guide16))},
                               data={"request": '{"t0": 0.5}'}, timeout=30)
    assert only_image.status_code == 200 and len(only_image.json()["images"]) == 1


def test_models_jobs_listing_and_metrics(server):
    models = requests.get(f"{server.http_url}/v1/models", timeout=10).json()
    assert {"gauss", "mix"} <= {m["name"] for m in models["models"]} and models["jobs"] == "memory"
    assert [m["name"] for m in models["models"] if m.get("isDefault")] == ["gauss"]
    listing = requests.get(f"{server.http_url}/v1/jobs", params={"pageSize": 5}, timeout=10)
    assert listing.status_code == 200 and isinstance(listing.json().get("jobs", []), list)
    registry = server.running.metrics.registry
    assert registry.get_sample_value("sdedit_http_requests_total",
                                     {"method": "GET", "route": "/v1/models", "code": "200"}) >= 1
    assert registry.get_sample_value("sdedit_http_request_seconds_count", {"method": "GET", "route": "/v1/jobs"}) >= 1


# --- jobs and their events -----------------------------------------------------------------

def test_a_job_streams_its_events_in_order_and_resumes_after_the_last_event_seen(make_server, guide16):
    srv = make_server(wrap_model=counting(0.01), cache="none")
    request = build_request(png(guide16), t0=0.6, steps=8, seed=5, preview_every=3)
    submitted = requests.post(f"{srv.http_url}/v1/jobs", json=json_format.MessageToDict(request), timeout=10)
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()
    assert job["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING") and len(job["id"]) >= 32

    everything = [m for m in events(srv, job["id"]) if "comment" not in m]
    sequences = [int(m["id"]) for m in everything]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert [int(m["data"]["sequence"]) for m in everything] == sequences
    kinds = [m["event"] for m in everything]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert set(kinds[:-1]) <= {"progress", "preview"} and "progress" in kinds and "preview" in kinds
    steps = [m["data"]["progress"]["step"] for m in everything if m["event"] == "progress"]
    assert steps == sorted(steps)
    result = everything[-1]["data"]["result"]
    assert base64.b64decode(result["images"][0]["data"]) == grpc_edit(srv, request).images[0].data

    middle = sequences[2]
    resumed = [m for m in events(srv, job["id"], headers={"Last-Event-ID": str(middle)}) if "comment" not in m]
    assert [int(m["id"]) for m in resumed] == [s for s in sequences if s > middle]
    by_query = [m for m in events(srv, job["id"], params={"afterSequence": middle}) if "comment" not in m]
    assert by_query == resumed
    past_the_end = [m for m in events(srv, job["id"], headers={"Last-Event-ID": "99999"}) if "comment" not in m]
    assert [m["event"] for m in past_the_end] == ["result"]  # the end always comes

    done = requests.get(f"{srv.http_url}/v1/jobs/{job['id']}", timeout=10).json()
    assert done["state"] == "JOB_STATE_SUCCEEDED" and done["result"]["images"][0]["data"] == result["images"][0]["data"]
    listed = requests.get(f"{srv.http_url}/v1/jobs", timeout=10).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_delete_cancels_a_running_job_and_its_stream_ends_with_an_error_event(make_server, guide16):
    srv = make_server(wrap_model=counting(0.05), cache="none")
    srv.running.http.keepalive_seconds = 0.1
    request = build_request(png(guide16), t0=0.8, steps=200, seed=1)
    job = requests.post(f"{srv.http_url}/v1/jobs", json=json_format.MessageToDict(request), timeout=10).json()
    url = f"{srv.http_url}/v1/jobs/{job['id']}"
    wait_for(lambda: requests.get(url, timeout=5).json().get("progress", {}).get("step", 0) >= 2, 30, what="running")
    streamed: list[dict] = []
    reader = threading.Thread(target=lambda: streamed.extend(events(srv, job["id"], headers={"Last-Event-ID": "999999"})))
    reader.start()
    time.sleep(1.5)  # the reader waits (its stream opened after FIRST_EVENT_WAIT), kept alive by comments
    cancelled = requests.delete(url, timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "JOB_STATE_CANCELLED"
    assert cancelled.json()["error"]["code"] == grpc.StatusCode.CANCELLED.value[0]
    reader.join(30)
    assert not reader.is_alive()
    assert {"comment": "keep-alive"} in streamed
    last = [m for m in streamed if "comment" not in m][-1]
    assert last["event"] == "error" and "id" not in last
    assert last["data"]["error"]["status"] == "CANCELLED" and last["data"]["error"]["code"] == 499
    assert requests.delete(url, timeout=10).json()["state"] == "JOB_STATE_CANCELLED"  # an ended job stays as it is


def test_unknown_jobs_routes_and_methods_are_404_and_405_in_the_json_error_shape(server):
    for method, path in (("GET", "/v1/jobs/nope"), ("DELETE", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events")):
        error = error_of(requests.request(method, server.http_url + path, timeout=10), 404, "NOT_FOUND")
        assert "nope" in error["message"]
    error_of(requests.get(f"{server.http_url}/v2/everything", timeout=10), 404, "NOT_FOUND")
    wrong = requests.put(f"{server.http_url}/v1/edits", timeout=10)
    error_of(wrong, 405, "UNIMPLEMENTED")
    assert wrong.headers["Allow"] == "POST"
    registry = server.running.metrics.registry
    assert registry.get_sample_value("sdedit_http_requests_total", {"method": "GET", "route": "unmatched", "code": "404"}) >= 1


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (json.dumps({"t0": 0.5, "foo": 1}).encode(), "foo"),
    (json.dumps({"t0": "half"}).encode(), "t0"),
    (json.dumps({"steps": 1.5}).encode(), "steps"),
    (json.dumps({"numSamples": [1]}).encode(), "num_samples"),
    (json.dumps({"sampler": "SAMPLER_NOPE"}).encode(), "sampler"),
    (json.dumps({"job": {"priority": "high"}}).encode(), "job.priority"),
    (json.dumps({"job": {"lane": 1}}).encode(), "job.lane"),
    (json.dumps({"seed": "-1"}).encode(), "seed"),
    ({"t0": 1.5, "image": "GUIDE"}, "t0"),  # parsed, then refused by the service's own validation
])
@pytest.mark.parametrize("path", ["/v1/edits", "/v1/jobs"])
def test_bad_json_unknown_fields_and_wrong_types_are_400_naming_the_field(server, guide16, body, field, path):
    if isinstance(body, dict):
        body = json.dumps({**body, "image": b64(png(guide16))}).encode()
    response = requests.post(server.http_url + path, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    error = error_of(response, 400, "INVALID_ARGUMENT")
    assert violated_field(error) == field and error["message"].startswith(field + ": ")


def test_bad_parts_queries_headers_and_media_types_are_refused_by_name(server, guide16):
    url = f"{server.http_url}/v1/edits"
    error = error_of(requests.post(url, files={"picture": ("g.png", png(guide16))}, timeout=10), 400, "INVALID_ARGUMENT")
    assert violated_field(error) == "picture"
    both = requests.post(url, files={"image": ("g.png", png(guide16)),
                                     "request": (None, json.dumps({"image": b64(png(guide16))}))}, timeout=10)
    assert violated_field(error_of(both, 400, "INVALID_ARGUMENT")) == "image"
    bad_part = requests.post(url, files={"request": (None, "{oops")}, timeout=10)
    assert violated_field(error_of(bad_part, 400, "INVALID_ARGUMENT")) == "request"
    query = requests.get(f"{server.http_url}/v1/jobs", params={"pageSize": "many"}, timeout=10)
    assert violated_field(error_of(query, 400, "INVALID_ARGUMENT")) == "page_size"
    unknown = requests.get(f"{server.http_url}/v1/jobs", params={"colour": "red"}, timeout=10)
    assert violated_field(error_of(unknown, 400, "INVALID_ARGUMENT")) == "colour"
    timeout = requests.post(url, json={"image": b64(png(guide16))}, headers={"Request-Timeout": "soon"}, timeout=10)
    assert violated_field(error_of(timeout, 400, "INVALID_ARGUMENT")) == "Request-Timeout"
    resume = requests.get(f"{server.http_url}/v1/jobs/x/events", headers={"Last-Event-ID": "abc"}, timeout=10)
    assert violated_field(error_of(resume, 400, "INVALID_ARGUMENT")) == "Last-Event-ID"
    text = requests.post(url, data="t0=0.5", headers={"Content-Type": "text/plain"}, timeout=10)
    assert violated_field(error_of(text, 415, "INVALID_ARGUMENT")) == "Content-Type"


def test_a_body_over_max_request_mib_is_413(make_server, guide16):
    srv = make_server(max_request_mib=1)
    big = b64(b"\0" * (1 << 20))
    error_of(requests.post(f"{srv.http_url}/v1/edits", json={"image": big}, timeout=10), 413, "RESOURCE_EXHAUSTED")
    error_of(requests.post(f"{srv.http_url}/v1/jobs", files={"image": ("big.png", b"\0" * (2 << 20))}, timeout=10),
             413, "RESOURCE_EXHAUSTED")
    assert requests.post(f"{srv.http_url}/v1/edits", json={"image": b64(png(guide16)), "t0": 0.5}, timeout=30).status_code == 200


def test_request_timeout_is_the_edits_deadline(make_server, guide16):
    srv = make_server(wrap_model=counting(0.05), cache="none")
    started = time.monotonic()
    response = requests.post(f"{srv.http_url}/v1/edits", json={"image": b64(png(guide16)), "t0": 0.8, "steps": 200},
                             headers={"Request-Timeout": "0.5"}, timeout=30)
    error_of(response, 504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 5


# --- auth ----------------------------------------------------------------------------------

def test_tokens_rights_and_models_are_the_grpc_ones(make_server, tmp_path, guide16):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")))
    edit = {"image": b64(png(guide16)), "t0": 0.3, "steps": 2, "seed": "1"}
    url = srv.http_url
    error_of(requests.post(f"{url}/v1/edits", json=edit, timeout=10), 401, "UNAUTHENTICATED")
    error_of(requests.get(f"{url}/v1/models", timeout=10), 401, "UNAUTHENTICATED")
    wrong = {"Authorization": "Bearer tok-a-" + "8" * 32}
    error_of(requests.post(f"{url}/v1/edits", json=edit, headers=wrong, timeout=10), 401, "UNAUTHENTICATED")
    a, b = {"Authorization": f"Bearer {TOKEN_A}"}, {"Authorization": f"Bearer {TOKEN_B}"}
    assert requests.post(f"{url}/v1/edits", json=edit, headers=a, timeout=30).status_code == 200
    job = requests.post(f"{url}/v1/jobs", json=edit, headers=a, timeout=10).json()
    assert requests.get(f"{url}/v1/jobs/{job['id']}", headers=a, timeout=10).status_code == 200
    assert requests.post(f"{url}/v1/edits", json=edit, headers=b, timeout=30).status_code == 200  # Edit, gauss: its rights
    error_of(requests.post(f"{url}/v1/jobs", json=edit, headers=b, timeout=10), 403, "PERMISSION_DENIED")
    error_of(requests.post(f"{url}/v1/edits", json={**edit, "model": "gauss-ve"}, headers=b, timeout=10), 403,
             "PERMISSION_DENIED")
    error_of(requests.get(f"{url}/v1/jobs/{job['id']}", headers=b, timeout=10), 403, "PERMISSION_DENIED")
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # health is open
    assert requests.get(f"{url}/openapi.json", timeout=10).status_code == 200
    metrics = srv.running.metrics.registry
    assert metrics.get_sample_value("sdedit_tenant_rejections_total", {"tenant": "", "reason": "unauthenticated"}) == 3
    assert metrics.get_sample_value("sdedit_tenant_requests_total", {"tenant": "a"}) == 2


def test_another_tenants_job_is_not_found(make_server, tmp_path, guide16):
    from service.tenancy.tenants import hash_token

    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token_sha256": [hash_token(TOKEN_A)]},
                                                    {"name": "b", "token": TOKEN_B}])
    srv = make_server(auth_tokens_file=str(tokens))
    a, b = {"Authorization": f"Bearer {TOKEN_A}"}, {"Authorization": f"Bearer {TOKEN_B}"}
    job = requests.post(f"{srv.http_url}/v1/jobs", json={"image": b64(png(guide16)), "t0": 0.5, "steps": 2}, headers=a,
                        timeout=10).json()
    error_of(requests.get(f"{srv.http_url}/v1/jobs/{job['id']}", headers=b, timeout=10), 404, "NOT_FOUND")
    error_of(requests.get(f"{srv.http_url}/v1/jobs/{job['id']}/events", headers=b, timeout=10), 404, "NOT_FOUND")


# --- health, shutdown, static files, TLS ----------------------------------------------------

def test_health_is_200_then_503_while_draining_and_the_port_closes_after_grpc(make_server, guide16):
    srv = make_server(wrap_model=counting(0.05), cache="none", shutdown_linger_seconds=0.5)
    url = srv.http_url
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "SERVING"}
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(requests.post(
        f"{url}/v1/edits", json={"image": b64(png(guide16)), "t0": 0.8, "steps": 30}, timeout=60)))
    slow.start()
    wait_for(lambda: srv.service.admission.in_flight == 1, 10, what="the edit admitted")
    stopping = threading.Thread(target=srv.stop)
    stopping.start()
    wait_for(lambda: srv.service.admission.draining, 10, what="draining")
    health = requests.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json() == {"status": "NOT_SERVING"}
    refused = requests.post(f"{url}/v1/edits", json={"image": b64(png(guide16)), "steps": 2}, timeout=10)
    error_of(refused, 503, "UNAVAILABLE")
    slow.join(60)
    assert answers[0].status_code == 200, answers[0].text  # the admitted edit finished
    stopping.join(30)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_the_page_and_its_files_come_from_the_static_folder(make_server, tmp_path):
    srv = make_server(http_port=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    srv.running.http.static_dir = empty
    error_of(requests.get(f"{srv.http_url}/", timeout=10), 404, "NOT_FOUND")  # no page yet: a JSON 404
    static = tmp_path / "static"
    (static / "vendor").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>sdedit</title>")
    (static / "app.js").write_text("console.log(1)")
    (static / "vendor" / "lib.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("no")
    srv.running.http.static_dir = static
    page = requests.get(f"{srv.http_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html") and "sdedit" in page.text
    script = requests.get(f"{srv.http_url}/static/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert requests.get(f"{srv.http_url}/static/vendor/lib.css", timeout=10).text == "body{}"
    for sneaky in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/vendor/../../secret.txt", "/static/nope.js"):
        assert requests.get(srv.http_url + sneaky, timeout=10).status_code == 404


def test_the_http_port_can_be_off():
    from service.config import load_settings

    assert load_settings(env={}).http_port == 8080
    assert load_settings(env={"SDEDIT_HTTP_PORT": "-1"}).http_port == -1


def test_the_http_port_is_off_with_minus_one(make_server):
    srv = make_server(http_port=-1)
    assert srv.running.http is None and srv.running.http_port is None


def test_https_uses_the_grpc_certificate_and_follows_its_rotation(make_server, ca, tmp_path):
    first, second = ca.issue("server-1"), ca.issue("server-2")
    served = ServedFiles(tmp_path / "served", first)
    cert, key = served.cert, served.key
    srv = make_server(tls_cert_file=str(cert), tls_key_file=str(key))
    assert srv.http_url.startswith("https://")
    assert requests.get(f"{srv.http_url}/healthz", verify=str(ca.cert), timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{srv.running.http_port}/healthz", timeout=5)
    assert served_serial(srv.running.http_port) == serial_of(first.cert.read_bytes())
    served.rotate_to(second)
    assert served_serial(srv.running.http_port) == serial_of(second.cert.read_bytes())
    key.write_bytes(b"")  # half written: the previous certificate stays
    assert served_serial(srv.running.http_port) == serial_of(second.cert.read_bytes())
    assert requests.get(f"{srv.http_url}/v1/models", verify=str(ca.cert), timeout=10).status_code == 200
