"""The one call pipeline: every door runs every request through here, once.

    authenticate -> parse -> plan -> quota lease -> run

The gRPC interceptor (unary and streaming calls), the HTTP door (JSON, multipart, SSE) and so
SubmitEdit (a job's plan is made here and stored; its worker runs it) all open their calls with
`CallPipeline.call`; nothing else authenticates, validates or plans. A door supplies only what
is its own: the caller's credentials (gRPC metadata, or the `Authorization` header), a parser
from its wire format to `Parsed` (its message and, for an edit, the plain request), and what it
does with the `Call` it gets back.

The token is checked before the request is even parsed; an edit's rights on its model before
it is planned; its plan (service/pipeline/plan.py) before anything is charged; its quota lease
last, released when the call ends. SubmitEdit is charged its work only: its job's run, not the
submit, holds a place in the tenant's max_in_flight (service/jobs/worker.py). The tenant travels as plain data on the Call (and, for code
below the handler, as service.tenancy.tenants.current_tenant()).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from service.pipeline.plan import RequestPlan
from service.pipeline.streams import StreamSlots
from service.requests import EditRequestData
from service.tenancy.auth import Gate
from service.tenancy.tenants import Tenant, reset_current_tenant, set_current_tenant

SERVICE = "/sdedit.v1.ImageEditor/"
EDIT, STREAM_EDIT, SUBMIT_EDIT = SERVICE + "Edit", SERVICE + "StreamEdit", SERVICE + "SubmitEdit"
WATCH_JOB = SERVICE + "WatchJob"  # an event stream: holds one of its tenant's stream slots while open
PLANNED = frozenset({EDIT, STREAM_EDIT, SUBMIT_EDIT})  # planned, and charged to the tenant's quotas


@dataclass(frozen=True)
class JobOptions:
    """SubmitEdit's own fields."""

    priority: int = 0
    webhook_url: str = ""


@dataclass(frozen=True)
class Parsed:
    """What a door parsed of a request: its own message (handed back to its handler), and for
    an edit the plain request; the deadline the caller set (time.monotonic(); None: none)."""

    message: object
    edit: EditRequestData | None = None
    job: JobOptions | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class Call:
    """An admitted call: who, what they sent, and (for an edit) its plan."""

    method: str
    tenant: Tenant
    message: object
    plan: RequestPlan | None = None
    job: JobOptions | None = None
    deadline: float | None = None


Precheck = Callable[[Call], None]


class CallPipeline:
    def __init__(self, gate: Gate, plan: Callable[[EditRequestData], RequestPlan],
                 prechecks: Mapping[str, Precheck] | None = None, streams: StreamSlots | None = None):
        """plan(request) -> its RequestPlan (raises the request's InvalidArgument, or Unavailable
        while draining): the edit service's planner. prechecks: per method, the checks that need
        a handler's state (a job's webhook URL), made before a quota is charged for a request
        that would be refused. streams: the caps on open WatchJob streams (None: no cap)."""
        self.gate = gate
        self.plan = plan
        self.prechecks = dict(prechecks or {})
        self.streams = streams

    def authenticate(self, method: str, credentials: Iterable[tuple[str, str | bytes]] | None) -> Tenant:
        """The caller's tenant; raises Unauthenticated or PermissionDenied (also for calls that
        are not planned, such as server reflection)."""
        return self.gate.authenticate(method, credentials)

    @contextlib.asynccontextmanager
    async def call(self, method: str, credentials: Iterable[tuple[str, str | bytes]] | None,
                   parse: Callable[[], Awaitable[Parsed]]) -> AsyncIterator[Call]:
        tenant = self.gate.authenticate(method, credentials)
        parsed = await parse()
        call = Call(method, tenant, parsed.message, job=parsed.job, deadline=parsed.deadline)
        lease = None
        if method in PLANNED and parsed.edit is not None:
            self.gate.check_model(tenant, parsed.edit.model)
            call = Call(method, tenant, parsed.message, self.plan(parsed.edit), parsed.job, parsed.deadline)
            precheck = self.prechecks.get(method)
            if precheck is not None:
                precheck(call)
            lease = await self.gate.lease(tenant, call.plan.work, in_flight=method != SUBMIT_EDIT)
        token = set_current_tenant(tenant)
        try:
            with self._stream_slot(method, tenant):
                yield call
        finally:
            if lease is not None:
                lease.release()
            reset_current_tenant(token)

    def _stream_slot(self, method: str, tenant: Tenant) -> contextlib.AbstractContextManager:
        """A WatchJob holds a stream slot until it ends, however it ends; raises TooManyStreams."""
        if method != WATCH_JOB or self.streams is None:
            return contextlib.nullcontext()
        return self.streams.hold(tenant.name)
