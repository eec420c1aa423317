"""Who is calling, and may they: the policy the interceptor (service/transport/grpc/status.py) applies
before any handler runs. Handlers never see a token; they read the Tenant (plain data) from
service.tenancy.tenants.current_tenant().

- grpc.health.v1 is always open (probes carry no token).
- With --open-discovery, reflection and ListModels are open too.
- Anything else needs `authorization: Bearer <token>`: none, or a token no tenant holds ->
  UNAUTHENTICATED; a tenant calling a method or naming a model beyond its rights ->
  PERMISSION_DENIED; over its quota (service/tenancy/quotas.py) -> RESOURCE_EXHAUSTED with RetryInfo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from service.errors import PermissionDenied, Unauthenticated
from service.tenancy.tenants import ANONYMOUS, Tenant, TokensFile

HEALTH_PREFIX = "/grpc.health.v1.Health/"
DISCOVERY_METHODS = frozenset({"/sdedit.v1.ImageEditor/ListModels",
                               "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                               "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"})
# Quotas are charged on these; a job's work is charged when it is submitted.
EDIT_METHODS = frozenset({"/sdedit.v1.ImageEditor/Edit", "/sdedit.v1.ImageEditor/StreamEdit",
                          "/sdedit.v1.ImageEditor/SubmitEdit"})


class Lease(Protocol):
    def release(self) -> None: ...


class GateObserver(Protocol):
    def tenant_request(self, tenant: str) -> None: ...

    def tenant_rejected(self, tenant: str, reason: str) -> None: ...


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Gate:
    def __init__(self, tokens: TokensFile | None, *, open_discovery: bool = False, default_model: str = "",
                 observer: GateObserver | None = None, quotas=None, work_of: Callable[[object], int] | None = None):
        """quotas: service.tenancy.quotas.Quotas (None: no quotas); work_of(request) -> its work in
        network calls x images (raises the request's InvalidArgument)."""
        self.tokens = tokens
        self.open_discovery = open_discovery
        self.default_model = default_model
        self.observer = observer
        self.quotas = quotas
        self.work_of = work_of
        # precheck(tenant, method, request): the request's checks that need the handler's state
        # (a job's webhook URL), made before a quota is charged for a request that will be refused
        self.precheck: Callable[[Tenant, str, object], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.tokens is not None

    def is_open(self, method: str) -> bool:
        return (self.tokens is None or method.startswith(HEALTH_PREFIX)
                or (self.open_discovery and method in DISCOVERY_METHODS))

    def _reject(self, tenant: str, reason: str, error: Exception) -> Exception:
        if self.observer is not None:
            self.observer.tenant_rejected(tenant, reason)
        return error

    def authenticate(self, method: str, metadata) -> Tenant:
        """The caller's tenant (ANONYMOUS for open methods); raises Unauthenticated or
        PermissionDenied."""
        if self.is_open(method):
            return ANONYMOUS
        assert self.tokens is not None
        token = bearer_token(metadata)
        if token is None:
            raise self._reject("", "unauthenticated", Unauthenticated(
                "this call needs a token: send the metadata `authorization: Bearer <token>`"))
        tenant = self.tokens.authenticate(token)
        if tenant is None:
            raise self._reject("", "unauthenticated", Unauthenticated("the token is not valid"))
        short = method.rpartition("/")[2]
        if not tenant.may_call(short):
            raise self._reject(tenant.name, "permission_denied",
                               PermissionDenied(f"tenant {tenant.name!r} may not call {short}"))
        return tenant

    async def admit(self, tenant: Tenant, method: str, request: object) -> Lease | None:
        """Rights on the parsed request (its model), then the tenant's quotas; the lease (if
        any) is released when the call ends."""
        if tenant is ANONYMOUS or method not in EDIT_METHODS:
            return None
        if self.observer is not None:
            self.observer.tenant_request(tenant.name)
        model = getattr(request, "model", "") or self.default_model
        if not tenant.may_use(model):
            raise self._reject(tenant.name, "permission_denied",
                               PermissionDenied(f"tenant {tenant.name!r} may not use model {model!r}"))
        if self.quotas is None or (not tenant.max_in_flight and not tenant.work_per_minute):
            return None
        if self.precheck is not None:
            self.precheck(tenant, method, request)
        work = self.work_of(request) if self.work_of is not None and tenant.work_per_minute else 0
        try:
            return await self.quotas.acquire(tenant, work)
        except Exception as exc:
            quota = getattr(exc, "quota", None)
            if quota is not None and self.observer is not None:
                self.observer.tenant_rejected(tenant.name, quota)
            raise
