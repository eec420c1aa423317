"""What a receiver's answer means for a webhook delivery: `classify`, called directly (no
receiver, no server, no clock)."""

from __future__ import annotations

import pytest

from service.jobs.webhooks.client import Answer
from service.jobs.webhooks.delivery import DELIVERED, EXHAUSTED, MAX_DELAY_SECONDS, REJECTED, RETRY, Verdict, classify


def http(status: int, retry_after: str | None = None) -> Answer:
    """An answer as the client makes it of a status line and its Retry-After header."""
    return Answer(status, "" if 200 <= status < 300 else f"HTTP {status}", retry_after)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("last", [False, True])
def test_a_2xx_is_delivered_even_on_the_last_try(status, last):
    assert classify(http(status), backoff=4.0, last=last) == Verdict(DELIVERED)


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308, 400, 401, 403, 404, 410, 413, 422, 499])
def test_a_redirect_or_a_4xx_other_than_408_and_429_is_rejected_with_tries_left(status):
    assert classify(http(status), backoff=4.0, last=False) == Verdict(REJECTED)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried_after_the_backoff(status):
    assert classify(http(status), backoff=4.0, last=False) == Verdict(RETRY, 4.0)


@pytest.mark.parametrize("answer", [Answer(error="timed out"), Answer(error="TLS: certificate has expired"),
                                    Answer(error="cannot connect to 192.0.2.1: Connection refused"),
                                    Answer(error="cannot resolve hooks.example.com: Name or service not known")])
def test_a_transport_error_is_retried(answer):
    assert answer.status == 0 and answer.result == "error"
    assert classify(answer, backoff=2.5, last=False) == Verdict(RETRY, 2.5)


@pytest.mark.parametrize("answer", [http(408), http(429, "1"), http(500), http(503, "1"), Answer(error="timed out")])
def test_a_retryable_answer_on_the_last_try_is_given_up_exhausted(answer):
    assert classify(answer, backoff=4.0, last=True) == Verdict(EXHAUSTED)


@pytest.mark.parametrize("status", [429, 503])
def test_a_longer_retry_after_of_a_429_or_503_is_waited_for(status):
    assert classify(http(status, "7"), backoff=1.0, last=False) == Verdict(RETRY, 7.0)
    assert classify(http(status, " 7 "), backoff=1.0, last=False) == Verdict(RETRY, 7.0)


def test_a_shorter_retry_after_does_not_shorten_the_backoff():
    assert classify(http(429, "1"), backoff=6.0, last=False) == Verdict(RETRY, 6.0)
    assert classify(http(503, "0"), backoff=6.0, last=False) == Verdict(RETRY, 6.0)


def test_a_retry_after_is_capped():
    assert classify(http(429, "86400"), backoff=1.0, last=False) == Verdict(RETRY, MAX_DELAY_SECONDS)


@pytest.mark.parametrize("header", ["Wed, 21 Oct 2099 07:28:00 GMT", "1.5", "-3", "", "soon"])
def test_a_retry_after_not_in_delta_seconds_is_not_trusted(header):
    assert classify(http(429, header), backoff=2.0, last=False) == Verdict(RETRY, 2.0)


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_a_retry_after_counts_only_on_a_429_or_503(status):
    assert classify(http(status, "60"), backoff=2.0, last=False) == Verdict(RETRY, 2.0)


def test_a_retry_after_on_a_final_answer_changes_nothing():
    assert classify(http(200, "60"), backoff=2.0, last=False) == Verdict(DELIVERED)
    assert classify(http(400, "60"), backoff=2.0, last=False) == Verdict(REJECTED)


def test_the_attempt_result_counted_for_each_answer():
    assert [http(status).result for status in (200, 302, 404, 503)] == ["2xx", "3xx", "4xx", "5xx"]
    assert Answer(error="timed out").result == "error" and Answer(600).result == "error"
