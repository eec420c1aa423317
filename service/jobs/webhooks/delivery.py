"""Deliveries: the job record POSTed when a job ends, retried until an answer settles it.

`classify` (pure) settles an answer: 2xx delivered; 3xx (never followed) and 4xx other than 408
and 429 rejected by the receiver, given up; 408, 429, 5xx, a network or TLS error, a timeout:
retried after webhook_retry_seconds, doubled each time, with jitter (half to all of it), or
after the Retry-After (delta seconds) of a 429 or 503 when that is longer, never more than
MAX_DELAY_SECONDS, up to webhook_max_attempts tries. Any other exception ends the delivery
failed (outcome `error`), never a task dying with its state pending. The outcome is logged (the URL's host
only: its path may hold a receiver's token), counted (sdedit_webhook_deliveries_total,
sdedit_webhook_attempts_total) and kept in the job record (Job.webhook).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Protocol

from service.config import Settings
from service.jobs.records import JobCodec, JobRecord
from service.jobs.store import JobStore, JobStoreUnavailable
from service.jobs.webhooks.client import Answer, WebhookClient
from service.jobs.webhooks.policy import AddressRefused, check_submit, host_of
from service.jobs.webhooks.signing import SecretSource, check_secret_file, signed_headers
from service.tenancy.tenants import SecretError

log = logging.getLogger(__package__)  # the name the logs gave before the module became a package
RETRYABLE_4XX = frozenset({408, 429})  # request timeout, too many requests: worth another try
MAX_DELAY_SECONDS = 300.0  # the backoff never waits longer than this between two attempts
DELIVERED, RETRY, REJECTED, EXHAUSTED = "delivered", "retry", "rejected", "exhausted"
ERROR = "error"  # the delivery itself failed (an exception in this service): given up, the error recorded


class WebhookObserver(Protocol):
    def webhook_attempt(self, result: str) -> None: ...

    def webhook_delivery(self, outcome: str) -> None: ...


# --- what an answer means -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    outcome: str  # DELIVERED; RETRY; given up: REJECTED (by the receiver) or EXHAUSTED (no try left)
    wait: float = 0.0  # RETRY: seconds before the next try


def retry_after(status: int, header: str | None) -> float | None:
    """Retry-After of a 429 or 503 in its delta-seconds form; None otherwise (an HTTP date is
    not trusted: the two clocks may disagree)."""
    if status not in (429, 503) or not header or not header.strip().isdigit():
        return None
    return float(header.strip())


def classify(answer: Answer, backoff: float, last: bool) -> Verdict:
    """What a try's answer (its status, 0 for none; its Retry-After header; its error) means for
    the delivery: `backoff` is the jittered wait before the next try, `last` that none is left."""
    if 200 <= answer.status < 300:
        return Verdict(DELIVERED)
    if 300 <= answer.status < 500 and answer.status not in RETRYABLE_4XX:
        return Verdict(REJECTED)
    if last:
        return Verdict(EXHAUSTED)
    told = retry_after(answer.status, answer.retry_after)
    if told is not None:  # the receiver said when: no sooner, within the cap
        return Verdict(RETRY, min(MAX_DELAY_SECONDS, max(backoff, told)))
    return Verdict(RETRY, backoff)


# --- one delivery -------------------------------------------------------------------------------


class Delivery:
    """One ended job's webhook: its tries, then its outcome recorded, counted and logged."""

    def __init__(self, hooks: Webhooks, store: JobStore, codec: JobCodec, ended: JobRecord):
        self.hooks, self.store, self.codec, self.ended = hooks, store, codec, ended
        self.observer = hooks.observer
        self.job_id, self.where = ended.id, host_of(ended.webhook_url)
        self.id = uuid.uuid4().hex  # Sdedit-Delivery: the same on every retry
        self.attempts, self.tries = 0, 0  # POSTs made; and tries: POSTs and reads the store could not answer
        self.answer, self.state, self.outcome = Answer(), "pending", ""

    async def run(self) -> None:
        job_id, where = self.job_id, self.where
        try:
            await self.note(self.state, 0, self.answer)
            parts = urllib.parse.urlsplit(self.ended.webhook_url)
            while True:
                self.tries += 1
                if not await self.attempt(parts):
                    break
                last = self.tries >= self.hooks.settings.webhook_max_attempts
                verdict = classify(self.answer, 0.0 if last else self.hooks.delay(self.tries), last)
                if verdict.outcome != RETRY:
                    self.settle(verdict.outcome)
                    break
                log.info("webhook of job %s to %s: attempt %d: %s; retrying in %.1f s", job_id[:8], where,
                         self.attempts, self.answer.error, verdict.wait)
                await self.note(self.state, self.attempts, self.answer)
                await asyncio.sleep(verdict.wait)
        except asyncio.CancelledError:
            self.state, self.outcome = "abandoned", "abandoned"
            log.warning("webhook of job %s to %s abandoned: this replica is stopping (after %d attempts; it is "
                        "not redelivered)", job_id[:8], where, self.attempts)
            raise
        except Exception as exc:  # a fault of this service, not the receiver's: final, counted, recorded
            self.answer = Answer(self.answer.status, f"internal error: {type(exc).__name__}: {exc}")
            self.state, self.outcome = "failed", ERROR
            log.exception("webhook of job %s to %s: failed after %d attempts: %s; not retried", job_id[:8], where,
                          self.attempts, self.answer.error)
        finally:
            if self.outcome:
                if self.observer is not None:
                    self.observer.webhook_delivery(self.outcome)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.note(self.state, self.attempts, Answer(
                        self.answer.status, "" if self.state == "delivered" else self.answer.error)))

    async def attempt(self, parts: urllib.parse.SplitResult) -> bool:
        """One try: the record read, signed and POSTed; self.answer is the receiver's answer, or
        why the store could not be read. False: the delivery ended without an answer to classify
        (its state and outcome set)."""
        job_id = self.job_id
        try:
            record = await self.store.get(job_id, with_result=True)
            if record is None:
                log.warning("webhook of job %s: the record is gone (expired); not delivered", job_id[:8])
                self.state, self.outcome = "failed", "expired"
                return False
            body = self.codec.encode_webhook(record)
            secret = self.hooks.secret_of(record.owner)
            if secret is None:
                raise SecretError("no webhook secret (removed since the job was submitted)")
            self.attempts += 1
            self.answer = await self.hooks.client.post(parts, body, signed_headers(secret, body, job_id, self.id,
                                                                                   self.attempts))
        except SecretError as exc:
            log.error("webhook of job %s: tenant %r: %s; not delivered", job_id[:8], self.ended.owner, exc)
            self.answer, self.state, self.outcome = Answer(error=str(exc)), "failed", "unsigned"
            return False
        except AddressRefused as exc:  # found before any connection: no attempt was made
            self.attempts -= 1
            log.warning("webhook of job %s to %s refused: %s (--webhook-allow-private allows it)",
                        job_id[:8], self.where, exc)
            self.answer, self.state, self.outcome = Answer(error=f"refused: {exc}"), "refused", "refused"
            return False
        except JobStoreUnavailable as exc:
            self.answer = Answer(error=str(exc))
        else:
            if self.observer is not None:
                self.observer.webhook_attempt(self.answer.result)
        return True

    def settle(self, outcome: str) -> None:
        """The delivery ends with a final answer: delivered, rejected or exhausted."""
        job_id, where, answer = self.job_id[:8], self.where, self.answer
        self.state, self.outcome = ("delivered" if outcome == DELIVERED else "failed"), outcome
        if outcome == DELIVERED:
            log.info("webhook of job %s delivered to %s (attempt %d, HTTP %d)", job_id, where, self.attempts,
                     answer.status)
        elif outcome == REJECTED:
            log.warning("webhook of job %s: %s answered HTTP %d; given up (%s)", job_id, where, answer.status,
                        "redirects are not followed" if answer.status < 400 else "not retried")
        else:
            log.warning("webhook of job %s to %s: given up after %d attempts (last: %s)", job_id, where,
                        self.attempts, answer.error)

    async def note(self, state: str, attempts: int, answer: Answer) -> None:
        try:
            await self.store.webhook(self.job_id, state, attempts, answer.status, answer.error)
        except JobStoreUnavailable as exc:  # the delivery goes on; only its record lags
            log.warning("webhook of job %s: cannot record its state %s: %s", self.job_id[:8], state, exc)


