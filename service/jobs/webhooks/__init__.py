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

The modules: policy (which URLs and addresses are allowed; the check at SubmitEdit), signing
(signatures, each tenant's secret), client (the pinned HTTPS POST), delivery (the tries, the
pure `classify` of an answer, and `Webhooks`, this replica's deliveries).
"""

from service.jobs.webhooks.delivery import WebhookObserver, Webhooks, classify
from service.jobs.webhooks.policy import check_url, forbidden, literal_ip
from service.jobs.webhooks.signing import SecretSource, secret_source, signature

__all__ = ["SecretSource", "WebhookObserver", "Webhooks", "check_url", "classify", "forbidden", "literal_ip",
           "secret_source", "signature"]
