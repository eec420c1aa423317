"""The HTTPS client of webhooks: one POST to an address checked beforehand.

The host is resolved once and refused if ANY address it resolves to may not be reached
(policy.checked_addresses); the connection goes to a checked address itself, never resolving
the name again (a DNS answer that changes between the check and the connection cannot redirect
it), and TLS is verified against the URL's host name (webhook_ca_file, or the system's trust
store). Only the status line and headers of the answer are read; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.config import Settings, SettingsError
from service.jobs.webhooks.policy import checked_addresses


@dataclass(frozen=True)
class Answer:
    status: int = 0  # the HTTP status; 0 = none
    error: str = ""  # why there was no (good) answer
    retry_after: str | None = None  # the answer's Retry-After header as sent; None: none

    @property
    def result(self) -> str:
        """The attempt, for sdedit_webhook_attempts_total: 2xx, 3xx, 4xx, 5xx or error."""
        return f"{self.status // 100}xx" if 100 <= self.status < 600 else "error"


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The receivers' TLS verification; the CA bundle is read now: a wrong file fails at start-up."""
    try:
        return ssl.create_default_context(cafile=settings.webhook_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"webhook_ca_file {settings.webhook_ca_file}: not a readable PEM CA bundle "
                            f"({getattr(exc, 'strerror', None) or exc})") from None


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
        return checked_addresses(self.parts.hostname or "", self.port, self.allow_private)

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
                              response.getheader("Retry-After"))
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


class WebhookClient:
    """POSTs in threads of its own pool (at most webhook_max_concurrent at once), each bounded
    by webhook_timeout_seconds as a whole."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.context = tls_context(settings)
        self._pool = ThreadPoolExecutor(settings.webhook_max_concurrent, thread_name_prefix="webhook")

    async def post(self, parts: urllib.parse.SplitResult, body: bytes, headers: dict[str, str]) -> Answer:
        """Raises AddressRefused; any other failure is an Answer with an error."""
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
