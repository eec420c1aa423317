"""Who is calling, and may they: the policy the call pipeline (service/pipeline/calls.py)
applies before any handler runs. Handlers never see a token; they get the Tenant as plain data.

- grpc.health.v1 is always open (probes carry no token).
- With --open-discovery, reflection and ListModels are open too; with a valid token, ListModels
  still lists only the models of the token's tenant.
- Anything else needs `authorization: Bearer <token>`: none, or a token no tenant holds ->
  UNAUTHENTICATED; a tenant calling a method or naming a model beyond its rights ->
  PERMISSION_DENIED; over its quota (service/tenancy/quotas.py) -> RESOURCE_EXHAUSTED with RetryInfo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

from service.errors import PermissionDenied, Unauthenticated
from service.tenancy.tenants import ANONYMOUS, Tenant, TokensFile

HEALTH_PREFIX = "/grpc.health.v1.Health/"
DISCOVERY_METHODS = frozenset({"/sdedit.v1.ImageEditor/ListModels",
                               "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                               "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"})


class Lease(Protocol):
    def release(self) -> None: ...

    async def renew(self) -> None: ...


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
                 observer: GateObserver | None = None, quotas=None):
        """quotas: service.tenancy.quotas.Quotas (None: no quotas)."""
        self.tokens = tokens
        self.open_discovery = open_discovery
        self.default_model = default_model
        self.observer = observer
        self.quotas = quotas

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
            return self._discovering(method, metadata)
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

    def _discovering(self, method: str, metadata) -> Tenant:
        """An open call's tenant: for discovery (--open-discovery) the tenant of a valid token,
        so that ListModels shows a tenant its own models; else (no token, or not one a tenant
        holds) ANONYMOUS, which sees everything."""
        if self.tokens is None or method not in DISCOVERY_METHODS:
            return ANONYMOUS
        token = bearer_token(metadata)
        tenant = self.tokens.authenticate(token) if token is not None else None
        return tenant if tenant is not None else ANONYMOUS

    def check_model(self, tenant: Tenant, model: str) -> None:
        """An edit's rights on its model (counted as the tenant's request); raises PermissionDenied."""
        if tenant is ANONYMOUS:
            return
        if self.observer is not None:
            self.observer.tenant_request(tenant.name)
        model = model or self.default_model
        if not tenant.may_use(model):
            raise self._reject(tenant.name, "permission_denied",
                               PermissionDenied(f"tenant {tenant.name!r} may not use model {model!r}"))

    async def lease(self, tenant: Tenant, work: int, in_flight: bool = True) -> Lease | None:
        """The tenant's quotas for an edit of `work` (network calls x images): a lease to release
        when the call ends (None: nothing to hold); raises QuotaExceeded. in_flight=False: the
        work is charged, max_in_flight neither checked nor held (SubmitEdit: its job's run holds it)."""
        if not in_flight:
            tenant = dataclasses.replace(tenant, max_in_flight=0) if tenant is not ANONYMOUS else tenant
        if tenant is ANONYMOUS or self.quotas is None or (not tenant.max_in_flight and not tenant.work_per_minute):
            return None
        try:
            return await self.quotas.acquire(tenant, work if tenant.work_per_minute else 0)
        except Exception as exc:
            quota = getattr(exc, "quota", None)
            if quota is not None and self.observer is not None:
                self.observer.tenant_rejected(tenant.name, quota)
            raise

    async def hold(self, tenant: Tenant) -> Lease | None:
        """A place in the tenant's max_in_flight for a job's run (its work was charged at submit):
        a lease to renew while it runs and release when it ends (None: nothing to hold); raises
        QuotaExceeded while the tenant is at its limit (not counted as a rejection: the job waits)."""
        if tenant is ANONYMOUS or self.quotas is None or not tenant.max_in_flight:
            return None
        return await self.quotas.acquire(dataclasses.replace(tenant, work_per_minute=0), 0)
