"""Security: TLS and mutual TLS with real certificates (made by openssl in the test), certificate
rotation without a restart, tokens and tenants, quotas, the fair share, request_id per tenant."""

from __future__ import annotations

import shutil
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import Client, build_request
from service.client.connection import Connection
from service.testing.servers import free_port
from tests.certs import CertificateAuthority, ServedFiles, serial_of
from tests.helpers import TOKEN_A, TOKEN_B, png, served_serial, status_details, two_tenants, write_tokens

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates "
                                "(scripts/install_test_tools.sh installs it)")


def health(connection: Connection, timeout: float = 5) -> int:
    with connection.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def edit_request(guide16, **kwargs):
    return build_request(png(guide16), **{"t0": 0.3, "steps": 2, "seed": 1, **kwargs})


# --- TLS ------------------------------------------------------------------------------------


def test_a_tls_client_succeeds_and_a_plaintext_client_fails(make_server, ca, guide16):
    pair = ca.issue("server")
    srv = make_server(tls_cert_file=str(pair.cert), tls_key_file=str(pair.key))
    secure = Connection(srv.address, tls_ca_file=ca.cert)
    assert health(secure) == health_pb2.HealthCheckResponse.SERVING
    with Client(secure) as client:
        assert len(client.edit(edit_request(guide16), timeout=30).images) == 1
    with pytest.raises(grpc.RpcError) as plain:
        health(Connection(srv.address), timeout=2)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    other_ca = CertificateAuthority(ca.folder.parent / "other", "another CA")
    with pytest.raises(grpc.RpcError) as untrusted:  # a server the client's CA did not sign
        health(Connection(srv.address, tls_ca_file=other_ca.cert), timeout=2)
    assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_of_the_client_ca(make_server, ca, tmp_path):
    pair = ca.issue("server")
    clients = CertificateAuthority(tmp_path / "clients", "client CA")
    good = clients.issue("client-a", server=False)
    stranger = CertificateAuthority(tmp_path / "stranger", "stranger CA").issue("client-b", server=False)
    srv = make_server(tls_cert_file=str(pair.cert), tls_key_file=str(pair.key), tls_client_ca_file=str(clients.cert))
    mutual = Connection(srv.address, tls_ca_file=ca.cert, tls_client_cert_file=good.cert, tls_client_key_file=good.key)
    assert health(mutual) == health_pb2.HealthCheckResponse.SERVING
    for connection in (Connection(srv.address, tls_ca_file=ca.cert),  # no client certificate
                       Connection(srv.address, tls_ca_file=ca.cert, tls_client_cert_file=stranger.cert,
                                  tls_client_key_file=stranger.key)):  # one the client CA did not sign
        with pytest.raises(grpc.RpcError) as refused:
            health(connection, timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rotated_certificate_files_are_served_without_a_restart(make_server, ca, tmp_path):
    first, second = ca.issue("server-1"), ca.issue("server-2")
    served = ServedFiles(tmp_path / "served", first)
    key = served.key
    srv = make_server(tls_cert_file=str(served.cert), tls_key_file=str(key))
    assert served_serial(srv.running.port) == serial_of(first.cert.read_bytes())
    with Connection(srv.address, tls_ca_file=ca.cert).channel() as channel:  # a connection open across the rotation
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        served.rotate_to(second)  # as Kubernetes swaps a Secret volume
        assert served_serial(srv.running.port) == serial_of(second.cert.read_bytes())
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert health(Connection(srv.address, tls_ca_file=ca.cert)) == health_pb2.HealthCheckResponse.SERVING
    key.write_bytes(b"")  # a rotation caught half-written: the previous certificate stays
    assert served_serial(srv.running.port) == serial_of(second.cert.read_bytes())


def test_tls_settings_that_conflict_fail_at_start_up():
    from service.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="tls_cert_file and tls_key_file go together"):
        load_settings(env={}, tls_cert_file="/x.crt")
    with pytest.raises(SettingsError, match="needs tls_cert_file"):
        load_settings(env={}, tls_client_ca_file="/ca.crt")




# --- tokens and tenants ------------------------------------------------------------------

def code_of(call) -> grpc.StatusCode:
    return refused(call).code()


