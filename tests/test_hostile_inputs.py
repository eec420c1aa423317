"""Bad input at the HTTP door and the job store: a clear 4xx, never a 500 with a traceback, and
nothing of the service's insides (its paths, its Redis) in what a caller or the log is told."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import warnings

import pytest
import requests

from service.transport.http.pages import STATIC_DIR
from tests.helpers import TOKEN_A, b64, error_of, png, two_tenants, violated_field

AUTH_A = {"Authorization": f"Bearer {TOKEN_A}"}


def assert_quiet_log(caplog, *secrets: str) -> None:
    """No traceback, and none of `secrets` (a path, a URL), in any log line."""
    for record in caplog.records:
        text = record.getMessage()
        assert record.exc_info is None and "Traceback" not in text, (record.name, text)
        for secret in secrets:
            assert secret not in text, (record.name, text)


def raw_request(port: int, method: str, path: str, headers: dict[str, bytes | str], body: bytes = b"") -> tuple[int, dict]:
    """One request with header bytes exactly as given (requests and http.client's request() re-encode them)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def tenants_server(make_server, tmp_path):
    return make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")), cache="none")


def test_an_authorization_header_that_is_not_utf8_is_unauthenticated(tenants_server, guide16, caplog):
    caplog.set_level(logging.INFO)
    body = json.dumps({"image": b64(png(guide16)), "t0": 0.3, "steps": 2}).encode()
    for value in (b"Bearer \xff\xfe\xfd", b"Bearer tok-\xc3\x28-" + b"7" * 32, b"\xff"):
        for method, path in (("POST", "/v1/edits"), ("GET", "/v1/jobs"), ("GET", "/v1/models")):
            status, answer = raw_request(tenants_server.running.http_port, method, path,
                                         {"Authorization": value, "Content-Type": "application/json"},
                                         body if method == "POST" else b"")
            assert status == 401 and answer["error"]["status"] == "UNAUTHENTICATED", (value, path, answer)
    assert_quiet_log(caplog)


def test_the_gate_refuses_a_token_with_no_utf8_from_any_door(tmp_path):
    """gRPC metadata cannot carry such bytes (grpc refuses to send them), but the check is the pipeline's."""
    from service.errors import Unauthenticated
    from service.tenancy.auth import Gate
    from service.tenancy.tenants import TokensFile, TokensFileError

    gate = Gate(TokensFile(two_tenants(tmp_path / "tokens.json")))
    for token in ("Bearer \udcff\udcfe", "Bearer tok-a-\ud800"):
        with pytest.raises(Unauthenticated):
            gate.authenticate("/sdedit.v1.ImageEditor/Edit", (("authorization", token),))
    bad = tmp_path / "bad.json"
    bad.write_text('{"tenants": [{"name": "x", "token": "\\ud800' + "7" * 20 + '"}]}')
    with pytest.raises(TokensFileError, match="token"):
        TokensFile(bad)


def test_static_names_with_a_null_byte_or_too_long_are_not_found_and_no_path_is_logged(server, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("%00", "a%00b.js", "x" * 300, "vendor/" + "y" * 300, "x" * 5000):
        error = error_of(requests.get(f"{server.http_url}/static/{name}", timeout=10), 404, "NOT_FOUND")
        assert str(STATIC_DIR) not in error["message"]
    assert_quiet_log(caplog, str(STATIC_DIR), str(STATIC_DIR.parent))


@pytest.mark.parametrize("nesting", [b"[" * 100_000, b'{"a":' * 100_000])
def test_a_body_nested_100000_deep_is_invalid_argument_naming_the_body(tenants_server, nesting, caplog):
    caplog.set_level(logging.INFO)
    url = tenants_server.http_url
    for path in ("/v1/edits", "/v1/jobs"):
        error = error_of(requests.post(f"{url}{path}", data=nesting, headers={**AUTH_A, "Content-Type": "application/json"},
                                       timeout=30), 400, "INVALID_ARGUMENT")
        assert violated_field(error) == "body" and "nested too deeply" in error["message"], error
        error = error_of(requests.post(f"{url}{path}", files={"request": ("request.json", nesting, "application/json")},
                                       headers=AUTH_A, timeout=30), 400, "INVALID_ARGUMENT")
        assert violated_field(error) == "request" and "nested too deeply" in error["message"], error
    assert_quiet_log(caplog)


def test_a_multipart_body_over_the_field_cap_says_it_has_too_many_parts(server, caplog):
    caplog.set_level(logging.INFO)
    fields = [(f"f{i}", (None, "x" * 500)) for i in range(1100)]  # about 700 KiB, far below --max-request-mib
    response = requests.post(f"{server.http_url}/v1/jobs", files=fields, timeout=30)
    error = error_of(response, 413, "RESOURCE_EXHAUSTED")
    assert violated_field(error) == "body" and "more than 1000 parts" in error["message"], error
    assert "max-request-mib" not in error["message"]
    assert_quiet_log(caplog)


def test_a_lone_surrogate_in_json_is_invalid_argument_naming_the_body(tenants_server, caplog):
    caplog.set_level(logging.INFO)
    for body in (b'{"\\ud800": 1}', b'{"model": "\\udcff"}', b'{"requestId": "a\\ud800b"}'):
        error = error_of(requests.post(f"{tenants_server.http_url}/v1/jobs", data=body,
                                       headers={**AUTH_A, "Content-Type": "application/json"}, timeout=10), 400, "INVALID_ARGUMENT")
        assert violated_field(error) == "body", (body, error)
    assert_quiet_log(caplog)


def test_requests_aiohttp_cannot_parse_are_400_and_logged_in_one_line_not_a_traceback(server, caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        status, _ = raw_request_text(server.running.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n")
        assert status == 400
    assert_quiet_log(caplog)
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(lines) == 1 and "malformed HTTP request" in lines[0].getMessage(), [r.getMessage() for r in lines]


def raw_request_text(port: int, data: bytes) -> tuple[int, bytes]:
    """Bytes on a socket of their own, as no HTTP client would send them; the status and the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


# --- the Redis job store ----------------------------------------------------------------------

def test_redis_job_store_answers_caller_mistakes_as_the_caller_s_and_never_names_redis(make_server, redis_server,
                                                                                       guide16, caplog):
    caplog.set_level(logging.INFO)
    srv = make_server(cache="redis", redis_url=redis_server.url, job_poll_seconds=0.1)
    url = srv.http_url
    job = requests.post(f"{url}/v1/jobs", json={"image": b64(png(guide16)), "t0": 0.3, "steps": 2}, timeout=10).json()
    for suffix in (":result", ":request", ":events", ":x"):
        for method in (requests.get, requests.delete):
            error = error_of(method(f"{url}/v1/jobs/{job['id']}{suffix}", timeout=10), 404, "NOT_FOUND")
            assert "WRONGTYPE" not in error["message"]
    error_of(requests.get(f"{url}/v1/jobs/{job['id']}:result/events", timeout=10), 404, "NOT_FOUND")
    for token in ("9223372036854775807", "18446744073709551616", "-1", "1_000", "\u0663", " 5", "1e3"):
        error = error_of(requests.get(f"{url}/v1/jobs", params={"pageToken": token}, timeout=10), 400, "INVALID_ARGUMENT")
        assert violated_field(error) == "page_token", (token, error)
    assert requests.get(f"{url}/v1/jobs", params={"pageToken": "999999999"}, timeout=10).json().get("jobs", []) == []
    assert [j["id"] for j in requests.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]] == [job["id"]]

    redis_server.stop()  # Redis down: "job store unavailable", nothing of Redis
    for response in (requests.get(f"{url}/v1/jobs/{job['id']}", timeout=30), requests.get(f"{url}/v1/jobs", timeout=30)):
        error = error_of(response, 503, "UNAVAILABLE")
        assert error["message"].startswith("job store unavailable"), error
        for word in ("redis", "Redis", "127.0.0.1", str(redis_server.port)):
            assert word not in error["message"], error
    assert_quiet_log(caplog)


def test_malformed_content_dispositions_leave_no_warnings(make_server):
    """aiohttp would warn once per distinct malformed Content-Disposition: text a caller picks."""
    srv = make_server(http_port=0)
    with warnings.catch_warnings(record=True) as caught:  # the filters in force, not "always"
        post_malformed_dispositions(srv)
    assert [str(w.message) for w in caught if "ContentDisposition" in type(w.message).__name__] == []


def post_malformed_dispositions(srv) -> None:
    for i in range(20):
        body = (f"--b\r\nContent-Disposition: form-data; name=\"image\"; filename*=bad'{i}'x;;\r\n\r\nxx\r\n--b--\r\n").encode()
        answer = requests.post(f"{srv.http_url}/v1/edits", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"},
                               timeout=30)
        assert answer.status_code == 400, answer.text
