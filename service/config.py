"""The service's settings: declared once, typed, each with a default and a line of help.

Every setting can come from a command-line flag (`--max-queue 8`) or an environment
variable (`SDEDIT_MAX_QUEUE=8`); a flag wins over the environment, which wins over the
default. The result is frozen and logged at start-up; no other module reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SDEDIT_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_repository() -> Path:
    """The checkout's model_repository/ (editable installs), else ./model_repository."""
    bundled = PROJECT_ROOT / "model_repository"
    return bundled if bundled.is_dir() else Path("model_repository")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    # transport
    host: str = setting("0.0.0.0", "address the gRPC server binds")
    port: int = setting(50051, "gRPC port (0 picks a free port)")
    http_port: int = setting(8080, "HTTP/JSON port (docs/http.md): REST + JSON, Server-Sent Events, OpenAPI, the page; "
                             "bound to host, TLS as the gRPC port (0 picks a free port, -1 disables)")
    metrics_port: int = setting(9464, "Prometheus metrics HTTP port (0 picks a free port, -1 disables)")
    health_port: int = setting(-1, "a plaintext port serving grpc.health.v1 only, for probes that cannot speak TLS "
                               "(Kubernetes' gRPC probes); -1: none (health is on the gRPC port as well, always)")
    metrics_host: str = setting("127.0.0.1", "address the metrics endpoint binds: loopback by default; in Kubernetes "
                                "the pod IP (status.podIP), never 0.0.0.0 unless a firewall guards it")
    max_message_mib: int = setting(64, "largest gRPC message sent (a response), MiB; larger responses are refused up front")
    max_request_mib: int = setting(16, "largest gRPC message accepted (a request), MiB")
    max_connection_age_seconds: float = setting(0.0, "close client connections after this long, in-flight calls "
                                                "unharmed, so clients reconnect and spread over replicas (0 = never)")
    # security (docs: README "Security and tenants")
    tls_cert_file: str = setting("", "serve TLS with this certificate chain (PEM); reloaded when the file changes")
    tls_key_file: str = setting("", "the private key (PEM) of tls_cert_file")
    tls_client_ca_file: str = setting("", "mutual TLS: require client certificates signed by this CA (PEM)")
    auth_tokens_file: str = setting("", "tenants, their tokens (or SHA-256 hashes) and limits (JSON); calls then need "
                                    "`authorization: Bearer <token>`; reloaded when the file changes. Empty: no auth")
    open_discovery: bool = setting(False, "with auth_tokens_file: reflection and ListModels answer without a token")
    reflection: bool = setting(True, "serve gRPC server reflection")
    quota_fail_open: bool = setting(True, "when the quota store (Redis) is down: admit (true) or refuse with "
                                    "UNAVAILABLE (false); either way counted in sdedit_quota_store_errors_total")
    quota_lease_seconds: float = setting(900.0, "an edit counts against its tenant's max_in_flight in Redis at most "
                                         "this long (a replica that died mid-edit frees its share after it)")
    # models
    model_repository: Path = setting(_default_repository, "folder of <model>/config.pbtxt + 1/model.onnx")
    default_model: str = setting("digits", "model used when a request names none")
    backend: str = setting("onnx", "score-network backend: onnx (in process) or triton", choices=("onnx", "triton"))
    onnx_threads: int = setting(0, "ONNX Runtime intra-op threads (0 = one per core)")
    # the triton backend
    triton_url: str = setting("127.0.0.1:8001", "Triton gRPC address HOST:PORT (backend triton)")
    triton_shared_memory: bool = setting(False, "pass tensors through system shared memory (Triton on this host only)")
    triton_timeout_seconds: float = setting(30.0, "longest one network call may take (the edit's deadline may cut it shorter)")
    triton_retry_seconds: float = setting(1.0, "how long a call retries UNAVAILABLE before the edit fails")
    triton_startup_seconds: float = setting(60.0, "at start-up: how long to wait for Triton and its models to be ready")
    triton_shm_idle_seconds: float = setting(60.0, "free a shared-memory region set unused this long (0 = never by age)")
    triton_shm_max_idle_sets: int = setting(8, "most unused shared-memory region sets kept for reuse; the least "
                                            "recently used beyond are freed")
    health_poll_seconds: float = setting(1.0, "how often health re-checks the backend's readiness")
    # admission and limits
    max_active_edits: int = setting(16, "edits running at once (active in the batch schedulers, which share one network "
                                    "call per step between them); more wait in the queue. Replaces --max-concurrent-edits")
    max_batch_images: int = setting(32, "largest network call, in images: active edits' samples beyond it wait for the "
                                    "next step, oldest edit first; also the largest num_samples")
    pipeline_depth: int = setting(0, "network calls in flight per batch scheduler: 2 lets one group of edits take its "
                                  "steps while the other group's call runs, when a fit of the call costs says it pays "
                                  "(an accelerator: Triton); 1 = one call, then its steps; 0 = 2 with triton, 1 with "
                                  "onnx (in process the network and the steps share the same cores)")
    max_queue: int = setting(16, "edits waiting for a slot; beyond this RESOURCE_EXHAUSTED")
    max_num_samples: int = setting(16, "largest num_samples per request")
    max_pixels: int = setting(1 << 20, "largest image, in pixels (width x height)")
    max_repeats: int = setting(10, "largest repeats (K) per request")
    memory_budget_mib: int = setting(3072, "the process's memory (RSS) budget, MiB: edits are admitted while their estimated "
                                     "memory fits what is left after start-up; keep it under the pod's memory limit")
    max_decodes: int = setting(2, "images decoded at once (the rest of the admitted requests wait their turn)")
    grace_seconds: float = setting(30.0, "on SIGTERM: time in-flight edits get to finish")
    shutdown_linger_seconds: float = setting(2.0, "on SIGTERM: keep answering new calls UNAVAILABLE at least this long "
                                             "(within grace_seconds) before the port closes, while load balancers move away")
    # result cache (docs: README "Result cache")
    cache: str = setting("memory", "result cache: in-process LRU, Redis shared by replicas, or none",
                         choices=("memory", "redis", "none"))
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis URL; rediss:// for TLS, redis://:PASSWORD@HOST:PORT/DB")
    redis_password: str = setting("", "Redis password, kept out of the URL (e.g. SDEDIT_REDIS_PASSWORD from a Secret)")
    cache_ttl_seconds: float = setting(3600.0, "lifetime of every cached result and request_id record")
    cache_memory_bytes: int = setting(128 << 20, "memory cache bound, bytes of keys and values")
    cache_max_entry_bytes: int = setting(16 << 20, "larger results are not cached (request_id records are, up to "
                                         "max_message_mib)")
    cache_key_prefix: str = setting("sdedit", "prefix of every cache key (share one Redis between deployments)")
    cache_lock_seconds: float = setting(120.0, "single-flight lock lifetime, renewed every third of it while its edit "
                                        "runs: how long a dead replica's lock holds duplicates back")
    redis_timeout_seconds: float = setting(0.5, "connect and command timeout; slower Redis counts as down")
    redis_max_connections: int = setting(32, "Redis connection pool size per process")
    cache_retry_seconds: float = setting(2.0, "after Redis failures: how long edits skip it before one probe")
    # jobs (docs: README "Jobs")
    jobs: str = setting("auto", "where jobs live: redis (shared by replicas, survives restarts), memory (this process), "
                        "or auto (redis when --cache redis, else memory)", choices=("auto", "memory", "redis"))
    job_redis_url: str = setting("", "Redis URL for jobs (empty = --redis-url); a noeviction instance or database, "
                                 "apart from a cache that may evict")
    job_key_prefix: str = setting("sdedit-jobs", "prefix of every job key (never the cache's keys)")
    job_ttl_seconds: float = setting(86400.0, "how long a job's record and result are kept after it ends")
    job_workers: int = setting(2, "jobs this replica runs at once (each through admission like any edit)")
    job_lease_seconds: float = setting(30.0, "a running job's lease, renewed every third of it: how long a dead "
                                       "replica's job waits before another replica takes it over")
    job_max_attempts: int = setting(3, "runs a job may start (replicas dying on it) before it fails")
    job_poll_seconds: float = setting(0.5, "how often idle workers look for jobs, and watchers and running jobs for "
                                      "changes made elsewhere (a cancel)")
    job_max_events: int = setting(256, "events kept per job for WatchJob (older progress is dropped; the end never)")
    # completion webhooks (docs/webhooks.md)
    webhook_secret_file: str = setting("", "a file holding the secret that signs webhooks of jobs submitted without "
                                       "--auth-tokens-file (tenants name theirs in the tokens file); empty: no webhooks")
    webhook_allow_http: bool = setting(False, "accept http:// webhook URLs (tests and development; https:// only otherwise)")
    webhook_allow_private: bool = setting(False, "let webhooks reach loopback, private, link-local and other non-public "
                                          "addresses (tests, receivers inside the cluster); never multicast or 0.0.0.0")
    webhook_ca_file: str = setting("", "verify webhook receivers' TLS certificates with this CA bundle (PEM) instead of "
                                   "the system's trust store")
    webhook_max_attempts: int = setting(6, "POSTs per webhook delivery before it is given up")
    webhook_retry_seconds: float = setting(1.0, "delay before the first retry, doubled for each next one (with jitter)")
    webhook_timeout_seconds: float = setting(10.0, "one POST's limit: connect, TLS, send and the answer's status")
    webhook_max_concurrent: int = setting(8, "webhook POSTs in flight at once on this replica (more wait their turn)")
    log_level: str = setting("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in [0, 65535], got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port must be in [-1, 65535], got {self.metrics_port}")
        if self.port and self.port == self.metrics_port:
            problems.append(f"port and metrics_port are both {self.port}")
        if not -1 <= self.http_port <= 65535:
            problems.append(f"http_port must be in [-1, 65535], got {self.http_port}")
        if self.http_port > 0 and self.http_port in (self.port, self.metrics_port, self.health_port):
            problems.append(f"http_port {self.http_port} is taken by port, metrics_port or health_port")
        if not -1 <= self.health_port <= 65535:
            problems.append(f"health_port must be in [-1, 65535], got {self.health_port}")
        if self.health_port > 0 and self.health_port in (self.port, self.metrics_port):
            problems.append(f"health_port {self.health_port} is taken by port or metrics_port")
        for name in ("max_active_edits", "max_batch_images", "max_num_samples", "max_pixels", "max_repeats", "max_message_mib",
                     "max_request_mib", "memory_budget_mib", "max_decodes",
                     "cache_memory_bytes", "cache_max_entry_bytes", "redis_max_connections",
                     "job_workers", "job_max_attempts", "job_max_events", "webhook_max_attempts",
                     "webhook_max_concurrent"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            problems.append(f"max_queue must be >= 0, got {self.max_queue}")
        if self.pipeline_depth not in (0, 1, 2):
            problems.append(f"pipeline_depth must be 0 (by backend), 1 or 2, got {self.pipeline_depth}")
        for name in ("grace_seconds", "max_connection_age_seconds", "shutdown_linger_seconds", "webhook_retry_seconds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("cache_ttl_seconds", "cache_lock_seconds", "redis_timeout_seconds", "cache_retry_seconds",
                     "job_ttl_seconds", "job_lease_seconds", "job_poll_seconds", "webhook_timeout_seconds"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.cache == "redis" and urllib.parse.urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            problems.append(f"redis_url must start with redis://, rediss:// or unix://, got {redact_url(self.redis_url)!r}")
        if self.redis_password and urllib.parse.urlsplit(self.redis_url).password is not None:
            problems.append("redis_password is set and redis_url has a password too: give it in one place")
        if self.jobs == "redis" and self.job_redis_url and urllib.parse.urlsplit(self.job_redis_url).scheme not in (
                "redis", "rediss", "unix"):
            problems.append(f"job_redis_url must start with redis://, rediss:// or unix://, got {redact_url(self.job_redis_url)!r}")
        if not self.job_key_prefix or not self.job_key_prefix.isprintable() or " " in self.job_key_prefix:
            problems.append(f"job_key_prefix must be printable with no spaces, got {self.job_key_prefix!r}")
        if self.job_key_prefix == self.cache_key_prefix:
            problems.append("job_key_prefix must differ from cache_key_prefix: job data stay apart from the cache")
        if not self.cache_key_prefix or not self.cache_key_prefix.isprintable() or " " in self.cache_key_prefix:
            problems.append(f"cache_key_prefix must be printable with no spaces, got {self.cache_key_prefix!r}")
        for name in ("triton_timeout_seconds", "health_poll_seconds"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("triton_retry_seconds", "triton_startup_seconds", "triton_shm_idle_seconds", "triton_shm_max_idle_sets"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if not self.quota_lease_seconds > 0:
            problems.append(f"quota_lease_seconds must be > 0, got {self.quota_lease_seconds}")
        if self.webhook_secret_file and self.auth_tokens_file:
            problems.append("webhook_secret_file signs the jobs of the one tenant there is without auth_tokens_file: "
                            "with a tokens file, give each tenant its webhook_secret_file there")
        if self.triton_shared_memory and self.backend != "triton":
            problems.append("triton_shared_memory needs backend triton")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if problems:
            raise SettingsError("; ".join(problems))

    def describe(self) -> str:
        """One line for the start-up log; passwords are masked."""
        return " ".join(f"{f.name}={_loggable(f.name, getattr(self, f.name))}" for f in dataclasses.fields(self))


def _loggable(name: str, value: Any) -> Any:
    if name.endswith("_password"):
        return "***" if value else ""
    return redact_url(value) if name.endswith("_url") else value


def redact_url(url: str) -> str:
    """redis://:secret@host/0 -> redis://:***@host/0, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class SettingsError(ValueError):
    """Conflicting or out-of-range settings; raised at start-up."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse(kind: type, raw: str, where: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{where}: expected true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{where}: expected {kind.__name__}, got {raw!r}") from exc


def _field_type(f: dataclasses.Field) -> type:
    kinds = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}
    return kinds[str(f.type)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the help shows the environment variable and the default."""
    for f in dataclasses.fields(Settings):
        kind = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}, default {default}]"
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(_flag(f.name), type=str, default=None, metavar=f.name.upper(), help=help_text)


def load_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Flags (args) over environment (env) over defaults; keyword overrides win over all."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = _field_type(f)
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is not None:
            values[f.name] = raw if isinstance(raw, bool) else _parse(kind, raw, _flag(f.name))
        elif env_name(f.name) in env:
            values[f.name] = _parse(kind, env[env_name(f.name)], env_name(f.name))
    values.update(overrides)
    return Settings(**values)
