"""Tenants and their tokens: the file `--auth-tokens-file` names, re-read when it changes.

    {"tenants": [
      {"name": "team-a",                  # [a-z0-9._-], 1-63 characters: a metrics label
       "token_sha256": ["9f86d0...", ...], # hex SHA-256 of each accepted token (rotation: several)
       "token": "...",                     # or the token itself (avoid: the file then holds secrets)
       "weight": 2,                        # share of a full network call (fair share), default 1
       "max_in_flight": 8,                 # edits admitted at once, across replicas; 0 = no limit
       "work_per_minute": 20000,           # network calls x images per minute, across replicas; 0 = no limit
       "models": ["digits"],               # models it may use (default: all)
       "methods": ["Edit", "StreamEdit"],  # RPCs it may call (default: these, ListModels,
                                           # ServerReflectionInfo and the job RPCs)
       "webhook_secret_file": "a.secret"}]}  # signs its jobs' webhooks (docs/webhooks.md): a file
                                            # (relative: to this file's folder) read when used;
                                            # or "webhook_secret": "..." (the file then holds it)

A token is looked up by the SHA-256 of what the caller sent, compared with every tenant's
hashes in constant time (hmac.compare_digest, no early exit). Tokens are never logged and
never leave this module; the rest of the service sees a Tenant, plain data.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
JOB_METHODS = frozenset({"SubmitEdit", "GetJob", "WatchJob", "CancelJob", "ListJobs"})  # a tenant sees its own jobs only
DEFAULT_METHODS = frozenset({"Edit", "StreamEdit", "ListModels", "ServerReflectionInfo"}) | JOB_METHODS
KNOWN_METHODS = DEFAULT_METHODS
FIELDS = {"name", "token_sha256", "token", "weight", "max_in_flight", "work_per_minute", "models", "methods",
          "webhook_secret_file", "webhook_secret"}
MIN_SECRET_BYTES = 16
RELOAD_CHECK_SECONDS = 1.0  # the file's metadata is looked at no more often than this


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float = 1.0
    max_in_flight: int = 0  # 0: no limit
    work_per_minute: int = 0  # network calls x images; 0: no limit
    models: frozenset[str] | None = None  # None: every model
    methods: frozenset[str] = DEFAULT_METHODS
    webhook_secret_file: str = ""  # an absolute path; "" = none (or the inline secret)
    webhook_secret: str = dataclasses.field(default="", repr=False)  # inline in the tokens file (discouraged)

    def may_call(self, method: str) -> bool:
        return method in self.methods

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Tenant("")  # no --auth-tokens-file: every caller is this one, with no limits
_current: contextvars.ContextVar[Tenant] = contextvars.ContextVar("sdedit_tenant", default=ANONYMOUS)


def current_tenant() -> Tenant:
    """The tenant of the RPC being handled (set by the call pipeline, service/pipeline/calls.py)."""
    return _current.get()


def set_current_tenant(tenant: Tenant) -> contextvars.Token:
    return _current.set(tenant)


def reset_current_tenant(token: contextvars.Token) -> None:
    try:
        _current.reset(token)
    except ValueError:  # an async generator closed from another context: that context never had it
        pass


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token's UTF-8; raises UnicodeEncodeError for a str that has no UTF-8
    (an HTTP header's bytes that were not UTF-8 arrive as lone surrogates)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokensFileError(ValueError):
    """The tokens file is malformed (start-up fails; a reload keeps the previous file)."""


class SecretError(ValueError):
    """A webhook secret file that cannot be read or is too short (the message names the file only)."""


def read_secret(path: Path | str) -> bytes:
    """A secret from a file: its bytes without surrounding whitespace, at least MIN_SECRET_BYTES."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the webhook secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"the webhook secret file {path} holds fewer than {MIN_SECRET_BYTES} bytes")
    return secret


def webhook_secret_of(tenant: Tenant) -> bytes | None:
    """The tenant's webhook signing secret (its file is read now: a rotated file counts at
    once); None when it has none; raises SecretError when its file cannot be used."""
    if tenant.webhook_secret:
        return tenant.webhook_secret.encode()
    return read_secret(tenant.webhook_secret_file) if tenant.webhook_secret_file else None


