"""A small run of benchmarks/cache_latency.py: it runs, asserts its own hits and misses,
and writes the table's rows as JSON."""

from __future__ import annotations

import json

import pytest

from benchmarks import cache_latency


@pytest.mark.slow
def test_small_cache_latency_run(tmp_path, capsys):
    out = tmp_path / "cache_latency.json"
    assert cache_latency.main(["--requests", "5", "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    cells = {(r["backend"], r["size"], r["kind"]) for r in result["rows"]}
    expected = {("none", s, "uncached") for s in (32, 256)}
    expected |= {(b, s, k) for b in ("memory", "redis") for s in (32, 256) for k in ("miss", "hit")}
    assert cells == expected
    assert all(r["count"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"] for r in result["rows"])
    assert "p99 ms" in capsys.readouterr().out
