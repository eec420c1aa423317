"""TLS for the gRPC and HTTP ports, and the client side of it.

The server's credentials are dynamic: gRPC asks `CertificateFiles.fetch` for the certificate
configuration at every new handshake, and it re-reads the files only when they have changed
(inode, size or modification time, followed through the symbolic links that Kubernetes and
cert-manager swap when they rotate a Secret). A rotated certificate is served to the next
connection without a restart; connections already open keep theirs. A rotation caught half
written (a file missing or empty) keeps the certificates already served until the next look.

With a client CA, client certificates signed by it are required (mutual TLS).

The HTTP port (service/transport/http/) serves the same files through an ssl.SSLContext that follows
them the same way: at every handshake (its SNI callback) the files are looked at, and a new
context is built and used when they changed.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)  # follows symlinks: a swapped ..data link changes the inode
    return st.st_ino, st.st_size, st.st_mtime_ns


class CertificateFiles:
    """A certificate, its key and an optional client CA, re-read when they change."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None):
        self.files = [Path(cert_file), Path(key_file)] + ([Path(client_ca_file)] if client_ca_file else [])
        self._lock = threading.Lock()
        self._seen: list[tuple[int, int, int]] | None = None
        self.loads = 0  # how many times the files were (re)loaded, for tests and logs

    def _read(self) -> tuple[grpc.ServerCertificateConfiguration, list[tuple[int, int, int]]]:
        signature = [_signature(path) for path in self.files]
        cert, key, *ca = (path.read_bytes() for path in self.files)
        if not cert.strip() or not key.strip() or (ca and not ca[0].strip()):
            raise ValueError("a certificate file is empty")
        config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca[0] if ca else None)
        return config, signature

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The first configuration; a missing or unreadable file fails the start-up."""
        try:
            config, self._seen = self._read()
        except (OSError, ValueError) as exc:
            raise OSError(f"TLS: cannot read {', '.join(map(str, self.files))}: {exc}") from exc
        self.loads = 1
        return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate-configuration fetcher: a new configuration when the files
        changed, None to keep serving the current one."""
        with self._lock:
            try:
                if [_signature(path) for path in self.files] == self._seen:
                    return None
                config, signature = self._read()
            except (OSError, ValueError) as exc:
                log.warning("TLS certificate files changed but cannot be read (%s); serving the previous ones", exc)
                return None
            self._seen = signature
            self.loads += 1
            log.info("TLS certificates reloaded from %s", self.files[0])
            return config


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> grpc.ServerCredentials:
    files = CertificateFiles(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(files.initial(), files.fetch,
                                               require_client_authentication=client_ca_file is not None)


class SSLContextFiles:
    """The HTTP port's TLS: an ssl.SSLContext of the same files, rebuilt when they change."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None):
        self.files = [Path(cert_file), Path(key_file)] + ([Path(client_ca_file)] if client_ca_file else [])
        self._lock = threading.Lock()
        self._seen: list[tuple[int, int, int]] | None = None
        self._current: ssl.SSLContext | None = None
        self.loads = 0

    def _build(self) -> ssl.SSLContext:
        cert, key, *ca = self.files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(cafile=ca[0])
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        context.sni_callback = self._handshake
        return context

    def initial(self) -> ssl.SSLContext:
        """The listener's context; a missing or unreadable file fails the start-up."""
        try:
            signature = [_signature(path) for path in self.files]
            self._current = self._build()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise OSError(f"TLS: cannot read {', '.join(map(str, self.files))}: {exc}") from exc
        self._seen, self.loads = signature, 1
        return self._current

    def current(self) -> ssl.SSLContext:
        """The context for the next handshake: rebuilt when the files changed; the previous
        one while they cannot be read."""
        with self._lock:
            try:
                signature = [_signature(path) for path in self.files]
                if signature != self._seen:
                    self._current = self._build()
                    self._seen = signature
                    self.loads += 1
                    log.info("TLS certificates reloaded from %s (HTTP)", self.files[0])
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning("TLS certificate files changed but cannot be read (%s); serving the previous ones (HTTP)", exc)
            assert self._current is not None
            return self._current

    def _handshake(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current()
        if current is not context:
            connection.context = current


def channel_credentials(ca_file: Path | str | None = None, cert_file: Path | str | None = None,
                        key_file: Path | str | None = None) -> grpc.ChannelCredentials:
    """Client TLS: the CA that signed the server's certificate (None: the system's roots) and,
    for mutual TLS, this client's certificate and key."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs its key (and the key its certificate)")
    read = lambda path: Path(path).read_bytes() if path else None
    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "[::1]", "localhost") or host.startswith("127.")
