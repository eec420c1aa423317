"""Reading a Prometheus exposition in tests: fetch it, index its samples."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[SampleKey, float]:
    """{(sample name, labels): value} for every sample in the exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: str) -> SampleKey:
    return name, frozenset(labels.items())


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get(key(name, **labels), 0.0)
