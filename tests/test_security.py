"""Security: TLS and mutual TLS with real certificates (made by openssl in the test), certificate
rotation without a restart, tokens and tenants, quotas, the fair share, request_id per tenant."""

from __future__ import annotations

import shutil
import socket
import ssl

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import Client, build_request
from service.connection import Connection
from tests.certs import CertificateAuthority, serial_of
from tests.conftest import png

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates "
                                "(scripts/install_test_tools.sh installs it)")


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca")


def health(connection: Connection, timeout: float = 5) -> int:
    with connection.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def served_serial(port: int) -> str:
    """The serial number of the certificate the server presents to a new connection."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


def edit_request(guide16, **kwargs):
    return build_request(png(guide16), t0=0.3, steps=2, seed=1, **kwargs)


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
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "tls.crt", served / "tls.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    srv = make_server(tls_cert_file=str(cert), tls_key_file=str(key))
    assert served_serial(srv.running.port) == serial_of(first.cert.read_bytes())
    with Connection(srv.address, tls_ca_file=ca.cert).channel() as channel:  # a connection open across the rotation
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        # as Kubernetes swaps a Secret volume: new files, renamed into place
        shutil.copy(second.cert, served / "new.crt")
        shutil.copy(second.key, served / "new.key")
        (served / "new.key").replace(key)
        (served / "new.crt").replace(cert)
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


