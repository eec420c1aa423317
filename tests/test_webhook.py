"""Completion webhooks: real HTTPS receivers on loopback (certificates from a test CA made by
openssl, the service trusting it through --webhook-ca-file), signatures checked with the
snippet docs/webhooks.md gives, retries, refusals, tenants' own secrets, a Redis job store."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2

from sdedit.v1 import sdedit_pb2 as pb
from service.client import Client, build_request
from service.client.connection import Connection
from service.config import SettingsError, load_settings
from service.errors import InvalidArgument
from service.jobs.records import CANCELLED, JobRecord
from service.jobs.store import MemoryJobStore
from service.jobs.webhooks import Webhooks, check_url, forbidden, literal_ip, signature
from service.testing.servers import ROOT, wait_for
from service.transport.grpc.jobs import ProtoJobCodec
from tests.certs import CertificateAuthority, Pair
from tests.helpers import TOKEN_A, TOKEN_B, get_job, png

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates "
                                "(scripts/install_test_tools.sh installs it)")
SECRET = b"s3cret-for-the-anonymous-tenant-0123456789"
TOKEN_C = "tok-c-" + "5" * 32


def documented_verify():
    """The verification snippet of docs/webhooks.md, run as it stands."""
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    section = doc[doc.index("## Verifying a request"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # our own documentation
    return namespace["verify"]


verify = documented_verify()


class Receiver:
    """An HTTP(S) server on a free loopback port recording each POST and answering with
    `statuses` in turn (then 200); `delay` seconds before each answer; `retry_after` as the
    Retry-After header of its 429 and 503 answers."""

    def __init__(self, pair: Pair | None, statuses=(), delay: float = 0.0, retry_after: str | None = None):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []  # time.monotonic() of each POST
        self.statuses, self.delay, self.lock = list(statuses), delay, threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.times.append(time.monotonic())
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "https://elsewhere.invalid/")
                if status in (429, 503) and retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if pair is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pair.cert, pair.key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "localhost", path: str = "/hook?app=1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def wait(self, count: int, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        wait_for(lambda: len(self.requests) >= count, timeout, 0.02, f"{count} webhook POSTs")
        return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers(ca):
    started = []

    def start(statuses=(), tls: bool = True, delay: float = 0.0, retry_after: str | None = None) -> Receiver:
        receiver = Receiver(ca.issue(f"receiver{len(started)}") if tls else None, statuses, delay, retry_after)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")  # surrounding whitespace is not part of the secret
    return path


@pytest.fixture
def hook_server(make_server, ca, secret_file):
    """A server that signs with SECRET, trusts the test CA and may reach loopback."""

    def start(**overrides):
        settings = dict(job_poll_seconds=0.1, webhook_secret_file=str(secret_file), webhook_ca_file=str(ca.cert),
                        webhook_allow_private=True, webhook_retry_seconds=0.05)
        return make_server(**{**settings, **overrides})

    return start


def job_request(guide16, url: str, seed: int = 3, **kwargs) -> pb.EditRequest:
    request = build_request(png(guide16), **{"t0": 0.4, "steps": 3, "seed": seed, "num_samples": 2, **kwargs})
    request.job.webhook_url = url
    return request


def webhook_done(client: Client, job_id: str, timeout: float = 30) -> pb.Job:
    final = {"delivered", "failed", "refused", "abandoned"}
    wait_for(lambda: get_job(client, job_id).webhook.state in final, timeout, 0.02, "the webhook's final state")
    return get_job(client, job_id)


def sample(srv, name: str, **labels) -> float:
    return srv.running.metrics.registry.get_sample_value(name, labels) or 0.0


def submit_refused(client: Client, request: pb.EditRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.SubmitEdit(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job.webhook_url" in info.value.details()
    return info.value


# --- delivery -----------------------------------------------------------------------------------


def test_an_ended_job_posts_its_signed_record_without_the_images(hook_server, receivers, guide16):
    srv, receiver = hook_server(), receivers()
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        assert job.webhook.url == receiver.url() and job.webhook.state == "waiting"
        ((headers, body),) = receiver.wait(1)
        done = webhook_done(client, job.id)
    assert headers["content-type"] == "application/json" and headers["sdedit-job-id"] == job.id
    assert headers["sdedit-attempt"] == "1" and re.fullmatch(r"[0-9a-f]{32}", headers["sdedit-delivery"])
    assert verify(SECRET, headers["sdedit-signature"], body)
    assert not verify(b"another secret of enough length", headers["sdedit-signature"], body)
    assert not verify(SECRET, headers["sdedit-signature"], body + b" ")
    t = int(headers["sdedit-signature"].split(",")[0].removeprefix("t="))
    assert abs(time.time() - t) < 60 and headers["sdedit-signature"] == signature(SECRET, t, body)
    record = json.loads(body)
    assert record["id"] == job.id and record["state"] == "JOB_STATE_SUCCEEDED" and "webhook" not in record
    assert record["endTime"] and record["progress"]["step"] == 3
    images = record["result"]["images"]
    assert len(images) == 2 and all("data" not in i and i["mediaType"] == "image/png" and i["seed"] for i in images)
    assert record["result"]["networkCalls"] == 3 and record["result"]["model"] == "gauss"
    for image in done.result.images:  # the images are GetJob's, never the webhook's
        assert image.data and base64.b64encode(image.data) not in body and image.data not in body
    assert (done.webhook.state, done.webhook.attempts, done.webhook.last_http_status) == ("delivered", 1, 200)
    assert done.webhook.last_error == ""
    assert sample(srv, "sdedit_webhook_deliveries_total", outcome="delivered") == 1
    assert sample(srv, "sdedit_webhook_attempts_total", result="2xx") == 1


@pytest.mark.parametrize("failure", [500, 429])
def test_a_receiver_failing_twice_gets_a_third_attempt_of_the_same_delivery(hook_server, receivers, guide16, failure):
    srv, receiver = hook_server(), receivers(statuses=[failure, failure, 200])
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        done = webhook_done(client, job.id)
    requests = receiver.requests
    assert [h["sdedit-attempt"] for h, _ in requests] == ["1", "2", "3"]
    assert len({h["sdedit-delivery"] for h, _ in requests}) == 1  # one delivery, retried
    assert all(verify(SECRET, h["sdedit-signature"], b) for h, b in requests)
    assert (done.webhook.state, done.webhook.attempts, done.webhook.last_http_status) == ("delivered", 3, 200)
    assert sample(srv, "sdedit_webhook_attempts_total", result=f"{failure // 100}xx") == 2
    assert sample(srv, "sdedit_webhook_deliveries_total", outcome="delivered") == 1


def test_a_retry_after_of_a_429_is_waited_for_and_an_http_date_is_not_trusted(hook_server, receivers, guide16):
    """The backoff's first delay is 0.05 s here; Retry-After: 1 makes it a second. The date form
    is ignored (the receiver's clock is not ours): the plain backoff applies."""
    srv = hook_server()
    told, dated = receivers(statuses=[429, 200], retry_after="1"), receivers(statuses=[503, 200],
                                                                              retry_after="Wed, 21 Oct 2099 07:28:00 GMT")
    with Client(srv.address) as client:
        jobs = [client.stub.SubmitEdit(job_request(guide16, r.url(), seed=i)) for i, r in enumerate((told, dated))]
        done = [webhook_done(client, job.id) for job in jobs]
    assert [(d.webhook.state, d.webhook.attempts) for d in done] == [("delivered", 2)] * 2
    assert told.times[1] - told.times[0] >= 1.0
    assert dated.times[1] - dated.times[0] < 1.0


@pytest.mark.parametrize("answer", [400, 302])
def test_a_refusing_or_redirecting_receiver_gets_one_attempt(hook_server, receivers, guide16, answer):
    srv, receiver = hook_server(), receivers(statuses=[answer])
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        done = webhook_done(client, job.id)
        time.sleep(0.5)  # ten retry delays: no second POST comes
    assert len(receiver.requests) == 1
    assert (done.webhook.state, done.webhook.attempts, done.webhook.last_http_status) == ("failed", 1, answer)
    assert done.webhook.last_error == f"HTTP {answer}"
    assert sample(srv, "sdedit_webhook_deliveries_total", outcome="rejected") == 1


def test_every_attempt_failing_gives_up_after_the_last_one(hook_server, receivers, guide16):
    """A receiver slower than the per-attempt timeout: each attempt times out, then it gives up."""
    srv, receiver = hook_server(webhook_max_attempts=3, webhook_timeout_seconds=0.3), receivers(delay=2.0)
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        done = webhook_done(client, job.id)
    assert (done.webhook.state, done.webhook.attempts, done.webhook.last_error) == ("failed", 3, "timed out")
    assert len(receiver.requests) == 3
    assert sample(srv, "sdedit_webhook_attempts_total", result="error") == 3
    assert sample(srv, "sdedit_webhook_deliveries_total", outcome="exhausted") == 1


def test_a_cancelled_job_s_webhook_says_cancelled(hook_server, receivers):
    srv, receiver = hook_server(), receivers()
    guide = png(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    request = build_request(guide, t0=1.0, steps=1000, repeats=10, seed=5)
    request.job.webhook_url = receiver.url()
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(request)
        wait_for(lambda: get_job(client, job.id).state == pb.JOB_STATE_RUNNING, 30, 0.02, "running")
        assert client.stub.CancelJob(pb.CancelJobRequest(id=job.id)).state == pb.JOB_STATE_CANCELLED
        ((headers, body),) = receiver.wait(1)
        done = webhook_done(client, job.id)
        time.sleep(0.3)  # the stopped run ends no second time
    record = json.loads(body)
    assert record["id"] == job.id and record["state"] == "JOB_STATE_CANCELLED"
    assert record["error"]["code"] == code_pb2.CANCELLED and "result" not in record
    assert verify(SECRET, headers["sdedit-signature"], body) and done.webhook.state == "delivered"
    assert len(receiver.requests) == 1


def test_a_failed_job_s_webhook_carries_its_error(hook_server, receivers, guide16):
    srv, receiver = hook_server(), receivers()
    request = build_request(png(guide16)[:60], t0=0.4, steps=3, seed=1)  # truncated: fails when decoded, in the run
    request.job.webhook_url = receiver.url()
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(request)
        done = webhook_done(client, job.id)
    assert done.state == pb.JOB_STATE_FAILED and done.webhook.state == "delivered"
    record = json.loads(receiver.requests[0][1])
    assert record["id"] == job.id and record["state"] == "JOB_STATE_FAILED"
    assert record["error"]["code"] == done.error.code != 0 and "result" not in record


# --- refusals -----------------------------------------------------------------------------------


def test_without_private_addresses_loopback_is_refused_literal_at_once_and_by_name_at_delivery(
        hook_server, receivers, guide16):
    srv, receiver = hook_server(webhook_allow_private=False), receivers()
    with Client(srv.address) as client:
        error = submit_refused(client, job_request(guide16, receiver.url(host="127.0.0.1")))
        assert "loopback" in error.details() and "--webhook-allow-private" in error.details()
        submit_refused(client, job_request(guide16, receiver.url(host="[::1]")))
        submit_refused(client, job_request(guide16, receiver.url(host="127.1")))  # a legacy form of 127.0.0.1
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url(host="localhost")))  # a name: checked later
        done = webhook_done(client, job.id)
        assert done.state == pb.JOB_STATE_SUCCEEDED
    assert done.webhook.state == "refused" and done.webhook.attempts == 0 and "loopback" in done.webhook.last_error
    time.sleep(0.3)
    assert receiver.requests == []  # never delivered
    assert sample(srv, "sdedit_webhook_deliveries_total", outcome="refused") == 1
    assert sample(srv, "sdedit_webhook_attempts_total", result="2xx") == 0


