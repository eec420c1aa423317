"""The OpenAPI document of the HTTP door: valid OpenAPI 3.1, generated from the proto, and
true of the implementation (schemathesis runs every operation against a real server)."""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from sdedit.v1 import sdedit_pb2
from service.transport.http.routes import ROUTES
from tests.helpers import b64, png

EXAMPLES_PER_OPERATION = 50
CALL_TIMEOUT_SECONDS = 10.0  # each request's own deadline


def test_the_document_is_valid_openapi_and_covers_every_route_and_message(server):
    document = requests.get(f"{server.http_url}/openapi.json", timeout=10).json()
    validate(document)  # OpenAPI 3.1 (openapi-spec-validator)
    assert document["openapi"] == "3.1.0"
    assert {(path, method.upper()) for path, item in document["paths"].items() for method in item} == \
        {(r.path, r.method) for r in ROUTES}
    schemas = document["components"]["schemas"]
    assert {f"sdedit.v1.{name}" for name in sdedit_pb2.DESCRIPTOR.message_types_by_name} <= set(schemas)
    request = schemas["sdedit.v1.EditRequest"]["properties"]
    # the proto3 JSON mapping: camelCase, uint64 as a string, bytes as base64, enums by name
    assert request["seed"]["type"] == "string" and request["image"]["format"] == "byte"
    assert request["numSamples"]["type"] == "integer"
    assert schemas["sdedit.v1.Sampler"]["enum"][:2] == ["SAMPLER_UNSPECIFIED", "SAMPLER_DDPM"]
    assert schemas["sdedit.v1.Job"]["properties"]["createTime"] == {"type": "string", "format": "date-time"}
    assert schemas["sdedit.v1.Job"]["properties"]["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}
    assert schemathesis.openapi.from_dict(document).statistic.operations.total == len(ROUTES)


def plausible(case, guide: str, job_ids: list[str], pick: int):
    """Half the cases made likely to succeed, so the success answers are checked too: an edit
    with a real guide and a small schedule, a job route with the id of a real job."""
    if pick % 2:
        return case
    if isinstance(case.body, dict) and case.path in ("/v1/edits", "/v1/jobs"):
        case.body.update(image=guide, t0=0.5)
        for name, most in (("steps", 8), ("repeats", 2), ("numSamples", 2), ("previewEvery", 4)):
            if isinstance(case.body.get(name), int):
                case.body[name] %= most + 1
        case.body.pop("mask", None)
        case.body.pop("fullSchedule", None)
        case.body.pop("model", None)
        case.body.pop("requestId", None)
    if case.path_parameters and "id" in case.path_parameters and job_ids:
        case.path_parameters["id"] = job_ids[pick // 2 % len(job_ids)]
    return case


def exercise(operation, base_url: str, codes: set[int], guide: str, job_ids: list[str]) -> None:
    """Hypothesis over one operation: every answer conforms to the document, and none is a 5xx."""

    @given(case=st.tuples(operation.as_strategy(), st.integers(0, 63)).map(lambda c: plausible(c[0], guide, job_ids, c[1])))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=base_url, timeout=CALL_TIMEOUT_SECONDS)
        codes.add(response.status_code)
        case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                 response_schema_conformance])
        # a deadline the case itself set (Request-Timeout) may pass: 504 is then its answer
        deadline_passed = response.status_code == 504 and "Request-Timeout" in (case.headers or {})
        assert response.status_code < 500 or deadline_passed, (case.as_curl_command(), response.text[:500])

    check()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(make_server, guide16):
    srv = make_server(cache="none", max_num_samples=2, max_repeats=2, max_pixels=64 * 64, job_workers=1,
                      max_queue=4)
    schema = schemathesis.openapi.from_url(f"{srv.http_url}/openapi.json")
    guide = b64(png(guide16))
    job_ids = [requests.post(f"{srv.http_url}/v1/jobs", json={"image": guide, "t0": 0.5, "steps": steps}, timeout=10).json()["id"]
               for steps in (2, 4)]
    started, seen = time.monotonic(), {}
    for result in schema.get_all_operations():
        operation = result.ok()
        exercise(operation, srv.http_url, seen.setdefault(operation.label, set()), guide, job_ids)
    print({label: sorted(codes) for label, codes in seen.items()})
    # every operation but the document's own (schemathesis leaves out the path it loaded from)
    assert set(seen) == {f"{r.method} {r.path}" for r in ROUTES} - {"GET /openapi.json"}
    assert 200 in seen["GET /v1/models"] and 200 in seen["GET /healthz"]
    for label in ("POST /v1/edits", "POST /v1/jobs", "GET /v1/jobs/{id}", "DELETE /v1/jobs/{id}", "GET /v1/jobs/{id}/events"):
        assert {200, 400} <= seen[label] or {200, 404} <= seen[label], (label, seen[label])
    assert time.monotonic() - started < 90
