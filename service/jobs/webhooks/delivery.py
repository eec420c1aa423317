"""Completion webhooks: a signed HTTPS POST of the job record when a job ends (docs/webhooks.md).

At SubmitEdit the URL is checked (`check`): https only (http with webhook_allow_http), a host,
no userinfo, at most MAX_URL_LENGTH characters, a valid port; a literal address that webhooks
may not reach is refused at once; the caller must have a signing secret.

When a job ends, the replica that ended it (the worker, or the one answering CancelJob)
delivers in the background (`deliver`): it never holds up the worker or the call. Each
attempt, in a thread of its own pool (at most webhook_max_concurrent at once):

1. resolves the host and refuses the delivery if ANY address it resolves to is loopback,
   link-local, private, unspecified, multicast, reserved or otherwise not public (unless
   webhook_allow_private; multicast and unspecified never), IPv4 inside IPv6 included;
2. connects to a checked address itself, never resolving the name again (a DNS answer that
   changes between the check and the connection cannot redirect it), and verifies TLS
   against the URL's host name (webhook_ca_file, or the system's trust store);
3. POSTs the body with `Sdedit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
   (a fresh t per attempt), `Sdedit-Job-Id`, `Sdedit-Delivery` (one id per delivery, the same
   on its retries) and `Sdedit-Attempt`; reads the status line and headers only.

2xx: delivered. 3xx (never followed) and 4xx other than 408 and 429: the receiver refused it,
given up. 408, 429, 5xx, a network or TLS error, a timeout: retried after webhook_retry_seconds,
doubled each time, with jitter (half to all of it), up to webhook_max_attempts POSTs. The
outcome is logged (the URL's host only: its path may hold a receiver's token), counted
(sdedit_webhook_deliveries_total, sdedit_webhook_attempts_total) and kept in the job record
(Job.webhook). Deliveries live in this process: one cut short by the replica stopping or dying
is not resumed elsewhere (recorded "abandoned" when the replica stops; left "pending" when it
dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import logging
import random
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from service.config import Settings, SettingsError
from service.errors import InvalidArgument
from service.jobs.records import JobCodec, JobRecord
from service.jobs.store import JobStore, JobStoreUnavailable
from service.tenants import SecretError, TokensFile, read_secret, webhook_secret_of

log = logging.getLogger(__package__)  # the name the logs gave before the module became a package
FIELD = "job.webhook_url"
MAX_URL_LENGTH = 2048
RETRYABLE_4XX = frozenset({408, 429})  # request timeout, too many requests: worth another try
MAX_DELAY_SECONDS = 300.0  # the backoff never waits longer than this between two attempts
USER_AGENT = "sdedit-webhook/1"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SecretSource = Callable[[str], bytes | None]  # owner -> its secret, None: none; raises SecretError


class WebhookObserver(Protocol):
    def webhook_attempt(self, result: str) -> None: ...

    def webhook_delivery(self, outcome: str) -> None: ...


# --- addresses and URLs -----------------------------------------------------------------------


def forbidden(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why webhooks may not reach this address (None: they may)."""
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 carried inside IPv6 is judged as that IPv4
        teredo = ip.teredo or ()
        for embedded in (ip.ipv4_mapped, ip.sixtofour, *teredo):
            if embedded is not None and (reason := forbidden(embedded, allow_private)):
                return reason
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if allow_private:
        return None
    for kind in ("loopback", "link_local", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names literally ("10.0.0.1", "::1", and the legacy forms the resolver
    takes for IPv4: "127.1", "2130706433", "0x7f.0.0.1"), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def check_url(url: str, allow_http: bool = False, allow_private: bool = False) -> urllib.parse.SplitResult:
    """The parsed URL; raises InvalidArgument naming job.webhook_url."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(FIELD, f"at most {MAX_URL_LENGTH} characters, got {len(url)}")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise InvalidArgument(FIELD, "ASCII without spaces or control characters (an international host name in "
                                     "punycode, other characters %-encoded)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(FIELD, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        raise InvalidArgument(FIELD, "must start with https://" + ("" if allow_http else
                                                                   " (http:// only with --webhook-allow-http)"))
    if "@" in parts.netloc:
        raise InvalidArgument(FIELD, "no user or password in the URL (user:password@host): the receiver checks "
                                     "the Sdedit-Signature header instead")
    if not parts.hostname:
        raise InvalidArgument(FIELD, "needs a host (https://host[:port]/path)")
    if port == 0:
        raise InvalidArgument(FIELD, "the port must be in [1, 65535]")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument(FIELD, "no #fragment (it is never sent)")
    ip = literal_ip(parts.hostname)
    if ip is not None and (reason := forbidden(ip, allow_private)):
        raise InvalidArgument(FIELD, f"{parts.hostname} is a {reason} address: webhooks reach public addresses "
                                     "only (the operator may allow others with --webhook-allow-private)")
    return parts


def host_of(url: str) -> str:
    """What the logs say of a URL: its host and port, never its path or query."""
    try:
        return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or "?"
    except ValueError:
        return "?"


# --- signing ----------------------------------------------------------------------------------


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The Sdedit-Signature header's value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def secret_source(settings: Settings, tokens: TokensFile | None) -> SecretSource:
    """With a tokens file, each tenant's own secret (webhook_secret_file or webhook_secret in the
    file); without one, the secret of --webhook-secret-file for the one tenant there is."""

    def secret_of(owner: str) -> bytes | None:
        if tokens is None:
            return read_secret(settings.webhook_secret_file) if settings.webhook_secret_file else None
        tenant = tokens.tenant(owner)
        return None if tenant is None else webhook_secret_of(tenant)

    return secret_of


# --- one attempt --------------------------------------------------------------------------------


class AddressRefused(Exception):
    """The host resolves to an address webhooks may not reach."""


@dataclass(frozen=True)
class Answer:
    status: int = 0  # the HTTP status; 0 = none
    error: str = ""  # why there was no (good) answer
    retry_after: float | None = None  # a 429 or 503's Retry-After, in seconds (the delta-seconds form)

    @property
    def result(self) -> str:
        """The attempt, for sdedit_webhook_attempts_total: 2xx, 3xx, 4xx, 5xx or error."""
        return f"{self.status // 100}xx" if 100 <= self.status < 600 else "error"


def retry_after(status: int, header: str | None) -> float | None:
    """Retry-After of a 429 or 503 in its delta-seconds form; None otherwise (an HTTP date is
    not trusted: the two clocks may disagree)."""
    if status not in (429, 503) or not header or not header.strip().isdigit():
        return None
    return float(header.strip())


class PinnedConnection(http.client.HTTPSConnection):
    """HTTP(S) to one address checked beforehand (no DNS lookup here), TLS verified against `host`."""

    def __init__(self, host: str, port: int, address: tuple[int, tuple], timeout: float, context: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout, context=context or ssl.create_default_context())
        self.tls = context is not None
        self.family, self.sockaddr = address

    def connect(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
        except BaseException:
            sock.close()
            raise


class Post:
    """One POST, run in a worker thread; `abort()` (from another thread) ends it at once."""

    def __init__(self, parts: urllib.parse.SplitResult, body: bytes, headers: dict[str, str], timeout: float,
                 context: ssl.SSLContext | None, allow_private: bool):
        self.parts, self.body, self.headers, self.timeout = parts, body, headers, timeout
        self.context, self.allow_private = context, allow_private
        self.connection: PinnedConnection | None = None
        self.aborted = False

    def addresses(self) -> list[tuple[int, tuple]]:
        """Every address the host resolves to, each checked; raises AddressRefused."""
        host, port = self.parts.hostname or "", self.port
        found = []
        for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            reason = forbidden(ipaddress.ip_address(sockaddr[0]), self.allow_private)
            if reason:
                raise AddressRefused(f"{host} resolves to {sockaddr[0]}, a {reason} address")
            if (family, sockaddr) not in found:
                found.append((family, sockaddr))
        return found

    @property
    def port(self) -> int:
        return self.parts.port or (443 if self.parts.scheme.lower() == "https" else 80)

    def run(self) -> Answer:
        """Raises AddressRefused; any other failure is an Answer with an error."""
        try:
            addresses = self.addresses()
        except socket.gaierror as exc:
            return Answer(error=f"cannot resolve {self.parts.hostname}: {exc.strerror or exc}")
        target = (self.parts.path or "/") + (f"?{self.parts.query}" if self.parts.query else "")
        tls = self.context if self.parts.scheme.lower() == "https" else None
        error = "no address"
        for address in addresses:  # the first that connects
            if self.aborted:
                break
            self.connection = PinnedConnection(self.parts.hostname or "", self.port, address, self.timeout, tls)
            try:
                self.connection.connect()
            except ssl.SSLError as exc:  # a certificate problem is the same on every address
                self.connection.close()
                return Answer(error=f"TLS: {getattr(exc, 'verify_message', '') or exc.reason or exc}")
            except OSError as exc:
                self.connection.close()
                error = f"cannot connect to {address[1][0]}: {exc.strerror or exc}"
                continue
            try:
                self.connection.request("POST", target, body=self.body, headers=self.headers)
                response = self.connection.getresponse()  # the status line and headers; the body is not read
                return Answer(response.status, "" if 200 <= response.status < 300 else f"HTTP {response.status}",
                              retry_after(response.status, response.getheader("Retry-After")))
            except (OSError, http.client.HTTPException) as exc:
                timed_out = self.aborted or isinstance(exc, TimeoutError)
                return Answer(error="timed out" if timed_out else f"{type(exc).__name__}: {exc}")
            finally:
                self.connection.close()
        return Answer(error="timed out" if self.aborted else error)

    def abort(self) -> None:
        self.aborted = True
        sock = self.connection.sock if self.connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# --- deliveries -------------------------------------------------------------------------------


class Webhooks:
    def __init__(self, settings: Settings, secret_of: SecretSource, observer: WebhookObserver | None = None):
        self.settings, self.secret_of, self.observer = settings, secret_of, observer
        try:  # the CA bundle and the anonymous tenant's secret are read now: a wrong file fails at start-up
            self.context = ssl.create_default_context(cafile=settings.webhook_ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"webhook_ca_file {settings.webhook_ca_file}: not a readable PEM CA bundle "
                                f"({getattr(exc, 'strerror', None) or exc})") from None
        if settings.webhook_secret_file:
            try:
                read_secret(settings.webhook_secret_file)
            except SecretError as exc:
                raise SettingsError(f"webhook_secret_file: {exc}") from None
        self._pool = ThreadPoolExecutor(settings.webhook_max_concurrent, thread_name_prefix="webhook")
        self._deliveries: set[asyncio.Task] = set()

    def check(self, url: str, owner: str) -> None:
        """At SubmitEdit: the URL is acceptable and the caller has a secret to sign with."""
        check_url(url, self.settings.webhook_allow_http, self.settings.webhook_allow_private)
        try:
            secret = self.secret_of(owner)
        except SecretError as exc:
            log.error("webhooks: tenant %r: %s", owner, exc)
            raise InvalidArgument(FIELD, "the webhook secret configured for this caller cannot be used now; the "
                                         "operator must fix it (the service logged why)") from None
        if secret is None:
            raise InvalidArgument(FIELD, (
                f"tenant {owner!r} has no webhook signing secret: the operator gives it `webhook_secret_file` in "
                "the tokens file (docs/webhooks.md)") if owner else (
                "no webhook signing secret is configured: start the service with --webhook-secret-file FILE "
                "(docs/webhooks.md)"))

    def deliver(self, store: JobStore, codec: JobCodec, record: JobRecord) -> None:
        """Starts delivering the ended job's webhook in the background."""
        if not record.webhook_url:
            return
        task = asyncio.create_task(self._deliver(store, codec, record), name=f"webhook-{record.id[:8]}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    @property
    def in_flight(self) -> int:
        return len(self._deliveries)

    def delay(self, retry: int) -> float:
        """Before retry n (1, 2, ...): webhook_retry_seconds x 2^(n-1), jittered to half to all of it."""
        full = min(MAX_DELAY_SECONDS, self.settings.webhook_retry_seconds * 2 ** (retry - 1))
        return random.uniform(full / 2, full)

    async def _note(self, store: JobStore, job_id: str, state: str, attempts: int, answer: Answer) -> None:
        try:
            await store.webhook(job_id, state, attempts, answer.status, answer.error)
        except JobStoreUnavailable as exc:  # the delivery goes on; only its record lags
            log.warning("webhook of job %s: cannot record its state %s: %s", job_id[:8], state, exc)

    async def _deliver(self, store: JobStore, codec: JobCodec, ended: JobRecord) -> None:
        settings, job_id, where = self.settings, ended.id, host_of(ended.webhook_url)
        delivery, attempts, tries, answer, state, outcome = uuid.uuid4().hex, 0, 0, Answer(), "pending", ""
        try:
            await self._note(store, job_id, state, 0, answer)
            parts = urllib.parse.urlsplit(ended.webhook_url)
            while True:
                tries += 1  # POSTs, and reads of the record the store could not answer
                try:
                    record = await store.get(job_id, with_result=True)
                    if record is None:
                        log.warning("webhook of job %s: the record is gone (expired); not delivered", job_id[:8])
                        state, outcome = "failed", "expired"
                        break
                    body = codec.encode_webhook(record)
                    secret = self.secret_of(record.owner)
                    if secret is None:
                        raise SecretError("no webhook secret (removed since the job was submitted)")
                    attempts += 1
                    answer = await self._post(parts, body, secret, job_id, delivery, attempts)
                except SecretError as exc:
                    log.error("webhook of job %s: tenant %r: %s; not delivered", job_id[:8], ended.owner, exc)
                    answer, state, outcome = Answer(error=str(exc)), "failed", "unsigned"
                    break
                except AddressRefused as exc:  # found before any connection: no attempt was made
                    attempts -= 1
                    log.warning("webhook of job %s to %s refused: %s (--webhook-allow-private allows it)",
                                job_id[:8], where, exc)
                    answer, state, outcome = Answer(error=f"refused: {exc}"), "refused", "refused"
                    break
                except JobStoreUnavailable as exc:
                    answer = Answer(error=str(exc))
                else:
                    if self.observer is not None:
                        self.observer.webhook_attempt(answer.result)
                    if 200 <= answer.status < 300:
                        state, outcome = "delivered", "delivered"
                        log.info("webhook of job %s delivered to %s (attempt %d, HTTP %d)", job_id[:8], where,
                                 attempts, answer.status)
                        break
                    if 300 <= answer.status < 500 and answer.status not in RETRYABLE_4XX:
                        state, outcome = "failed", "rejected"
                        log.warning("webhook of job %s: %s answered HTTP %d; given up (%s)", job_id[:8], where,
                                    answer.status, "redirects are not followed" if answer.status < 400 else
                                    "not retried")
                        break
                if tries >= settings.webhook_max_attempts:
                    state, outcome = "failed", "exhausted"
                    log.warning("webhook of job %s to %s: given up after %d attempts (last: %s)", job_id[:8], where,
                                attempts, answer.error)
                    break
                wait = self.delay(tries)
                if answer.retry_after is not None:  # the receiver said when: no sooner, within the cap
                    wait = min(MAX_DELAY_SECONDS, max(wait, answer.retry_after))
                log.info("webhook of job %s to %s: attempt %d: %s; retrying in %.1f s", job_id[:8], where,
                         attempts, answer.error, wait)
                await self._note(store, job_id, state, attempts, answer)
                await asyncio.sleep(wait)
        except asyncio.CancelledError:
            state, outcome = "abandoned", "abandoned"
            log.warning("webhook of job %s to %s abandoned: this replica is stopping (after %d attempts; it is "
                        "not redelivered)", job_id[:8], where, attempts)
            raise
        finally:
            if outcome:
                if self.observer is not None:
                    self.observer.webhook_delivery(outcome)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._note(store, job_id, state, attempts,
                                                    Answer(answer.status, "" if state == "delivered" else answer.error)))

    async def _post(self, parts: urllib.parse.SplitResult, body: bytes, secret: bytes, job_id: str, delivery: str,
                    attempt: int) -> Answer:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Sdedit-Signature": signature(secret, int(time.time()), body), "Sdedit-Job-Id": job_id,
                   "Sdedit-Delivery": delivery, "Sdedit-Attempt": str(attempt)}
        post = Post(parts, body, headers, self.settings.webhook_timeout_seconds, self.context,
                    self.settings.webhook_allow_private)
        future = asyncio.get_running_loop().run_in_executor(self._pool, post.run)
        try:  # the socket timeout bounds each read; this bounds the whole attempt
            return await asyncio.wait_for(asyncio.shield(future), self.settings.webhook_timeout_seconds)
        except TimeoutError:
            post.abort()
            with contextlib.suppress(Exception):
                await future
            return Answer(error="timed out")
        except asyncio.CancelledError:
            post.abort()
            raise

    async def aclose(self) -> None:
        """Stops the deliveries under way (each recorded abandoned): they are not resumed."""
        for task in list(self._deliveries):
            task.cancel()
        for task in list(self._deliveries):
            with contextlib.suppress(BaseException):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)