@pytest.mark.parametrize("url, words", [
    ("ftp://example.com/hook", "https://"),
    ("https://user:pw@example.com/hook", "no user or password"),
    ("https:///hook", "needs a host"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://example.com:0/", "port must be in"),
    ("https://example.com/" + "a" * 2048, "at most 2048"),
    ("https://exa mple.com/", "ASCII without spaces"),
    ("https://bücher.example/", "punycode"),
    ("https://example.com/#frag", "fragment"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://10.1.2.3/", "private"),
    ("https://[::ffff:10.0.0.1]/", "private"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://100.64.0.1/", "non-public"),
    ("https://a..b/hook", "empty label"),
    ("https://.example.com/", "empty label"),
    ("https://" + "a" * 64 + ".example/", "label of 64 characters"),
    ("https://" + "abcdefgh." * 29 + "com/", "at most 253"),
])
def test_bad_webhook_urls_are_refused_naming_the_field(url, words):
    with pytest.raises(InvalidArgument) as info:
        check_url(url)
    assert info.value.field == "job.webhook_url" and words in info.value.description


def test_valid_dns_names_pass_the_host_check():
    for url in ("https://example.com./hook", "https://" + "a" * 63 + ".example/", "https://[2606:4700::1111]/",
                "https://8.8.8.8/", "https://x/"):
        check_url(url)


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example"])
def test_a_host_the_resolver_cannot_take_is_refused_at_submit(hook_server, receivers, guide16, host):
    srv = hook_server()
    with Client(srv.address) as client:
        error = submit_refused(client, job_request(guide16, f"https://{host}/hook"))
    assert "not a valid DNS name" in error.details()
    assert srv.running.jobs.webhooks.in_flight == 0


class Outcomes:
    def __init__(self):
        self.attempts, self.deliveries = [], []

    def webhook_attempt(self, result):
        self.attempts.append(result)

    def webhook_delivery(self, outcome):
        self.deliveries.append(outcome)


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example"])
def test_an_exception_in_a_delivery_ends_it_failed_counted_and_recorded(secret_file, host, caplog):
    """A record whose URL the submit check would now refuse (kept in a store from before it):
    the resolver raises UnicodeError at delivery. The delivery ends failed, counted, with the
    error in the record; its task ends without an exception."""
    async def deliver():
        settings = load_settings(webhook_secret_file=str(secret_file), webhook_allow_private=True)
        outcomes, store = Outcomes(), MemoryJobStore(max_events=10)
        hooks = Webhooks(settings, lambda owner: SECRET, outcomes)
        now = time.time()
        record = JobRecord(id="j" * 32, state=CANCELLED, created=now, ended=now, expires=now + 60,
                           webhook_url=f"https://{host}/hook", webhook_state="waiting")
        await store.submit(record, b"", 60)
        hooks.deliver(store, ProtoJobCodec(), record)
        (task,) = hooks._deliveries
        await asyncio.wait_for(asyncio.shield(task), 30)
        await hooks.aclose()
        return task, outcomes, await store.get(record.id)

    task, outcomes, stored = asyncio.run(deliver())
    assert task.exception() is None
    assert outcomes.deliveries == ["error"]
    assert stored.webhook_state == "failed" and "internal error: UnicodeError" in stored.webhook_error
    assert any("not retried" in r.getMessage() and r.exc_info for r in caplog.records)


def test_the_address_rules():
    allowed = ["8.8.8.8", "2606:4700:4700::1111", "93.184.216.34"]
    refused = ["127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "fe80::1", "fc00::1",
               "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "100.64.0.1", "::ffff:127.0.0.1",
               "2002:7f00:1::1"]  # the last: 6to4 around 127.0.0.1
    import ipaddress

    assert [a for a in allowed if forbidden(ipaddress.ip_address(a))] == []
    assert [a for a in refused if not forbidden(ipaddress.ip_address(a))] == []
    private_ok = [a for a in refused if forbidden(ipaddress.ip_address(a), allow_private=True)]
    assert private_ok == ["0.0.0.0", "::", "224.0.0.1", "ff02::1"]  # never multicast or unspecified
    assert str(literal_ip("2130706433")) == "127.0.0.1" and literal_ip("localhost") is None
    check_url("http://localhost:8080/x", allow_http=True)
    check_url("https://127.0.0.1/x", allow_private=True)


def test_plain_http_is_refused_unless_allowed(hook_server, receivers, guide16):
    strict, receiver = hook_server(), receivers(tls=False)
    with Client(strict.address) as client:
        error = submit_refused(client, job_request(guide16, receiver.url()))
        assert "--webhook-allow-http" in error.details()
    lenient = hook_server(webhook_allow_http=True)
    with Client(lenient.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        assert webhook_done(client, job.id).webhook.state == "delivered"
    assert verify(SECRET, receiver.requests[0][0]["sdedit-signature"], receiver.requests[0][1])


def test_a_receiver_whose_certificate_the_service_does_not_trust_is_not_delivered(hook_server, receivers, guide16,
                                                                                 tmp_path):
    other = CertificateAuthority(tmp_path / "other", "another CA")
    srv, receiver = hook_server(webhook_ca_file=str(other.cert), webhook_max_attempts=2), receivers()
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        done = webhook_done(client, job.id)
    assert done.webhook.state == "failed" and done.webhook.attempts == 2 and "TLS" in done.webhook.last_error
    assert receiver.requests == []  # the handshake failed: nothing was sent


def test_no_secret_means_no_webhook_and_the_answer_says_how_to_configure_one(make_server, receivers, guide16):
    srv, receiver = make_server(webhook_allow_private=True), receivers()
    with Client(srv.address) as client:
        error = submit_refused(client, job_request(guide16, receiver.url()))
        assert "--webhook-secret-file" in error.details()
        assert client.stub.SubmitEdit(job_request(guide16, "")).webhook.url == ""  # no webhook: no secret needed


def test_webhook_settings_that_cannot_work_fail_at_start_up(make_server, tmp_path):
    with pytest.raises(SettingsError, match="webhook_secret_file"):
        load_settings(env={}, auth_tokens_file="tokens.json", webhook_secret_file="secret")
    (tmp_path / "short.secret").write_text("too short\n")
    (tmp_path / "bad.pem").write_text("not a certificate")
    for settings, message in ((dict(webhook_secret_file=str(tmp_path / "missing")), "cannot read"),
                              (dict(webhook_secret_file=str(tmp_path / "short.secret")), "fewer than 16 bytes"),
                              (dict(webhook_ca_file=str(tmp_path / "bad.pem")), "webhook_ca_file")):
        with pytest.raises(SettingsError, match=message):
            make_server(**settings)


# --- tenants and Redis --------------------------------------------------------------------------


def test_each_tenant_s_jobs_are_signed_with_its_own_secret(hook_server, receivers, guide16, tmp_path):
    folder = tmp_path / "tenants"
    folder.mkdir()
    secret_a, secret_b = b"a" * 20 + b"-secret-of-tenant-a", "b-secret-of-tenant-b-inline"
    (folder / "a.secret").write_bytes(secret_a)
    (folder / "tokens.json").write_text(json.dumps({"tenants": [
        {"name": "a", "token": TOKEN_A, "webhook_secret_file": "a.secret"},  # relative: beside the tokens file
        {"name": "b", "token": TOKEN_B, "webhook_secret": secret_b},
        {"name": "c", "token": TOKEN_C}]}))
    srv = hook_server(webhook_secret_file="", auth_tokens_file=str(folder / "tokens.json"))
    receiver = receivers()
    ids = {}
    for name, token in (("a", TOKEN_A), ("b", TOKEN_B)):
        with Client(Connection(srv.address, token=token)) as client:
            ids[client.stub.SubmitEdit(job_request(guide16, receiver.url(path=f"/{name}"))).id] = name
    with Client(Connection(srv.address, token=TOKEN_C)) as client:
        error = submit_refused(client, job_request(guide16, receiver.url()))
        assert "tenant 'c' has no webhook signing secret" in error.details() and "webhook_secret_file" in error.details()
    secrets = {"a": secret_a, "b": secret_b.encode()}
    for headers, body in receiver.wait(2):
        owner = ids[headers["sdedit-job-id"]]
        assert json.loads(body)["id"] == headers["sdedit-job-id"]
        assert verify(secrets[owner], headers["sdedit-signature"], body)
        assert not verify(secrets["b" if owner == "a" else "a"], headers["sdedit-signature"], body)
    (folder / "a.secret").write_bytes(b"rotated-secret-of-tenant-a-0123")  # read when used: rotated at once
    with Client(Connection(srv.address, token=TOKEN_A)) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url(path="/a"), seed=11))
        (headers, body) = receiver.wait(3)[2]
        assert headers["sdedit-job-id"] == job.id
    assert verify(b"rotated-secret-of-tenant-a-0123", headers["sdedit-signature"], body)


def test_webhooks_of_jobs_on_redis_record_their_delivery_in_the_job(hook_server, receivers, guide16, redis_server):
    srv, receiver = hook_server(jobs="redis", redis_url=redis_server.url), receivers(statuses=[503])
    with Client(srv.address) as client:
        assert client.stub.ListModels(pb.ListModelsRequest()).jobs == "redis"
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        done = webhook_done(client, job.id)
    assert (done.webhook.state, done.webhook.attempts, done.webhook.last_http_status) == ("delivered", 2, 200)
    headers, body = receiver.requests[1]
    assert verify(SECRET, headers["sdedit-signature"], body) and json.loads(body)["state"] == "JOB_STATE_SUCCEEDED"
    with redis_server.client() as redis:
        stored = redis.hgetall(f"sdedit-jobs:job:{job.id}")
    assert stored[b"webhook_state"] == b"delivered" and stored[b"webhook_url"] == receiver.url().encode()


def test_a_delivery_cut_short_by_the_replica_stopping_is_recorded_abandoned(hook_server, receivers, guide16,
                                                                            redis_server):
    """What docs/webhooks.md says: a stopping replica does not finish its retries, and no one else does."""
    srv = hook_server(jobs="redis", redis_url=redis_server.url, webhook_retry_seconds=60)
    receiver = receivers(statuses=[500])
    with Client(srv.address) as client:
        job = client.stub.SubmitEdit(job_request(guide16, receiver.url()))
        receiver.wait(1)
        wait_for(lambda: get_job(client, job.id).webhook.attempts == 1, 10, 0.02, "the first attempt recorded")
        assert get_job(client, job.id).webhook.state == "pending"
    srv.stop()
    with redis_server.client() as redis:
        stored = redis.hgetall(f"sdedit-jobs:job:{job.id}")
    assert stored[b"webhook_state"] == b"abandoned" and stored[b"webhook_attempts"] == b"1"
    assert stored[b"webhook_http_status"] == b"500" and len(receiver.requests) == 1
