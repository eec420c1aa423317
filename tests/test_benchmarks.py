"""The benchmarks run (their numbers come from full runs, recorded under benchmarks/results/)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from service.config import Settings
from service.testing.servers import ROOT


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


@pytest.mark.slow
def test_samplers_benchmark_runs(tmp_path):
    """A tiny run of benchmarks/samplers.py: the oracle part through an in-process server, and digits."""
    spec = importlib.util.spec_from_file_location("samplers_benchmark", ROOT / "benchmarks" / "samplers.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = benchmark.main(["--size", "8", "--samples", "1", "--stds", "0.3", "--guides", "4", "--digits-calls", "3",
                             "--digits-t0", "0.05", "--digits-runs", "dpmpp_2m_sde:logsnr_uniform", "--out", str(tmp_path)])
    assert {(r["sampler"], r["spacing"]) for r in result["oracle"] if r["sde"] == "vp_discrete"} >= {
        ("dpmpp_2m_sde", "logsnr_uniform"), ("ddpm", "time_uniform"), ("dpmpp_2m", "karras")}
    refused = [r for r in result["oracle"] if "refused" in r]
    assert refused and all(r["sampler"] == "euler_maruyama" for r in refused)  # EM at 5 calls from t0 = 0.8 on VE
    assert all(r["network_calls"] == int(r["schedule"].split()[0]) for r in result["oracle"] if "refused" not in r
               and r["schedule"] != "full")
    assert [r["network_calls"] for r in result["digits"]] == [3, 50]  # 3 calls, and the full schedule at t0 = 0.05
    assert (tmp_path / "error_vs_calls.png").stat().st_size > 0 and "digits" in (tmp_path / "results.md").read_text()


def test_preview_encoding_benchmark_runs(tmp_path):
    """A tiny run of benchmarks/preview_encoding.py through an in-process server."""
    spec = importlib.util.spec_from_file_location("preview_benchmark", ROOT / "benchmarks" / "preview_encoding.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    report = benchmark.main(["--size", "32", "--steps", "4", "--rounds", "1", "--json", str(tmp_path / "p.json")])
    assert set(report["results"]) == set(benchmark.PHASES) and report["ratios"]["plain_edit_seconds"] > 0
    assert all(r["ticks"] >= 3 for r in report["results"].values()) and (tmp_path / "p.json").stat().st_size > 0


@pytest.mark.slow
def test_batching_benchmark_runs(tmp_path):
    """A tiny run of benchmarks/batching.py: (a) through in-process servers, (b) on the simulated accelerator."""
    spec = importlib.util.spec_from_file_location("batching_benchmark", ROOT / "benchmarks" / "batching.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "batching.json"
    benchmark.main(["--embedded-levels", "1,4", "--rounds", "2", "--window", "0.5", "--window-warmup", "0.2",
                    "--sim-levels", "1,8", "--duration", "1", "--warmup", "0.3",
                    "--calls", "3", "--network-batches", "1,4", "--out", str(out)])
    results = json.loads(out.read_text())
    a, b = results["embedded"], results["simulated"]
    assert a["model"] == Settings().default_model and a["calls_per_edit"] == 3
    assert {(r["path"], r["concurrency"]) for r in a["rows"]} == {(p, c) for p in ("batched", "per_edit") for c in (1, 4)}
    for row in a["rows"]:
        assert row["edits"] > 0 and row["edits_per_second"] > 0 and row["network_calls_per_second"] > 0
        assert row["latency_p50_seconds"] <= row["latency_p99_seconds"] and row["edits_per_second_over_bound"] > 0
        assert row["images_per_call"] == 1.0 if row["path"] == "per_edit" else 1.0 <= row["images_per_call"] <= 4.0
        assert row["window_ratios"]["n"] == 2 and row["bound_edits_per_second"] > 0
    assert set(a["network_before"]) == {"1", "4"} and a["network_best_images_per_second"] > 0
    # every window lies between two measurements of the network alone: one per level before its first
    # window, one after each window; the windows' seconds are their own (the server stood still between them)
    assert len(a["windows"]) == 2 * 2 * 2 and len(a["network_samples"]) == 2 + len(a["windows"])
    assert all(w["after"] == w["before"] + 1 and 0.5 <= w["seconds"] < 1.5 for w in a["windows"])
    assert "c1_latency_p50_over_per_edit" in a["acceptance"]
    assert [(r["pipeline_depth"], r["concurrency"]) for r in b["rows"]] == [(1, 1), (2, 1), (1, 8), (2, 8)]
    assert b["a_ms"] == 6.0 and b["b_ms"] == 1.2
    for row in b["rows"]:
        assert row["edits"] > 0 and 0 < row["edits_per_second_over_ideal"] <= 1.05
        assert row["tick_cpu_ms"] > 0 and row["process_cpu_ms_per_sample_step"] > 0


@pytest.mark.slow
def test_gpu_batching_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_batching.py (issue 12, item 8: run it where a GPU is lent) with a shrunken UNet
    on the CPU, in bfloat16 (a reduced precision, as fp16 on a GPU): the network alone, then the scheduler's
    closed loops beside their bounds."""
    pytest.importorskip("torch", reason="the GPU benchmark needs torch (the train extra)")
    spec = importlib.util.spec_from_file_location("gpu_batching_benchmark", ROOT / "benchmarks" / "gpu_batching.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "gpu_batching.json"
    benchmark.main(["--device", "cpu", "--dtype", "bf16", "--ch", "32", "--resolution", "32", "--levels", "1,4",
                    "--batches", "1,4", "--duration", "0.6", "--warmup", "0.2", "--alone-seconds", "0.2", "--calls", "3",
                    "--max-batch", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["network"]["shape"] == "3x32x32" and results["network"]["parameters"] > 0
    assert [a["batch"] for a in results["alone"]] == [1, 4]
    assert all(a["end_to_end_images_per_second"] > 0 and a["forward_images_per_second"] > 0 for a in results["alone"])
    assert [(r["path"], r["pipeline_depth"], r["concurrency"]) for r in results["rows"]] == [
        (path, depth, c) for c in (1, 4) for path, depth in (("batched", 1), ("batched", 2), ("per_edit", 1))]
    for row in results["rows"]:
        assert row["edits"] > 0 and row["edits_per_second_over_ideal"] > 0
        assert row["images_per_call"] == 1.0 if row["path"] == "per_edit" or row["concurrency"] == 1 else row["images_per_call"] > 1
    # the bound interpolates the measured time per call between batches
    alone = results["alone"]
    assert benchmark.bound_images_per_second(alone, 4) == pytest.approx(alone[1]["end_to_end_images_per_second"])
    assert benchmark.bound_images_per_second(alone, 1) == pytest.approx(alone[0]["end_to_end_images_per_second"])
