"""The HTTP/JSON door on `--http-port` (docs/http.md): REST + JSON over the gRPC servicer."""

from service.transport.http.door import HttpDoor

__all__ = ["HttpDoor"]
