"""Webhook signatures and where each tenant's signing secret comes from.

`Sdedit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with a fresh t per
attempt; the key is the tenant's secret (webhook_secret_file or webhook_secret in the tokens
file), or --webhook-secret-file's for the one tenant there is without a tokens file.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from service.config import Settings, SettingsError
from service.tenancy.tenants import SecretError, TokensFile, read_secret, webhook_secret_of

USER_AGENT = "sdedit-webhook/1"
SecretSource = Callable[[str], bytes | None]  # owner -> its secret, None: none; raises SecretError


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The Sdedit-Signature header's value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signed_headers(secret: bytes, body: bytes, job_id: str, delivery: str, attempt: int) -> dict[str, str]:
    """The headers of one attempt's POST, signed now."""
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Sdedit-Signature": signature(secret, int(time.time()), body), "Sdedit-Job-Id": job_id,
            "Sdedit-Delivery": delivery, "Sdedit-Attempt": str(attempt)}


def secret_source(settings: Settings, tokens: TokensFile | None) -> SecretSource:
    """With a tokens file, each tenant's own secret (webhook_secret_file or webhook_secret in the
    file); without one, the secret of --webhook-secret-file for the one tenant there is."""

    def secret_of(owner: str) -> bytes | None:
        if tokens is None:
            return read_secret(settings.webhook_secret_file) if settings.webhook_secret_file else None
        tenant = tokens.tenant(owner)
        return None if tenant is None else webhook_secret_of(tenant)

    return secret_of


def check_secret_file(settings: Settings) -> None:
    """At start-up: the anonymous tenant's secret file is readable (a wrong file fails now)."""
    if settings.webhook_secret_file:
        try:
            read_secret(settings.webhook_secret_file)
        except SecretError as exc:
            raise SettingsError(f"webhook_secret_file: {exc}") from None