def test_no_token_or_a_wrong_one_is_unauthenticated_a_good_one_works_and_health_is_open(make_server, tmp_path, guide16):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")))
    with Client(srv.address) as anonymous:
        assert code_of(lambda: anonymous.edit(edit_request(guide16), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: anonymous.list_models(timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    with Client(Connection(srv.address, token="tok-a-" + "8" * 32)) as wrong:
        assert code_of(lambda: wrong.edit(edit_request(guide16), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    with Client(Connection(srv.address, token=TOKEN_A)) as good:
        assert len(good.edit(edit_request(guide16), timeout=30).images) == 1
        assert [event.WhichOneof("event") for event in good.stream_edit(edit_request(guide16), timeout=30)][-1] == "result"
        assert good.list_models(timeout=10)
    assert health(Connection(srv.address)) == health_pb2.HealthCheckResponse.SERVING
    metrics = srv.running.metrics.registry
    assert metrics.get_sample_value("sdedit_tenant_rejections_total", {"tenant": "", "reason": "unauthenticated"}) == 3
    assert metrics.get_sample_value("sdedit_tenant_requests_total", {"tenant": "a"}) == 2
    assert metrics.get_sample_value("sdedit_tenant_requests_total", {"tenant": "b"}) == 0


def test_a_tenant_beyond_its_rights_is_permission_denied(make_server, tmp_path, guide16):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")))
    with Client(Connection(srv.address, token=TOKEN_B)) as b:
        assert len(b.edit(edit_request(guide16), timeout=30).images) == 1  # gauss, by Edit: its rights
        assert code_of(lambda: b.edit(edit_request(guide16, model="gauss-ve"), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: b.list_models(timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: list(b.stream_edit(edit_request(guide16), timeout=10))) == grpc.StatusCode.PERMISSION_DENIED


def test_a_tenant_limited_to_some_models_lists_those_only(make_server, tmp_path):
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A},
                                                      {"name": "c", "token": TOKEN_B, "models": ["gauss", "mix"]}])
    srv = make_server(auth_tokens_file=str(tokens))
    with Client(Connection(srv.address, token=TOKEN_A)) as a, Client(Connection(srv.address, token=TOKEN_B)) as c:
        everything = [m.name for m in a.list_models(timeout=10)]
        assert len(everything) > 2 and {"gauss", "mix"} < set(everything)
        assert [m.name for m in c.list_models(timeout=10)] == [n for n in everything if n in ("gauss", "mix")]


def test_a_tenant_uses_jobs_by_default_and_not_beyond_its_methods(make_server, tmp_path, guide16):
    import json

    from sdedit.v1 import sdedit_pb2 as pb
    from service.tenancy.tenants import parse_tokens

    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")))
    with Client(Connection(srv.address, token=TOKEN_A)) as a:  # default methods: the job methods too
        job = a.stub.SubmitEdit(edit_request(guide16), timeout=10)
        events = list(a.stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=30))
        assert events[-1].WhichOneof("event") == "result"
        assert a.stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10).state == pb.JOB_STATE_SUCCEEDED
        assert [j.id for j in a.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [job.id]
    # the job ran as its owner (its weight in the fair share, its work in the tenant's count)
    assert srv.running.metrics.registry.get_sample_value("sdedit_tenant_work_total", {"tenant": "a"}) == 2
    with Client(Connection(srv.address, token=TOKEN_B)) as b:  # methods ["Edit"]
        assert code_of(lambda: b.stub.SubmitEdit(edit_request(guide16, model="gauss"), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: b.stub.GetJob(pb.GetJobRequest(id=job.id), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    [(_, only_jobs)] = parse_tokens(json.dumps({"tenants": [{"name": "q", "token": TOKEN_A, "methods": ["SubmitEdit", "WatchJob"]}]}))
    assert only_jobs.may_call("WatchJob") and not only_jobs.may_call("Edit")


def reflection_services(connection: Connection) -> list[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with connection.channel() as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        return [s.name for reply in replies for s in reply.list_services_response.service]


@pytest.mark.parametrize("open_discovery", [False, True])
def test_reflection_and_list_models_follow_the_open_discovery_setting(make_server, tmp_path, open_discovery):
    srv = make_server(auth_tokens_file=str(two_tenants(tmp_path / "tokens.json")), open_discovery=open_discovery)
    anonymous = Connection(srv.address)
    if open_discovery:
        assert "sdedit.v1.ImageEditor" in reflection_services(anonymous)
        with Client(anonymous) as client:
            assert client.list_models(timeout=10)
    else:
        assert code_of(lambda: reflection_services(anonymous)) == grpc.StatusCode.UNAUTHENTICATED
        assert "sdedit.v1.ImageEditor" in reflection_services(Connection(srv.address, token=TOKEN_A))


def test_the_tokens_file_is_reloaded_when_it_changes_and_a_broken_one_is_ignored(make_server, tmp_path, guide16):
    from service.tenancy import tenants

    path = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A}])
    srv = make_server(auth_tokens_file=str(path))
    tokens = srv.running.gate.tokens
    tokens.check_seconds = 0.0
    with Client(Connection(srv.address, token=TOKEN_B)) as b:
        assert code_of(lambda: b.list_models(timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        write_tokens(tmp_path / "new.json", [{"name": "a", "token": TOKEN_A}, {"name": "b", "token": TOKEN_B}])
        (tmp_path / "new.json").replace(path)
        assert b.list_models(timeout=10)
        path.write_text("{not json")
        assert b.list_models(timeout=10)  # the previous tenants stay
    assert tokens.reloads == 1 and tenants.RELOAD_CHECK_SECONDS > 0


@pytest.mark.parametrize("text, message", [
    ("[]", "expected"),
    ('{"tenants": [{"name": "A", "token": "x"}]}', "name"),
    ('{"tenants": [{"name": "a"}]}', "no token_sha256 or token"),
    ('{"tenants": [{"name": "a", "token": "short"}]}', "at least 16"),
    ('{"tenants": [{"name": "a", "token_sha256": "abc"}]}', "hex SHA-256"),
    ('{"tenants": [{"name": "a", "token": "0123456789abcdef", "weight": 0}]}', "weight"),
    ('{"tenants": [{"name": "a", "token": "0123456789abcdef", "methods": ["Delete"]}]}', "methods"),
    ('{"tenants": [{"name": "a", "token": "0123456789abcdef"}, {"name": "b", "token": "0123456789abcdef"}]}', "twice"),
    ('{"tenants": [{"name": "a", "token": "0123456789abcdef", "quota": 1}]}', "unknown field"),
])
def test_a_malformed_tokens_file_is_refused_with_a_reason_that_quotes_no_token(text, message):
    from service.tenancy.tenants import TokensFileError, parse_tokens

    with pytest.raises(TokensFileError, match=message) as raised:
        parse_tokens(text)
    assert "0123456789abcdef" not in str(raised.value)


def test_tokens_never_reach_the_log_and_the_cli_clients_speak_tls_with_a_token(serve, ca, tmp_path, guide16):
    """`sdedit serve` at DEBUG with TLS and tokens; `sdedit models` and `sdedit edit` (subprocesses) over TLS
    with a token, a wrong token and none; the whole log is searched for the tokens."""
    import subprocess
    import sys
    from pathlib import Path

    pair = ca.issue("server")
    tokens = two_tenants(tmp_path / "tokens.json")
    process = serve("--tls-cert-file", str(pair.cert), "--tls-key-file", str(pair.key), "--auth-tokens-file", str(tokens),
                    "--log-level", "DEBUG", tls_ca=ca.cert)
    sdedit = str(Path(sys.executable).parent / "sdedit")
    image = tmp_path / "guide.png"
    image.write_bytes(png(guide16))

    def cli(*args, token=None):
        env = {"SDEDIT_TOKEN": token} if token else {}
        import os
        return subprocess.run([sdedit, *args, "--address", process.address, "--tls-ca-file", str(ca.cert)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **env})

    models = cli("models", token=TOKEN_A)
    assert models.returncode == 0 and "gauss" in models.stdout
    edited = cli("edit", str(image), "-o", str(tmp_path / "out.png"), "--steps", "2", "--seed", "1", "--quiet",
                 "--token", TOKEN_A)
    assert edited.returncode == 0, edited.stderr
    assert (tmp_path / "out.png").exists()
    assert "UNAUTHENTICATED" in cli("models").stderr
    assert "UNAUTHENTICATED" in cli("models", token=TOKEN_A[:-1] + "x").stderr
    assert "PERMISSION_DENIED" in cli("models", token=TOKEN_B).stderr
    log = process.output()
    assert "authentication: 2 tenant(s)" in log
    for secret in (TOKEN_A, TOKEN_B, TOKEN_A[:-1] + "x", TOKEN_A[6:], TOKEN_B[6:]):
        assert secret not in log
    assert "Bearer" not in log


def test_start_up_warns_loudly_without_tls_or_tokens_beyond_loopback(caplog):
    from service.config import load_settings
    from service.server import warn_if_open

    with caplog.at_level("WARNING", logger="service.server"):
        warn_if_open(load_settings(env={}, host="127.0.0.1"))
        assert caplog.records == []
        warn_if_open(load_settings(env={}, host="0.0.0.0"))
    (record,) = caplog.records
    assert "SECURITY" in record.message and "--auth-tokens-file" in record.message and "--tls-cert-file" in record.message


# --- the fair share ----------------------------------------------------------------------

HEAVY_TOKEN, LIGHT_TOKEN = "heavy-" + "1" * 32, "light-" + "2" * 32
NETWORK_SECONDS = 0.03  # each call sleeps this long, as a GPU's would take whatever its batch


def _light_edits(client: Client, guide16, count: int, interval: float, timeout: float) -> list[float | grpc.StatusCode]:
    """One edit every `interval` s: each one's latency, or its error code."""
    results: list[float | grpc.StatusCode] = []
    for i in range(count):
        started = time.monotonic()
        try:
            client.edit(build_request(png(guide16), t0=0.5, steps=10, seed=1000 + i), timeout=timeout)
            results.append(time.monotonic() - started)
        except grpc.RpcError as exc:
            results.append(exc.code())
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return results


def _heavy_load(client: Client, guide16) -> list:
    """18 long edits (every level from t0 = 1: a thousand calls each), left running."""
    return [client.stub.Edit.future(build_request(png(guide16), t0=1.0, full_schedule=True, seed=i), timeout=120)
            for i in range(18)]


@pytest.mark.parametrize("tenants", [False, True], ids=["one-tenant-starves", "fair-share"])
def test_a_heavy_tenant_cannot_starve_a_light_one(make_server, tmp_path, guide16, tenants):
    """The starvation of the issue, then the fair share: max_batch_images 4, a heavy client
    holding 18 long edits, a light one sending an edit every second. As one tenant (no tokens:
    oldest first) the light edits wait behind the backlog and all miss a deadline of 4x their
    solo latency; as two tenants every light edit succeeds with p99 within 2x its solo latency."""
    from tests.models_for_tests import counting

    settings = dict(max_active_edits=24, max_queue=8, max_batch_images=4, cache="none")
    if tenants:
        settings["auth_tokens_file"] = str(write_tokens(tmp_path / "tokens.json", [
            {"name": "heavy", "token": HEAVY_TOKEN}, {"name": "light", "token": LIGHT_TOKEN}]))
    srv = make_server(wrap_model=counting(NETWORK_SECONDS), **settings)
    heavy_client = Client(Connection(srv.address, token=HEAVY_TOKEN if tenants else ""))
    light_client = Client(Connection(srv.address, token=LIGHT_TOKEN if tenants else ""))
    try:
        solo = sorted(_light_edits(light_client, guide16, 3, 0.0, 30))
        assert all(isinstance(s, float) for s in solo)
        solo_latency = solo[1]
        heavy = _heavy_load(heavy_client, guide16)
        time.sleep(1.0)  # the backlog is in
        light = _light_edits(light_client, guide16, 8 if tenants else 3, 1.0, max(4 * solo_latency, 2.0))
        assert not any(f.done() for f in heavy)  # the heavy edits were running all along
    finally:
        for f in locals().get("heavy", []):
            f.cancel()
        heavy_client.close()
        light_client.close()
    if not tenants:
        assert light == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
        return
    assert all(isinstance(x, float) for x in light), light
    p99 = sorted(light)[-1]  # of 8: the worst
    print(f"solo {solo}, light under load {light}")
    assert p99 <= 2 * solo_latency, (solo, light)


# --- quotas ------------------------------------------------------------------------------


def retry_delay(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay of an error, in seconds."""
    from google.rpc import error_details_pb2

    infos = status_details(error, error_details_pb2.RetryInfo)
    return infos[0].retry_delay.ToTimedelta().total_seconds() if infos else None


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_work_per_minute_counts_network_calls_times_images_and_says_when_to_retry(make_server, tmp_path, guide16):
    """Each edit is 2 steps: 2 x num_samples of work; the tenant has 40 a minute."""
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A, "work_per_minute": 40}])
    srv = make_server(auth_tokens_file=str(tokens), max_batch_images=32)
    with Client(Connection(srv.address, token=TOKEN_A)) as a:
        assert len(a.edit(edit_request(guide16, num_samples=16), timeout=30).images) == 16  # 32 of 40
        a.edit(edit_request(guide16), timeout=30)  # 34
        a.edit(edit_request(guide16, num_samples=3), timeout=30)  # 40
        over = refused(lambda: a.edit(edit_request(guide16), timeout=30))
        assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "work quota" in over.details()
        assert 2.5 <= retry_delay(over) <= 3.01  # 2 units at 40 a minute: 3 s
        whole = refused(lambda: a.edit(edit_request(guide16, num_samples=16, repeats=2), timeout=30))  # 64 > 40
        assert whole.code() == grpc.StatusCode.PERMISSION_DENIED
        invalid = refused(lambda: a.edit(edit_request(guide16, t0=1.5), timeout=30))  # checked before the quota
        assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = srv.running.metrics.registry
    assert metrics.get_sample_value("sdedit_tenant_rejections_total", {"tenant": "a", "reason": "work_per_minute"}) == 1


def test_a_job_refused_for_its_webhook_url_is_not_charged_to_the_work_quota(make_server, tmp_path, guide16):
    """Each job is 2 steps x 1 image; the tenant has 4 a minute: ten refused submissions (a
    loopback webhook) later, two good ones still fit."""
    from sdedit.v1 import sdedit_pb2 as pb

    secret = tmp_path / "a.secret"
    secret.write_text("s" * 32)
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A, "work_per_minute": 4,
                                                      "webhook_secret_file": str(secret)}])
    srv = make_server(auth_tokens_file=str(tokens))
    with Client(Connection(srv.address, token=TOKEN_A)) as a:
        bad = edit_request(guide16)
        bad.job.webhook_url = "https://127.0.0.1:9/hook"
        for _ in range(10):
            refusal = refused(lambda: a.stub.SubmitEdit(bad, timeout=10))
            assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT and "job.webhook_url" in refusal.details()
        for _ in range(2):
            assert a.stub.SubmitEdit(edit_request(guide16), timeout=10).state == pb.JOB_STATE_QUEUED
        assert refused(lambda: a.stub.SubmitEdit(edit_request(guide16), timeout=10)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_max_in_flight_refuses_an_edit_beyond_it_until_one_ends(make_server, tmp_path, guide16):
    from tests.models_for_tests import counting

    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A, "max_in_flight": 1},
                                                     {"name": "b", "token": TOKEN_B}])
    srv = make_server(wrap_model=counting(0.01), auth_tokens_file=str(tokens), cache="none")
    with Client(Connection(srv.address, token=TOKEN_A)) as a, Client(Connection(srv.address, token=TOKEN_B)) as b:
        long = a.stub.Edit.future(build_request(png(guide16), t0=1.0, steps=300, seed=1), timeout=60)
        time.sleep(0.5)
        over = refused(lambda: a.edit(edit_request(guide16), timeout=30))
        assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_in_flight" in over.details()
        assert retry_delay(over) == 1.0
        b.edit(edit_request(guide16), timeout=30)  # another tenant is not held back
        long.result(60)
        a.edit(edit_request(guide16), timeout=30)  # its lease was released


@pytest.mark.parametrize("fail_open", [True, False])
def test_with_redis_down_quotas_fail_open_or_closed_as_set_and_say_so_in_metrics(make_server, tmp_path, guide16, fail_open):
    tokens = write_tokens(tmp_path / "tokens.json", [{"name": "a", "token": TOKEN_A, "work_per_minute": 1000}])
    srv = make_server(auth_tokens_file=str(tokens), cache="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                      quota_fail_open=fail_open, redis_timeout_seconds=0.2)
    with Client(Connection(srv.address, token=TOKEN_A)) as a:
        if fail_open:
            a.edit(edit_request(guide16), timeout=30)
        else:
            assert refused(lambda: a.edit(edit_request(guide16), timeout=30)).code() == grpc.StatusCode.UNAVAILABLE
    decision = "allowed" if fail_open else "refused"
    assert srv.running.metrics.registry.get_sample_value("sdedit_quota_store_errors_total", {"decision": decision}) == 1


@pytest.mark.e2e
def test_two_service_processes_sharing_one_redis_enforce_one_tenant_quota(serve, redis_server, tmp_path, guide16):
    """`sdedit serve` twice on one real Redis: a tenant's work per minute (2 units an edit, 10 a
    minute) and its edits in flight (1) are counted once for both replicas."""
    tokens = write_tokens(tmp_path / "tokens.json", [
        {"name": "a", "token": TOKEN_A, "work_per_minute": 10},
        {"name": "b", "token": TOKEN_B, "max_in_flight": 1}])
    servers = [serve("--auth-tokens-file", str(tokens), "--cache", "redis", "--redis-url", redis_server.url)
               for _ in range(2)]
    clients = [Client(Connection(s.address, token=TOKEN_A)) for s in servers]
    try:
        for i in range(5):
            clients[i % 2].edit(edit_request(guide16, seed=i), timeout=30)
        for client in clients:
            over = refused(lambda c=client: c.edit(edit_request(guide16), timeout=30))
            assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay(over) > 0
        b = [Client(Connection(s.address, token=TOKEN_B)) for s in servers]
        long = b[0].stub.Edit.future(build_request(png(guide16), t0=1.0, full_schedule=True, repeats=10, seed=2),
                                     timeout=60)
        time.sleep(1.0)
        over = refused(lambda: b[1].edit(edit_request(guide16), timeout=30))
        assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_in_flight" in over.details()
        long.cancel()
        for client in b:
            client.close()
    finally:
        for client in clients:
            client.close()
    assert "tenant quotas: in redis" in servers[0].output()


# --- request_id per tenant, metrics per tenant, the metrics endpoint -----------------------


def test_a_request_id_is_the_tenants_own(make_server, tmp_path, guide16):
    srv = make_server(auth_tokens_file=str(write_tokens(tmp_path / "tokens.json", [
        {"name": "a", "token": TOKEN_A}, {"name": "b", "token": TOKEN_B}])))
    with Client(Connection(srv.address, token=TOKEN_A)) as a, Client(Connection(srv.address, token=TOKEN_B)) as b:
        first = a.edit(edit_request(guide16, request_id="order-1", seed=1), timeout=30)
        # b's order-1 is another request: no conflict with a's, and not a's response
        other = b.edit(edit_request(guide16, request_id="order-1", seed=2), timeout=30)
        assert other.images[0].seed == 2 and not other.cached
        assert a.edit(edit_request(guide16, request_id="order-1", seed=1), timeout=30).images[0].data == first.images[0].data
        squat = refused(lambda: a.edit(edit_request(guide16, request_id="order-1", seed=3), timeout=30))
        assert squat.code() == grpc.StatusCode.ALREADY_EXISTS
    metrics = srv.running.metrics.registry
    assert metrics.get_sample_value("sdedit_tenant_work_total", {"tenant": "a"}) == 2  # 2 calls x 1 image; the replay: none
    assert metrics.get_sample_value("sdedit_tenant_work_total", {"tenant": "b"}) == 2


def test_the_metrics_endpoint_binds_loopback_by_default_and_stays_bounded(make_server):
    import urllib.request

    from service.config import Settings
    from service.metrics import MetricsServer

    assert Settings().metrics_host == "127.0.0.1"
    srv = make_server(metrics_port=0)
    port = srv.running.metrics_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]  # connect, send nothing
    try:
        time.sleep(0.5)
        import threading

        workers = [t for t in threading.enumerate() if t.name.startswith("sdedit-metrics")]
        assert len(workers) <= MetricsServer.WORKERS + 1  # the workers and the accepting thread
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= 20 - MetricsServer.WORKERS - MetricsServer.BACKLOG  # beyond the bound: closed at once
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert b"sdedit_edits_in_flight" in reply.read()


def test_a_plaintext_health_port_answers_probes_while_the_grpc_port_serves_tls_only(make_server, ca):
    from service.client import Client as EditClient
    pair = ca.issue("server")
    srv = make_server(tls_cert_file=str(pair.cert), tls_key_file=str(pair.key), health_port=free_port())
    probe = Connection(f"127.0.0.1:{srv.running.health_port}")
    assert health(probe) == health_pb2.HealthCheckResponse.SERVING
    with EditClient(probe) as client:  # only health there
        assert code_of(lambda: client.list_models(timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