def parse_tokens(text: str, base: Path | None = None) -> list[tuple[str, Tenant]]:
    """(token hash, tenant) for every accepted token; raises TokensFileError. `base`: the folder
    relative webhook_secret_file paths are in (the tokens file's)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokensFileError(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), list):
        raise TokensFileError('expected {"tenants": [...]}')
    entries: list[tuple[str, Tenant]] = []
    names: set[str] = set()
    for index, item in enumerate(data["tenants"]):
        hashes, tenant = _tenant_entry(item, f"tenants[{index}]", base)
        if tenant.name in names:
            raise TokensFileError(f"tenants[{index}].name: {tenant.name!r} appears twice")
        names.add(tenant.name)
        entries.extend((h, tenant) for h in hashes)
    seen: set[str] = set()
    for h, tenant in entries:
        if h in seen:
            raise TokensFileError(f"tenant {tenant.name!r}: a token is listed twice (or for two tenants)")
        seen.add(h)
    return entries


def _tenant_entry(item, where: str, base: Path | None) -> tuple[list[str], Tenant]:
    """One entry of the file: its token hashes and its tenant."""
    if not isinstance(item, dict):
        raise TokensFileError(f"{where}: expected an object")
    unknown = set(item) - FIELDS
    if unknown:
        raise TokensFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise TokensFileError(f"{where}.name: 1-63 characters of a-z 0-9 . _ -, starting with a letter or digit")
    hashes = _token_hashes(item, where)
    weight = item.get("weight", 1)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight > 0:
        raise TokensFileError(f"{where}.weight: a number > 0")
    limits = {}
    for field in ("max_in_flight", "work_per_minute"):
        value = item.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TokensFileError(f"{where}.{field}: an integer >= 0 (0: no limit)")
        limits[field] = value
    models = item.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise TokensFileError(f"{where}.models: a list of model names")
    methods = item.get("methods", sorted(DEFAULT_METHODS))
    if not isinstance(methods, list) or not set(methods) <= KNOWN_METHODS:
        raise TokensFileError(f"{where}.methods: a list of {', '.join(sorted(KNOWN_METHODS))}")
    secret_file, secret = _webhook_secret(item, where, base)
    return hashes, Tenant(name, float(weight), limits["max_in_flight"], limits["work_per_minute"],
                          None if models is None else frozenset(models), frozenset(methods),
                          webhook_secret_file=secret_file, webhook_secret=secret)


def _token_hashes(item: dict, where: str) -> list[str]:
    hashes = item.get("token_sha256", [])
    hashes = [hashes] if isinstance(hashes, str) else hashes
    if not isinstance(hashes, list) or not all(isinstance(h, str) and HEX64.match(h.lower()) for h in hashes):
        raise TokensFileError(f"{where}.token_sha256: hex SHA-256 digests (64 characters)")
    hashes = [h.lower() for h in hashes]
    if "token" in item:
        if not isinstance(item["token"], str) or len(item["token"]) < 16 or not _utf8(item["token"]):
            raise TokensFileError(f"{where}.token: a string of at least 16 characters (UTF-8)")
        hashes.append(hash_token(item["token"]))
    if not hashes:
        raise TokensFileError(f"{where}: no token_sha256 or token")
    return hashes


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON)
        return False
    return True


def _webhook_secret(item: dict, where: str, base: Path | None) -> tuple[str, str]:
    """(webhook_secret_file made absolute, webhook_secret): at most one of them."""
    secret_file, secret = item.get("webhook_secret_file", ""), item.get("webhook_secret", "")
    if not isinstance(secret_file, str):
        raise TokensFileError(f"{where}.webhook_secret_file: a path (relative: to the tokens file's folder)")
    if not isinstance(secret, str) or (secret and len(secret.encode()) < MIN_SECRET_BYTES):
        raise TokensFileError(f"{where}.webhook_secret: a string of at least {MIN_SECRET_BYTES} bytes")
    if secret and secret_file:
        raise TokensFileError(f"{where}: webhook_secret and webhook_secret_file both given: keep one")
    if secret_file:
        secret_file = str((base or Path.cwd()) / Path(secret_file).expanduser())
    return secret_file, secret


class TokensFile:
    """The tenants of a tokens file, re-read when the file changes (checked at most every
    RELOAD_CHECK_SECONDS, from the calls themselves). A file that turns malformed is logged
    and ignored: the previous tenants stay until it is fixed."""

    def __init__(self, path: Path | str, check_seconds: float = RELOAD_CHECK_SECONDS):
        self.path = Path(path)
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        try:
            self._signature = self._stat()
            self._entries = parse_tokens(self.path.read_text(), self.path.resolve().parent)
        except OSError as exc:
            raise TokensFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except TokensFileError as exc:
            raise TokensFileError(f"{self.path}: {exc}") from None
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    @property
    def tenants(self) -> list[Tenant]:
        unique = {tenant.name: tenant for _, tenant in self._entries}
        return list(unique.values())

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return
        with self._lock:
            self._checked = now
            try:
                signature = self._stat()
                if signature == self._signature:
                    return
                entries = parse_tokens(self.path.read_text(), self.path.resolve().parent)
            except (OSError, TokensFileError) as exc:
                log.error("tokens file %s changed but cannot be used (%s); the previous tenants stay", self.path, exc)
                return
            self._entries, self._signature = entries, signature
            self.reloads += 1
            log.info("tokens file %s reloaded: %d tenant(s)", self.path, len(self.tenants))

    def tenant(self, name: str) -> Tenant | None:
        """The tenant of this name now (the file re-read if it changed), or None."""
        self._maybe_reload()
        return next((tenant for _, tenant in self._entries if tenant.name == name), None)

    def authenticate(self, token: str) -> Tenant | None:
        """The tenant of this token, or None. Every known hash is compared, in constant time."""
        self._maybe_reload()
        try:
            presented = hash_token(token).encode()
        except UnicodeEncodeError:  # not UTF-8: no tenant's token (every token in the file is)
            return None
        found = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(presented, digest.encode()):
                found = tenant
        return found
