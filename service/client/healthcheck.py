"""`python -m service.client.healthcheck`: exit 0 when the local `sdedit serve` reports SERVING.

For container runtimes without native gRPC probes (Docker's HEALTHCHECK, compose). It reads
the same settings as the server (SDEDIT_* environment, so the same port) and asks
grpc.health.v1 on this host; Kubernetes uses its native gRPC probes instead. Health needs no
token; when the server serves TLS, give --tls-ca-file (and, for mutual TLS, a client
certificate and key), as for `sdedit edit`.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client.connection import Connection, add_connection_arguments, connection_from_args
from service.config import SettingsError, load_settings


def check(address: str | Connection, service: str, timeout: float) -> str:
    """The status name (SERVING, NOT_SERVING, ...) or the gRPC error's code name."""
    connection = address if isinstance(address, Connection) else Connection(address)
    with connection.channel() as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="", help="health service name: '' (readiness, default) or 'liveness'")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--address", default="", help="HOST:PORT (default: this host, the port of the SDEDIT_* settings)")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "[::]") else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    args.address = args.address or f"{host}:{settings.port}"
    try:
        connection = connection_from_args(args)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    status = check(connection, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
