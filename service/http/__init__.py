"""The HTTP/JSON door on `--http-port` (docs/http.md): REST + JSON over the gRPC servicer."""

from service.http.door import HttpDoor

__all__ = ["HttpDoor"]
