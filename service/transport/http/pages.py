"""What the HTTP door serves that is not an API call: /healthz, /openapi.json and the editor
page's files (service/transport/http/static/)."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from google.rpc import code_pb2

from service.transport.http.errors import json_dumps, transport_error

STATIC_DIR = Path(__file__).resolve().parent / "static"


def health_response(serving: bool) -> web.Response:
    """grpc.health.v1's answer for the whole server: 200 SERVING, or 503 NOT_SERVING."""
    return web.Response(text=json_dumps({"status": "SERVING" if serving else "NOT_SERVING"}), status=200 if serving else 503,
                        content_type="application/json")


class OpenApiDocument:
    """The OpenAPI document, built on first use and kept."""

    def __init__(self, build: Callable[[], dict] | None = None):
        self._build = build
        self._body: bytes | None = None

    def response(self) -> web.Response:
        if self._body is None:
            if self._build is None:
                from service.transport.http.openapi import openapi_document

                self._build = openapi_document
            self._body = json_dumps(self._build()).encode()
        return web.Response(body=self._body, content_type="application/json")


def file_response(static_dir: Path, name: str) -> web.StreamResponse:
    """A file of the page (never one outside static_dir)."""
    root = static_dir.resolve()
    try:
        path = (root / name).resolve()
        found = root in path.parents and path.is_file()
    except (OSError, ValueError):  # a null byte, a name too long: no such file (and no path in the log)
        found = False
    if not found:
        raise transport_error(404, code_pb2.NOT_FOUND, "NO_SUCH_FILE", f"no file {name[:100]!r} under /static/")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})
