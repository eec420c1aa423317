"""Async jobs: an edit that outlives its call, queued, run by any replica, kept for a TTL."""

from __future__ import annotations

from service.config import Settings
from service.jobs.manager import JobEnd, JobManager
from service.jobs.records import STATES, TERMINAL, JobCodec, JobEvent, JobRecord
from service.jobs.store import JobStore, JobStoreUnavailable, MemoryJobStore

__all__ = ["STATES", "TERMINAL", "JobCodec", "JobEnd", "JobEvent", "JobManager", "JobRecord", "JobStore",
           "JobStoreUnavailable", "MemoryJobStore", "build_job_store"]


def build_job_store(settings: Settings) -> JobStore:
    if settings.job_store_kind == "redis":
        from service.jobs.redis import RedisJobStore

        return RedisJobStore(settings.job_store_url, settings.redis_timeout_seconds,
                             settings.redis_max_connections, password=settings.redis_password,
                             prefix=settings.job_key_prefix, max_events=settings.job_max_events,
                             ttl_seconds=settings.job_ttl_seconds)
    return MemoryJobStore(settings.job_max_events, purge_seconds=min(60.0, max(0.05, settings.job_ttl_seconds / 2)))
