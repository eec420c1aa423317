"""The benchmarks run (their numbers come from full runs, recorded under benchmarks/results/)."""

from __future__ import annotations

import importlib.util

import pytest

from service.config import Settings
from tests.servers import ROOT


@pytest.mark.slow
def test_backend_overhead_benchmark_runs(tmp_path, capsys):
    """A tiny run of benchmarks/backend_overhead.py against a real tritonserver."""
    spec = importlib.util.spec_from_file_location("backend_overhead", ROOT / "benchmarks" / "backend_overhead.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    results = benchmark.run(rounds=1, calls=2, edit_steps=2, work=tmp_path)
    benchmark.print_table(results)
    rows = {(row["model"], row["size"]): row for row in results["rows"]}
    default = Settings().default_model
    assert {model for model, _ in rows} == {"gaussian-vp", default}
    assert {size for _, size in rows} == {"32x32", "256x256"}
    for row in rows.values():
        if "n/a" in row:
            assert row["model"] == default  # only a model that refuses the size is skipped
            continue
        for backend in benchmark.BACKENDS:
            assert row[backend]["step_median_ms"] > 0 and row[backend]["edit_over_pure_network"] > 0
    assert "plain gRPC / shared memory per step" in capsys.readouterr().out