# --- the replica's deliveries -------------------------------------------------------------------


class Webhooks:
    """This replica's webhooks: the check at SubmitEdit, and the deliveries under way (each in
    the background: it never holds up the worker or the call; one cut short by the replica
    stopping or dying is not resumed elsewhere)."""

    def __init__(self, settings: Settings, secret_of: SecretSource, observer: WebhookObserver | None = None):
        self.settings, self.secret_of, self.observer = settings, secret_of, observer
        self.client = WebhookClient(settings)  # reads the CA bundle: a wrong file fails at start-up
        check_secret_file(settings)
        self._deliveries: set[asyncio.Task] = set()

    def check(self, url: str, owner: str) -> None:
        """At SubmitEdit: the URL is acceptable and the caller has a secret to sign with."""
        check_submit(url, owner, self.secret_of, self.settings.webhook_allow_http, self.settings.webhook_allow_private)

    def deliver(self, store: JobStore, codec: JobCodec, record: JobRecord) -> None:
        """Starts delivering the ended job's webhook in the background."""
        if not record.webhook_url:
            return
        task = asyncio.create_task(Delivery(self, store, codec, record).run(), name=f"webhook-{record.id[:8]}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    @property
    def in_flight(self) -> int:
        return len(self._deliveries)

    def delay(self, retry: int) -> float:
        """Before retry n (1, 2, ...): webhook_retry_seconds x 2^(n-1), jittered to half to all of it."""
        full = min(MAX_DELAY_SECONDS, self.settings.webhook_retry_seconds * 2 ** (retry - 1))
        return random.uniform(full / 2, full)

    async def aclose(self) -> None:
        """Stops the deliveries under way (each recorded abandoned): they are not resumed."""
        for task in list(self._deliveries):
            task.cancel()
        for task in list(self._deliveries):
            with contextlib.suppress(BaseException):
                await task
        self.client.close()
