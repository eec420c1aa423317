"""The Settings dataclass: every setting declared once, in its section, with a default and a
line of help. The flags, the environment variables and docs/settings.md are all made from
these declarations (service/config/loading.py, service/config/docs.py); the checks are in
service/config/checks.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config.checks import problems_of
from service.config.urls import redact_url

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_repository() -> Path:
    """The checkout's model_repository/ (editable installs), else ./model_repository."""
    bundled = PROJECT_ROOT / "model_repository"
    return bundled if bundled.is_dir() else Path("model_repository")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None, section: Section | None = None) -> Any:
    """A dataclass field with its help, choices and section in the field's metadata; a callable
    default is a factory (its docstring says what the default is in docs/settings.md)."""
    metadata = {"help": help, "choices": choices, "section": section}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Section:
    """A group of settings: one heading and table of docs/settings.md."""

    title: str
    summary: str

    def setting(self, default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
        return setting(default, help, choices, section=self)


NETWORK = Section("Network", "Addresses and ports of the gRPC, HTTP, metrics and health endpoints; message sizes.")
SECURITY = Section("Security and tenants", "TLS, mutual TLS, the tenants' tokens file and their quotas.")
MODELS = Section("Models", "Where the models are and which backend runs their score network.")
TRITON = Section("Triton backend", "With `--backend triton`: the Triton server, its calls and shared memory.")
ADMISSION = Section("Admission, batching and limits", "How many edits run, wait and batch together; request limits; "
                    "the memory budget; shutdown.")
CACHE = Section("Result cache", "The result cache (in process or Redis) and its Redis connection.")
JOBS = Section("Jobs", "Async jobs: where they live, their workers, leases and lifetimes.")
WEBHOOKS = Section("Completion webhooks", "The POSTs sent when a job ends: signing, URL policy, retries.")
LOGGING = Section("Logging", "The service's log.")


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, frozen, grouped by section; conflicting or out-of-range
    values raise SettingsError (service/config/checks.py). The properties are the facts the
    rest of the service derives from them."""

    host: str = NETWORK.setting("0.0.0.0", "address the gRPC server binds")
    port: int = NETWORK.setting(50051, "gRPC port (0 picks a free port)")
    http_port: int = NETWORK.setting(8080, "HTTP/JSON port (docs/http.md): REST + JSON, Server-Sent Events, OpenAPI, the page; "
                                     "bound to host, TLS as the gRPC port (0 picks a free port, -1 disables)")
    metrics_port: int = NETWORK.setting(9464, "Prometheus metrics HTTP port (0 picks a free port, -1 disables)")
    health_port: int = NETWORK.setting(-1, "a plaintext port serving grpc.health.v1 only, for probes that cannot speak TLS "
                                       "(Kubernetes' gRPC probes); -1: none (health is on the gRPC port as well, always)")
    metrics_host: str = NETWORK.setting("127.0.0.1", "address the metrics endpoint binds: loopback by default; in Kubernetes "
                                        "the pod IP (status.podIP), never 0.0.0.0 unless a firewall guards it")
    max_message_mib: int = NETWORK.setting(64, "largest gRPC message sent (a response), MiB; larger responses are refused up front")
    max_request_mib: int = NETWORK.setting(16, "largest gRPC message accepted (a request), MiB")
    max_connection_age_seconds: float = NETWORK.setting(0.0, "close client connections after this long, in-flight calls "
                                                        "unharmed, so clients reconnect and spread over replicas (0 = never)")

    tls_cert_file: str = SECURITY.setting("", "serve TLS with this certificate chain (PEM); reloaded when the file changes")
    tls_key_file: str = SECURITY.setting("", "the private key (PEM) of tls_cert_file")
    tls_client_ca_file: str = SECURITY.setting("", "mutual TLS: require client certificates signed by this CA (PEM)")
    auth_tokens_file: str = SECURITY.setting("", "tenants, their tokens (or SHA-256 hashes) and limits (JSON); calls then need "
                                             "`authorization: Bearer <token>`; reloaded when the file changes. Empty: no auth")
    open_discovery: bool = SECURITY.setting(False, "with auth_tokens_file: reflection and ListModels answer without a token")
    reflection: bool = SECURITY.setting(True, "serve gRPC server reflection")
    http_allowed_origins: str = SECURITY.setting("", "HTTP door: other web origins (comma-separated scheme://host[:port]) "
                                                 "whose pages may POST or DELETE; any other foreign Origin is refused 403")
    quota_fail_open: bool = SECURITY.setting(True, "when the quota store (Redis) is down: admit (true) or refuse with "
                                             "UNAVAILABLE (false); either way counted in sdedit_quota_store_errors_total")
    quota_lease_seconds: float = SECURITY.setting(900.0, "an edit counts against its tenant's max_in_flight in Redis at most "
                                                  "this long (a replica that died mid-edit frees its share after it); a "
                                                  "running job renews its lease every third of it")

    model_repository: Path = MODELS.setting(_default_repository, "folder of <model>/config.pbtxt + 1/model.onnx")
    default_model: str = MODELS.setting("digits", "model used when a request names none")
    backend: str = MODELS.setting("onnx", "score-network backend: onnx (in process) or triton", choices=("onnx", "triton"))
    onnx_threads: int = MODELS.setting(0, "ONNX Runtime intra-op threads (0 = one per core)")

    triton_url: str = TRITON.setting("127.0.0.1:8001", "Triton gRPC address HOST:PORT (backend triton)")
    triton_shared_memory: bool = TRITON.setting(False, "pass tensors through system shared memory (Triton on this host only)")
    triton_timeout_seconds: float = TRITON.setting(30.0, "longest one network call may take (the edit's deadline may cut it shorter)")
    triton_retry_seconds: float = TRITON.setting(1.0, "how long a call retries UNAVAILABLE before the edit fails")
    triton_startup_seconds: float = TRITON.setting(60.0, "at start-up: how long to wait for Triton and its models to be ready")
    triton_shm_idle_seconds: float = TRITON.setting(60.0, "free a shared-memory region set unused this long (0 = never by age)")
    triton_shm_max_idle_sets: int = TRITON.setting(8, "most unused shared-memory region sets kept for reuse; the least "
                                                   "recently used beyond are freed")
    health_poll_seconds: float = TRITON.setting(1.0, "how often health re-checks the backend's readiness")

    max_active_edits: int = ADMISSION.setting(16, "edits running at once (active in the batch schedulers, which share one network "
                                              "call per step between them); more wait in the queue. Replaces --max-concurrent-edits")
    max_batch_images: int = ADMISSION.setting(32, "largest network call, in images: active edits' samples beyond it wait for the "
                                              "next step, oldest edit first; also the largest num_samples")
    pipeline_depth: int = ADMISSION.setting(0, "network calls in flight per batch scheduler: 2 lets one group of edits take its "
                                            "steps while the other group's call runs, when a fit of the call costs says it pays "
                                            "(an accelerator: Triton); 1 = one call, then its steps; 0 = 2 with triton, 1 with "
                                            "onnx (in process the network and the steps share the same cores)")
    max_queue: int = ADMISSION.setting(16, "edits waiting for a slot; beyond this RESOURCE_EXHAUSTED")
    max_num_samples: int = ADMISSION.setting(16, "largest num_samples per request")
    max_pixels: int = ADMISSION.setting(1 << 20, "largest image, in pixels (width x height)")
    max_repeats: int = ADMISSION.setting(10, "largest repeats (K) per request")
    memory_budget_mib: int = ADMISSION.setting(3072, "the process's memory (RSS) budget, MiB: edits are admitted while their estimated "
                                               "memory fits what is left after start-up; keep it under the pod's memory limit")
    max_decodes: int = ADMISSION.setting(2, "images decoded at once (the rest of the admitted requests wait their turn)")
    grace_seconds: float = ADMISSION.setting(30.0, "on SIGTERM: time in-flight edits get to finish")
    shutdown_linger_seconds: float = ADMISSION.setting(2.0, "on SIGTERM: keep answering new calls UNAVAILABLE at least this long "
                                                       "(within grace_seconds) before the port closes, while load balancers move away")

    cache: str = CACHE.setting("memory", "result cache: in-process LRU, Redis shared by replicas, or none",
                               choices=("memory", "redis", "none"))
    redis_url: str = CACHE.setting("redis://127.0.0.1:6379/0", "Redis URL; rediss:// for TLS, redis://:PASSWORD@HOST:PORT/DB")
    redis_password: str = CACHE.setting("", "Redis password, kept out of the URL (e.g. SDEDIT_REDIS_PASSWORD from a Secret)")
    cache_ttl_seconds: float = CACHE.setting(3600.0, "lifetime of every cached result and request_id record")
    cache_memory_bytes: int = CACHE.setting(128 << 20, "memory cache bound, bytes of keys and values")
    cache_max_entry_bytes: int = CACHE.setting(16 << 20, "larger results are not cached (request_id records are, up to "
                                               "max_message_mib)")
    cache_key_prefix: str = CACHE.setting("sdedit", "prefix of every cache key (share one Redis between deployments)")
    cache_lock_seconds: float = CACHE.setting(6.0, "single-flight lock's TTL, renewed every third of it while its owner is "
                                              "alive and its edit waits or runs: how long a dead replica's lock holds "
                                              "duplicates (and a job reclaimed from it) back")
    redis_timeout_seconds: float = CACHE.setting(0.5, "connect and command timeout; slower Redis counts as down")
    redis_max_connections: int = CACHE.setting(32, "Redis connection pool size per process")
    cache_retry_seconds: float = CACHE.setting(2.0, "after Redis failures: how long edits skip it before one probe")

    jobs: str = JOBS.setting("auto", "where jobs live: redis (shared by replicas, survives restarts), memory (this process), "
                             "or auto (redis when --cache redis, else memory)", choices=("auto", "memory", "redis"))
    job_redis_url: str = JOBS.setting("", "Redis URL for jobs (empty = --redis-url); a noeviction instance or database, "
                                      "apart from a cache that may evict")
    job_key_prefix: str = JOBS.setting("sdedit-jobs", "prefix of every job key (never the cache's keys)")
    job_ttl_seconds: float = JOBS.setting(86400.0, "how long a job's record and result are kept after it ends")
    job_workers: int = JOBS.setting(2, "jobs this replica runs at once (each through admission like any edit)")
    job_lease_seconds: float = JOBS.setting(30.0, "a running job's lease, renewed every third of it: how long a dead "
                                            "replica's job waits before another replica takes it over")
    job_max_attempts: int = JOBS.setting(3, "runs a job may start (replicas dying on it) before it fails")
    job_poll_seconds: float = JOBS.setting(0.5, "how often idle workers look for jobs, and watchers and running jobs for "
                                           "changes made elsewhere (a cancel)")
    job_max_events: int = JOBS.setting(256, "events kept per job for WatchJob (older progress is dropped; the end never)")
    max_event_streams: int = JOBS.setting(256, "job event streams (WatchJob, GET /v1/jobs/{id}/events) open at once in this "
                                          "replica; one more is RESOURCE_EXHAUSTED / HTTP 429 with Retry-After")
    max_event_streams_per_tenant: int = JOBS.setting(32, "job event streams one tenant may have open at once in this replica "
                                                     "(without --auth-tokens-file every caller is one tenant); one more is "
                                                     "RESOURCE_EXHAUSTED / HTTP 429")

    webhook_secret_file: str = WEBHOOKS.setting("", "a file holding the secret that signs webhooks of jobs submitted without "
                                                "--auth-tokens-file (tenants name theirs in the tokens file); empty: no webhooks")
    webhook_allow_http: bool = WEBHOOKS.setting(False, "accept http:// webhook URLs (tests and development; https:// only otherwise)")
    webhook_allow_private: bool = WEBHOOKS.setting(False, "let webhooks reach loopback, private, link-local and other non-public "
                                                   "addresses (tests, receivers inside the cluster); never multicast or 0.0.0.0")
    webhook_ca_file: str = WEBHOOKS.setting("", "verify webhook receivers' TLS certificates with this CA bundle (PEM) instead of "
                                            "the system's trust store")
    webhook_max_attempts: int = WEBHOOKS.setting(6, "POSTs per webhook delivery before it is given up")
    webhook_retry_seconds: float = WEBHOOKS.setting(1.0, "delay before the first retry, doubled for each next one (with jitter)")
    webhook_timeout_seconds: float = WEBHOOKS.setting(10.0, "one POST's limit: connect, TLS, send and the answer's status")
    webhook_max_concurrent: int = WEBHOOKS.setting(8, "webhook POSTs in flight at once on this replica (more wait their turn)")

    log_level: str = LOGGING.setting("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        problems = problems_of(self)
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def in_process_network(self) -> bool:
        """The score network runs in this process (onnx): it shares the cores and the memory
        budget with the steps."""
        return self.backend == "onnx"

    @property
    def effective_pipeline_depth(self) -> int:
        """Network calls in flight per batch scheduler: pipeline_depth, or when 0, 2 with triton
        (an accelerator) and 1 in process."""
        return self.pipeline_depth or (2 if self.backend == "triton" else 1)

    @property
    def job_store_kind(self) -> str:
        """Where jobs live: redis when asked, or (auto) when the cache is on Redis; memory otherwise."""
        if self.jobs == "auto":
            return "redis" if self.cache == "redis" else "memory"
        return self.jobs

    @property
    def job_store_url(self) -> str:
        """The Redis URL of the job store: job_redis_url, else the cache's redis_url."""
        return self.job_redis_url or self.redis_url

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mib << 20

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mib << 20

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mib << 20

    def describe(self) -> str:
        """One line for the start-up log; passwords are masked."""
        return " ".join(f"{f.name}={_loggable(f.name, getattr(self, f.name))}" for f in dataclasses.fields(self))


def _loggable(name: str, value: Any) -> Any:
    if name.endswith("_password"):
        return "***" if value else ""
    return redact_url(value) if name.endswith("_url") else value


class SettingsError(ValueError):
    """Conflicting or out-of-range settings; raised at start-up."""
