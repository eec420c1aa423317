"""A job as plain data: its record, what a store keeps of it, and the states it moves through.

    queued -> running -> succeeded | failed        queued | running -> cancelled
    running -> queued (its replica died or stopped; another one runs it again)

Terminal states are sticky: a replica that finishes late (its lease was taken over) never
overwrites the first ending. A job stores its request's plan (service/pipeline/plan.py
encode_plan), which its worker runs as it was planned at submission. The events, the result
and the error are opaque bytes to the jobs layer; the transport encodes them
(service/transport/grpc/jobs.py), so protobuf never reaches here.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Protocol

from service.requests import EditOutcome, ProgressUpdate
from service.sde import Progress

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
# A completion webhook's delivery: waiting for the job's end, then pending (POSTs and retries)
# until delivered, failed (given up), refused (a forbidden address) or abandoned (the replica
# delivering it stopped first).
WEBHOOK_STATES = ("waiting", "pending", "delivered", "failed", "refused", "abandoned")
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
LANES = ("high", "normal", "low")  # taken in this order; each first in, first out
ID_BYTES = 24  # 192 random bits: unguessable
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_job_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def is_job_id(text: str) -> bool:
    """Whether text can be a job's id (what new_job_id makes: URL-safe base64, no ':' that
    would name another key of the job in a store)."""
    return bool(JOB_ID.fullmatch(text))


def lane_of(priority: int) -> str:
    return LANES[0] if priority > 0 else LANES[2] if priority < 0 else LANES[1]


@dataclass
class JobRecord:
    id: str
    owner: str = ""  # the tenant; "" while the service has one
    state: str = QUEUED
    priority: int = 0
    attempts: int = 0  # runs started
    created: float = 0.0  # Unix times; 0 = not yet
    started: float = 0.0
    ended: float = 0.0
    expires: float = 0.0
    progress: Progress | None = None  # the latest step of the current run
    error: bytes = b""  # the error status, as the transport encoded it
    sequence: int = 0  # events so far; the terminal event is the last
    webhook_url: str = ""  # the completion webhook (service/jobs/webhooks/); "" = none
    webhook_state: str = ""  # one of WEBHOOK_STATES once there is a webhook
    webhook_attempts: int = 0  # POSTs made
    webhook_http_status: int = 0  # of the last answer; 0 = none
    webhook_error: str = ""  # what went wrong last
    result: bytes | None = field(default=None, compare=False)  # filled by get(with_result=True)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_fields(self) -> dict[str, str | bytes]:
        """A flat mapping of strings (a Redis hash), without the result."""
        values = asdict(self)
        values.pop("result")
        values["progress"] = "" if self.progress is None else json.dumps(asdict(self.progress))
        return {k: v if isinstance(v, bytes) else str(v) for k, v in values.items()}

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> JobRecord:
        values = {k.decode(): v for k, v in raw.items()}
        progress = values.get("progress", b"")
        return cls(
            id=values["id"].decode(), owner=values.get("owner", b"").decode(), state=values["state"].decode(),
            priority=int(values.get("priority", 0)), attempts=int(values.get("attempts", 0)),
            created=float(values.get("created", 0)), started=float(values.get("started", 0)),
            ended=float(values.get("ended", 0)), expires=float(values.get("expires", 0)),
            progress=Progress(**json.loads(progress)) if progress else None,
            error=values.get("error", b""), sequence=int(values.get("sequence", 0)),
            webhook_url=values.get("webhook_url", b"").decode(), webhook_state=values.get("webhook_state", b"").decode(),
            webhook_attempts=int(values.get("webhook_attempts", 0)),
            webhook_http_status=int(values.get("webhook_http_status", 0)),
            webhook_error=values.get("webhook_error", b"").decode(),
        )


@dataclass(frozen=True)
class JobEvent:
    """One of a job's events: a progress payload, or (terminal) the end of the job."""

    sequence: int
    payload: bytes = b""
    terminal: bool = False


class JobCodec(Protocol):
    """What the transport supplies: its own encoding of requests, events, results, errors."""

    def encode_event(self, update: ProgressUpdate) -> bytes: ...

    def encode_result(self, outcome: EditOutcome) -> bytes: ...

    def encode_error(self, exc: BaseException) -> bytes: ...

    def encode_webhook(self, record: JobRecord) -> bytes:
        """The body of the job's completion webhook (the record with its result, less the images' bytes)."""
