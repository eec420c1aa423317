"""The HTTP routes, in one table: the door (service/transport/http/door.py) registers its handlers from
it and the OpenAPI document (service/transport/http/openapi.py) describes its paths from it, so the two
cannot disagree. Each route that does a gRPC method's work names it (`rpc`): the gate checks
the caller's rights on that name, and the servicer's method of that name answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RPC_PREFIX = "/sdedit.v1.ImageEditor/"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    schema: dict
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str  # HTTP method
    path: str  # aiohttp's template, also OpenAPI's
    handler: str  # the door's method that answers
    summary: str
    rpc: str = ""  # the gRPC method whose work it does (its rights and quotas apply)
    request: str = ""  # sdedit.v1 message of the JSON body ("" = no body)
    response: str = ""  # sdedit.v1 message of the JSON answer
    media: str = "application/json"  # of the answer
    params: tuple[Param, ...] = ()
    multipart: bool = False  # the body may also be multipart/form-data (images as file parts)
    tags: tuple[str, ...] = field(default=("edits",))
    router_path: str = ""  # aiohttp's template when it differs (a tail that may hold slashes)

    @property
    def full_rpc(self) -> str:
        return RPC_PREFIX + self.rpc if self.rpc else ""


JOB_ID = Param("id", "path", {"type": "string", "minLength": 1}, "the job's id (from POST /v1/jobs)", required=True)
TIMEOUT = Param("Request-Timeout", "header", {"type": "number", "exclusiveMinimum": 0},
                "the edit's deadline in seconds, like grpc-timeout (DEADLINE_EXCEEDED, 504, when it passes)")

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/edits", "edit", "Edit an image and wait for the result (gRPC Edit)", rpc="Edit",
          request="sdedit.v1.EditRequest", response="sdedit.v1.EditResponse", params=(TIMEOUT,), multipart=True),
    Route("POST", "/v1/jobs", "submit", "Submit an edit as a job (gRPC SubmitEdit)", rpc="SubmitEdit",
          request="sdedit.v1.EditRequest", response="sdedit.v1.Job", multipart=True, tags=("jobs",)),
    Route("GET", "/v1/jobs", "list_jobs", "The caller's jobs, newest first (gRPC ListJobs)", rpc="ListJobs",
          response="sdedit.v1.ListJobsResponse", tags=("jobs",), params=(
              Param("pageSize", "query", {"type": "integer", "minimum": 0, "maximum": 4294967295},
                    "jobs per page (0: 50; at most 1000)"),
              Param("pageToken", "query", {"type": "string"}, "nextPageToken of the previous page"))),
    Route("GET", "/v1/jobs/{id}", "get_job", "A job: its state, progress, result or error (gRPC GetJob)", rpc="GetJob",
          response="sdedit.v1.Job", params=(JOB_ID,), tags=("jobs",)),
    Route("DELETE", "/v1/jobs/{id}", "cancel_job", "Cancel a job (gRPC CancelJob); a job that ended stays as it is",
          rpc="CancelJob", response="sdedit.v1.Job", params=(JOB_ID,), tags=("jobs",)),
    Route("GET", "/v1/jobs/{id}/events", "watch_job",
          "A job's events as Server-Sent Events (gRPC WatchJob): `id: <sequence>`, `event: progress|preview|result|error`, "
          "`data: <EditEvent JSON>` (error: the error JSON); ends after result or error", rpc="WatchJob",
          response="sdedit.v1.EditEvent", media="text/event-stream", tags=("jobs",), params=(
              JOB_ID,
              Param("afterSequence", "query", {"type": "integer", "minimum": 0, "maximum": 18446744073709551615},
                    "resume: only the events after this sequence"),
              Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    "resume (what EventSource sends when it reconnects); wins over afterSequence"))),
    Route("GET", "/v1/models", "list_models", "The models served and the default (gRPC ListModels)", rpc="ListModels",
          response="sdedit.v1.ListModelsResponse", tags=("models",)),
    Route("GET", "/healthz", "healthz", "Health as grpc.health.v1 says it for the service \"\": 200 SERVING or "
          "503 NOT_SERVING (draining, or the score backend is not ready)", response="Health", tags=("health",)),
    Route("GET", "/openapi.json", "openapi", "This document", tags=("meta",)),
    Route("GET", "/", "index", "The stroke editor page", media="text/html", tags=("page",)),
    Route("GET", "/static/{name}", "static", "The page's files", media="application/octet-stream", tags=("page",),
          params=(Param("name", "path", {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}, "a file name",
                        required=True),), router_path="/static/{name:.+}"),
)
