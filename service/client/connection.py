"""How this project's clients reach the service: address, TLS (and mutual TLS) and a token.

Used by `service.client.Client`, `sdedit edit/models/loadtest` and the health check. The
token goes as `authorization: Bearer <token>` metadata on every call (a client interceptor),
over TLS or, on loopback, over plaintext.
"""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.tls import channel_credentials

MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


@dataclass(frozen=True)
class Connection:
    address: str
    tls_ca_file: Path | None = None  # the CA of the server's certificate; None with tls: the system's
    tls_client_cert_file: Path | None = None  # mutual TLS
    tls_client_key_file: Path | None = None
    tls_server_name: str = ""  # the name to check the server's certificate against, if not the address's host
    tls: bool = False  # TLS with the system's roots (implied by any tls_* file)
    token: str = ""

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.tls_ca_file or self.tls_client_cert_file)

    def __repr__(self) -> str:  # never the token
        return f"Connection({self.address!r}, secure={self.secure}, token={'***' if self.token else None})"

    def _options(self) -> list:
        return OPTIONS + ([("grpc.ssl_target_name_override", self.tls_server_name)] if self.tls_server_name else [])

    def _credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.tls_ca_file, self.tls_client_cert_file, self.tls_client_key_file)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        channel = (grpc.secure_channel(self.address, self._credentials(), options=self._options()) if self.secure
                   else grpc.insecure_channel(self.address, options=self._options()))
        return grpc.intercept_channel(channel, _SyncToken(self.metadata())) if self.token else channel

    def aio_channel(self) -> grpc.aio.Channel:
        interceptors = ([_AioUnaryToken(self.metadata()), _AioStreamToken(self.metadata()), _AioBidiToken(self.metadata())]
                        if self.token else None)
        if self.secure:
            return grpc.aio.secure_channel(self.address, self._credentials(), options=self._options(),
                                           interceptors=interceptors)
        return grpc.aio.insecure_channel(self.address, options=self._options(), interceptors=interceptors)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca-file", type=Path, help="connect over TLS, trusting this CA (PEM) for the server's certificate")
    parser.add_argument("--tls", action="store_true", help="connect over TLS, trusting the system's CAs")
    parser.add_argument("--tls-client-cert-file", type=Path, help="this client's certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-client-key-file", type=Path, help="this client's private key (PEM), for mutual TLS")
    parser.add_argument("--tls-server-name", default="", help="check the server's certificate for this name "
                        "instead of the address's host")
    parser.add_argument("--token", default="", help="bearer token (default: $SDEDIT_TOKEN); prefer the variable, a flag "
                        "shows in the process list")


def connection_from_args(args: argparse.Namespace, environ: dict | None = None) -> Connection:
    import os

    environ = os.environ if environ is None else environ
    if bool(args.tls_client_cert_file) != bool(args.tls_client_key_file):
        raise ValueError("--tls-client-cert-file and --tls-client-key-file go together")
    return Connection(args.address, args.tls_ca_file, args.tls_client_cert_file, args.tls_client_key_file,
                      args.tls_server_name, args.tls, args.token or environ.get("SDEDIT_TOKEN", ""))


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                   "compression")), grpc.ClientCallDetails):
    pass


def _with(details, metadata: tuple) -> _Details:
    return _Details(details.method, details.timeout, tuple(details.metadata or ()) + metadata, details.credentials,
                    details.wait_for_ready, details.compression)


class _SyncToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple):
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(_with(client_call_details, self._metadata), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(_with(client_call_details, self._metadata), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(_with(client_call_details, self._metadata), request_iterator)


def _aio_details(details, metadata: tuple) -> grpc.aio.ClientCallDetails:
    merged = grpc.aio.Metadata(*(tuple(details.metadata or ()) + metadata))
    return grpc.aio.ClientCallDetails(details.method, details.timeout, merged, details.credentials,
                                      details.wait_for_ready)


class _AioUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple):
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(_aio_details(client_call_details, self._metadata), request)


class _AioStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple):
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(_aio_details(client_call_details, self._metadata), request)


class _AioBidiToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple):
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(_aio_details(client_call_details, self._metadata), request_iterator)
