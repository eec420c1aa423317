"""The checks of Settings, one function per section; each yields its problems as sentences.

Settings.__post_init__ joins every problem into one SettingsError, so a start-up with several
mistakes names them all at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from service.config.urls import has_password, is_redis_url, redact_url

if TYPE_CHECKING:
    from service.config.settings import Settings

Problems = Iterator[str]
ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?")


# the repeated patterns

def _in_range(s: Settings, name: str, low: int, high: int) -> Problems:
    if not low <= getattr(s, name) <= high:
        yield f"{name} must be in [{low}, {high}], got {getattr(s, name)}"


def _at_least_one(s: Settings, *names: str) -> Problems:
    for name in names:
        if getattr(s, name) < 1:
            yield f"{name} must be >= 1, got {getattr(s, name)}"


def _not_negative(s: Settings, *names: str) -> Problems:
    for name in names:
        if getattr(s, name) < 0:
            yield f"{name} must be >= 0, got {getattr(s, name)}"


def _positive(s: Settings, *names: str) -> Problems:
    for name in names:
        if not getattr(s, name) > 0:  # not "<= 0": NaN is refused too
            yield f"{name} must be > 0, got {getattr(s, name)}"


def _key_prefix(s: Settings, name: str) -> Problems:
    prefix = getattr(s, name)
    if not prefix or not prefix.isprintable() or " " in prefix:
        yield f"{name} must be printable with no spaces, got {prefix!r}"


def _redis_url(name: str, url: str) -> Problems:
    if not is_redis_url(url):
        yield f"{name} must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"


# one check per section

def check_network(s: Settings) -> Problems:
    yield from _in_range(s, "port", 0, 65535)
    yield from _in_range(s, "metrics_port", -1, 65535)
    if s.port and s.port == s.metrics_port:
        yield f"port and metrics_port are both {s.port}"
    yield from _in_range(s, "http_port", -1, 65535)
    if s.http_port > 0 and s.http_port in (s.port, s.metrics_port, s.health_port):
        yield f"http_port {s.http_port} is taken by port, metrics_port or health_port"
    yield from _in_range(s, "health_port", -1, 65535)
    if s.health_port > 0 and s.health_port in (s.port, s.metrics_port):
        yield f"health_port {s.health_port} is taken by port or metrics_port"
    yield from _at_least_one(s, "max_message_mib", "max_request_mib")
    yield from _not_negative(s, "max_connection_age_seconds")


def check_security(s: Settings) -> Problems:
    """TLS and the tenants."""
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        yield "tls_cert_file and tls_key_file go together"
    if s.tls_client_ca_file and not s.tls_cert_file:
        yield "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file"
    yield from _positive(s, "quota_lease_seconds")
    for origin in filter(None, (part.strip() for part in s.http_allowed_origins.split(","))):
        if not ORIGIN.fullmatch(origin):
            yield f"http_allowed_origins: {origin!r} is not an origin (scheme://host[:port], http or https)"


def check_triton(s: Settings) -> Problems:
    yield from _positive(s, "triton_timeout_seconds", "health_poll_seconds")
    yield from _not_negative(s, "triton_retry_seconds", "triton_startup_seconds", "triton_shm_idle_seconds",
                             "triton_shm_max_idle_sets")
    if s.triton_shared_memory and s.backend != "triton":
        yield "triton_shared_memory needs backend triton"


def check_admission(s: Settings) -> Problems:
    """Admission, batching, request limits and shutdown."""
    yield from _at_least_one(s, "max_active_edits", "max_batch_images", "max_num_samples", "max_pixels", "max_repeats",
                             "memory_budget_mib", "max_decodes")
    yield from _not_negative(s, "max_queue")
    if s.pipeline_depth not in (0, 1, 2):
        yield f"pipeline_depth must be 0 (by backend), 1 or 2, got {s.pipeline_depth}"
    yield from _not_negative(s, "grace_seconds", "shutdown_linger_seconds")


def check_cache(s: Settings) -> Problems:
    """The result cache and its Redis."""
    yield from _at_least_one(s, "cache_memory_bytes", "cache_max_entry_bytes", "redis_max_connections")
    yield from _positive(s, "cache_ttl_seconds", "cache_lock_seconds", "redis_timeout_seconds", "cache_retry_seconds")
    if s.cache_lock_seconds < 3 * s.redis_timeout_seconds:  # a renewal, every third of it, must have time to answer
        yield (f"cache_lock_seconds must be at least 3 x redis_timeout_seconds ({3 * s.redis_timeout_seconds:g}), "
               f"got {s.cache_lock_seconds:g}: a lock is renewed every third of it")
    if s.cache == "redis":
        yield from _redis_url("redis_url", s.redis_url)
    if s.redis_password and has_password(s.redis_url):
        yield "redis_password is set and redis_url has a password too: give it in one place"
    yield from _key_prefix(s, "cache_key_prefix")


def check_jobs(s: Settings) -> Problems:
    yield from _at_least_one(s, "job_workers", "job_max_attempts", "job_max_events", "max_event_streams",
                             "max_event_streams_per_tenant")
    yield from _positive(s, "job_ttl_seconds", "job_lease_seconds", "job_poll_seconds")
    if s.jobs == "redis" and s.job_redis_url:
        yield from _redis_url("job_redis_url", s.job_redis_url)
    yield from _key_prefix(s, "job_key_prefix")
    if s.job_key_prefix == s.cache_key_prefix:
        yield "job_key_prefix must differ from cache_key_prefix: job data stay apart from the cache"


def check_webhooks(s: Settings) -> Problems:
    yield from _at_least_one(s, "webhook_max_attempts", "webhook_max_concurrent")
    yield from _not_negative(s, "webhook_retry_seconds")
    yield from _positive(s, "webhook_timeout_seconds")
    if s.webhook_secret_file and s.auth_tokens_file:
        yield ("webhook_secret_file signs the jobs of the one tenant there is without auth_tokens_file: "
               "with a tokens file, give each tenant its webhook_secret_file there")


def check_choices(s: Settings) -> Problems:
    """Every setting declared with choices (backend, cache, jobs, log_level) holds one of them."""
    for f in dataclasses.fields(s):
        choices = f.metadata.get("choices")
        if choices and getattr(s, f.name) not in choices:
            yield f"{f.name} must be one of {', '.join(choices)}, got {getattr(s, f.name)!r}"


CHECKS: tuple[Callable[[Settings], Problems], ...] = (
    check_network, check_security, check_triton, check_admission, check_cache, check_jobs, check_webhooks, check_choices)


def problems_of(settings: Settings) -> list[str]:
    """Every problem of these settings, section by section (empty: they are fine)."""
    return [problem for check in CHECKS for problem in check(settings)]
