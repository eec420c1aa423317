"""The HTTP door against a hostile web page: foreign Origins, DNS rebinding, the page's headers;
and ListModels with --open-discovery shows a tenant with a token its own models."""

from __future__ import annotations

import logging

import pytest
import requests

from service.client import Client
from service.client.connection import Connection
from tests.helpers import TOKEN_B, b64, png, two_tenants

EVIL = "https://evil.example"


def job_form(guide16) -> dict:
    return {"image": ("g.png", png(guide16), "image/png"), "request": (None, '{"t0": 0.3, "steps": 1}', "application/json")}


def refused(response: requests.Response, reason: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert [d["reason"] for d in error["details"] if "reason" in d] == [reason]


def test_a_foreign_origin_may_not_post_or_delete_unless_allowed(make_server, guide16):
    srv = make_server(http_allowed_origins="https://editor.example, http://localhost:9999")
    url, port = srv.http_url, srv.running.http_port
    refused(requests.post(f"{url}/v1/jobs", files=job_form(guide16), headers={"Origin": EVIL}, timeout=10), "FOREIGN_ORIGIN")
    refused(requests.post(f"{url}/v1/edits", json={"image": b64(png(guide16))}, headers={"Origin": "null"}, timeout=10),
            "FOREIGN_ORIGIN")
    refused(requests.post(f"{url}/v1/jobs", files=job_form(guide16), timeout=10,  # another port is another origin
                          headers={"Origin": f"http://127.0.0.1:{port + 1}"}), "FOREIGN_ORIGIN")
    assert requests.get(f"{url}/v1/jobs", timeout=10).json().get("jobs", []) == []
    own = requests.post(f"{url}/v1/jobs", files=job_form(guide16), headers={"Origin": f"http://127.0.0.1:{port}"}, timeout=10)
    assert own.status_code == 200, own.text
    for allowed in ("https://editor.example", "https://EDITOR.example:443", "http://localhost:9999"):
        answer = requests.post(f"{url}/v1/jobs", files=job_form(guide16), headers={"Origin": allowed}, timeout=10)
        assert answer.status_code == 200, (allowed, answer.text)
    job = own.json()["id"]
    refused(requests.delete(f"{url}/v1/jobs/{job}", headers={"Origin": EVIL}, timeout=10), "FOREIGN_ORIGIN")
    # reading is not state-changing (and the browser keeps a foreign page from seeing the answer)
    assert requests.get(f"{url}/v1/jobs/{job}", headers={"Origin": EVIL}, timeout=10).status_code == 200
    assert requests.post(f"{url}/v1/jobs", files=job_form(guide16), timeout=10).status_code == 200  # no Origin: not a browser


def test_a_bad_allowed_origin_is_a_settings_error():
    from service.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="http_allowed_origins"):
        load_settings(env={}, http_allowed_origins="evil.example")


def test_bound_to_loopback_a_rebound_host_is_refused_but_health_answers(make_server, guide16):
    srv = make_server()
    url, port = srv.http_url, srv.running.http_port
    rebound = {"Host": f"attacker-rebound.example:{port}"}
    refused(requests.get(f"{url}/v1/jobs", headers=rebound, timeout=10), "FOREIGN_HOST")
    refused(requests.get(f"{url}/", headers=rebound, timeout=10), "FOREIGN_HOST")
    refused(requests.post(f"{url}/v1/jobs", files=job_form(guide16), timeout=10,
                          headers={**rebound, "Origin": f"http://attacker-rebound.example:{port}"}), "FOREIGN_HOST")
    assert requests.get(f"{url}/healthz", headers=rebound, timeout=10).status_code == 200
    for host in (f"localhost:{port}", "localhost", f"127.0.0.2:{port}", f"[::1]:{port}"):
        assert requests.get(f"{url}/v1/jobs", headers={"Host": host}, timeout=10).status_code == 200, host


def test_beyond_loopback_any_host_is_served(make_server):
    srv = make_server(host="0.0.0.0")
    answer = requests.get(f"http://127.0.0.1:{srv.running.http_port}/v1/models", headers={"Host": "sdedit.example"}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_the_page_cannot_be_framed_or_sniffed_and_a_401_says_bearer(make_server, tmp_path):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")))
    for path in ("/", "/static/main.js", "/static/editor.css", "/v1/models", "/openapi.json"):
        answer = requests.get(srv.http_url + path, timeout=10)
        policy = answer.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", path
    unauthenticated = requests.get(f"{srv.http_url}/v1/models", timeout=10)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_the_warning_beyond_loopback_names_the_http_port(caplog):
    from service.config import load_settings
    from service.server import warn_if_open

    with caplog.at_level(logging.WARNING, logger="service.server"):
        warn_if_open(load_settings(env={}, host="0.0.0.0", port=50051, http_port=8123))
    (record,) = caplog.records
    assert "50051" in record.message and "8123 (HTTP)" in record.message


def test_open_discovery_lists_a_tenants_own_models_when_it_sends_its_token(make_server, tmp_path):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")), open_discovery=True)
    every = {m["name"] for m in requests.get(f"{srv.http_url}/v1/models", timeout=10).json()["models"]}
    assert "gauss" in every and len(every) > 1
    b = {"Authorization": f"Bearer {TOKEN_B}"}  # tenant b may use gauss only
    assert {m["name"] for m in requests.get(f"{srv.http_url}/v1/models", headers=b, timeout=10).json()["models"]} == {"gauss"}
    with Client(Connection(srv.address, token=TOKEN_B)) as client:
        assert {m.name for m in client.list_models(timeout=10)} == {"gauss"}
    with Client(Connection(srv.address)) as client:
        assert {m.name for m in client.list_models(timeout=10)} == every
