"""`sdedit loadtest` against real servers: the report, the open loop's honesty, SLO exits, Triton, plots."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import fastjsonschema
import pytest

from sdedit.v1 import sdedit_pb2 as pb
from service.cli import main as sdedit_main
from service.loadtest.cli import run_loadtest
from service.loadtest.report import DEFAULT_MAX_ERROR_RATE, SLO, percentile
from service.loadtest.runner import LoadPlan
from service.loadtest.triton import difference, parse
from service.loadtest.workload import FIXED, FRESH, RequestOptions, Workload, WorkloadError
from service.testing.servers import ROOT, free_port
from tests.metrics_scrape import scrape, value
from tests.models_for_tests import counting

SCHEMA = json.loads((ROOT / "docs" / "loadtest.schema.json").read_text())
validate_report = fastjsonschema.compile(SCHEMA)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


NO_SLO = SLO()
THREE_STEPS = RequestOptions(steps=3)


def loadtest(address: str, slo: SLO = NO_SLO, triton_url: str | None = None, plot_dir: Path | None = None,
             options: RequestOptions = THREE_STEPS, **plan) -> dict:
    report, _ = asyncio.run(run_loadtest(LoadPlan(address=address, **plan), options, slo, triton_url, plot_dir))
    validate_report(report)
    return report


# --- the report --------------------------------------------------------------------------------

def test_closed_loop_report_counts_every_request(server):
    options = RequestOptions(steps=3, num_samples=2, fixed_seed_fraction=0.5, sizes=((16, 16), (32, 32)))
    report = loadtest(server.address, options=options, concurrency=3, requests=16)
    assert report["config"]["mode"] == "closed" and report["config"]["sizes"] == ["16x16", "32x32"]
    assert report["requests"] == {"measured": 16, "ok": 16, "errors": 0, "not_sent": 0, "warmup": 0}
    assert report["status_codes"] == {"OK": 16} and report["errors"] == []
    # the server's memory cache answers every fixed request but the first of each size
    # (a duplicate in flight shares the first one's result: also cached)
    groups = {(g["size"], g["seed_kind"]): g for g in report["groups"]}
    for size in ("16x16", "32x32"):
        assert groups[size, FIXED]["cache_hits"] == groups[size, FIXED]["count"] - 1
        assert groups[size, FRESH]["cache_hits"] == 0
    hits = sum(g["cache_hits"] for g in report["groups"])
    assert report["cache"] == {"hits": hits, "misses": 16 - hits, "hit_ratio": hits / 16} and hits > 0
    seconds, throughput = report["window_seconds"], report["throughput"]
    answers = throughput["answers_in_window"]  # the window ends when the 16th request is sent
    assert 16 - 3 <= answers < 16  # the last one, at least, is answered after it
    assert throughput["requests_per_second"] == pytest.approx(answers / seconds)
    assert throughput["images_per_second"] == pytest.approx(answers * 2 / seconds)
    computed_calls = throughput["network_calls_per_second"] * seconds  # cached answers made no calls
    assert computed_calls == pytest.approx(round(computed_calls / 3) * 3) and computed_calls < answers * 3
    latency = report["latency_seconds"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["min"] <= latency["mean"] <= latency["max"]
    assert set(groups) == {(s, k) for s in ("16x16", "32x32") for k in (FIXED, FRESH)}
    assert sum(g["count"] for g in groups.values()) == 16
    assert report["server_seconds_mean"]["total"] > 0


def test_warm_up_requests_are_sent_but_not_counted(server):
    report = loadtest(server.address, concurrency=2, warmup=0.4, duration=0.4)
    assert report["requests"]["warmup"] > 0 and report["requests"]["measured"] > 0
    assert report["status_codes"] == {"OK": report["requests"]["measured"]}


def test_fixed_requests_repeat_exactly_and_fresh_ones_never():
    model = pb.ModelInfo(name="gauss", width=16, height=16, channels=1, flexible_size=True, size_multiple=1, default_steps=20)
    workload = Workload(model, RequestOptions(fixed_seed_fraction=0.5, sizes=((16, 16),)), seed=1)
    specs = [workload.next() for _ in range(40)]
    fixed = {s.request.SerializeToString(deterministic=True) for s in specs if s.seed_kind == FIXED}
    fresh = [s.request.seed for s in specs if s.seed_kind == FRESH]
    assert len(fixed) == 1 and len(set(fresh)) == len(fresh) > 5
    again = Workload(model, RequestOptions(fixed_seed_fraction=0.5, sizes=((16, 16),)), seed=1)
    assert [s.seed_kind for s in specs[:10]] == [again.next().seed_kind for _ in range(10)]  # the same mix
    assert not set(fresh) & {again.next().request.seed for _ in range(40)}  # but never a fresh seed again
    with pytest.raises(WorkloadError, match="only 16x16"):
        Workload(pb.ModelInfo(name="m", width=16, height=16, channels=1), RequestOptions(sizes=((32, 32),)))
    with pytest.raises(WorkloadError, match="multiples of 8"):
        Workload(pb.ModelInfo(name="m", width=16, height=16, channels=1, flexible_size=True, size_multiple=8),
                 RequestOptions(sizes=((20, 16),)))


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 95, 99, 100)] == [50, 90, 95, 99, 100]
    assert percentile([0.3], 99) == 0.3 and percentile([1.0, 2.0], 50) == 1.0 and percentile([1.0, 2.0], 51) == 2.0


# --- the open loop: no coordinated omission ---------------------------------------------------------

def test_open_loop_latency_includes_the_wait_to_be_sent(make_server):
    """One slot on the server, one request in flight on the client, every edit at least
    S = steps x delay long, a request due every 1/R < S: request k cannot even be sent
    before k earlier edits finished, so its latency from its intended send time is at least
    (k + 1) S - k / R. Measured from the actual send it would stay near S."""
    delay, steps, rate, count = 0.02, 5, 50.0, 10
    srv = make_server(wrap_model=counting(delay=delay), max_active_edits=1)
    report, _ = asyncio.run(run_loadtest(LoadPlan(address=srv.address, rate=rate, concurrency=1, requests=count),
                                         RequestOptions(steps=steps), SLO()))
    validate_report(report)
    service = steps * delay
    assert report["requests"]["ok"] == count
    latency, service_time = report["latency_seconds"], report["service_time_seconds"]
    assert latency["max"] >= count * service - (count - 1) / rate  # the last request's bound
    assert latency["max"] > 3 * service_time["p50"]
    assert latency["p50"] > 2 * service_time["p50"]


def test_open_loop_records_keep_their_schedule(make_server):
    from sdedit.v1 import sdedit_pb2_grpc
    from service.loadtest.runner import Runner, open_channel
    from service.loadtest.workload import pick_model

    delay, steps, rate, count = 0.02, 5, 50.0, 8
    srv = make_server(wrap_model=counting(delay=delay), max_active_edits=1)

    async def run():
        async with open_channel(srv.address) as channel:
            stub = sdedit_pb2_grpc.ImageEditorStub(channel)
            models = (await stub.ListModels(pb.ListModelsRequest())).models
            plan = LoadPlan(address=srv.address, rate=rate, concurrency=1, requests=count)
            return await Runner(plan, Workload(pick_model(list(models), ""), RequestOptions(steps=steps)), stub).run()

    records = asyncio.run(run()).records
    for k, record in enumerate(records):
        assert record.intended == pytest.approx(k / rate)  # due on schedule, whatever happened before
        assert record.latency >= (k + 1) * steps * delay - k / rate
        assert record.sent - record.intended >= k * steps * delay - k / rate - 0.005  # waited to be sent


# --- SLOs and the command -----------------------------------------------------------------------

def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = sdedit_main(["loadtest", "--warmup", "0", "--steps", "2", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_slo_flags_set_the_exit_code(server, capsys, tmp_path):
    address = ("--address", server.address, "--requests", "4")
    code, out, _ = run_cli(capsys, *address, "--max-p99", "60", "--max-error-rate", "0")
    assert code == 0 and "SLO: met" in out and "latency (from intended send)" in out
    code, out, _ = run_cli(capsys, *address, "--max-p99", "0.000001", "--json", str(tmp_path / "r.json"))
    assert code == 1 and "SLO: MISSED: p99 latency" in out
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    assert report["slo"]["passed"] is False and report["slo"]["max_p99_seconds"] == 0.000001


def test_errors_are_counted_with_their_messages(server, capsys):
    code, out, _ = run_cli(capsys, "--address", server.address, "--requests", "3", "--t0", "2", "--json", "-")
    assert code == 1  # no SLO given: the default --max-error-rate still judges the errors
    report = json.loads(out)
    validate_report(report)
    assert report["status_codes"] == {"INVALID_ARGUMENT": 3} and report["slo"]["error_rate"] == 1.0
    assert report["slo"]["max_error_rate"] == DEFAULT_MAX_ERROR_RATE and report["slo"]["passed"] is False
    assert report["errors"][0]["count"] == 3 and report["errors"][0]["message"].startswith("t0:")
    assert report["latency_seconds"]["p99"] is None
    assert run_cli(capsys, "--address", server.address, "--requests", "3", "--t0", "2", "--max-error-rate", "0.5")[0] == 1
    code, out, _ = run_cli(capsys, "--address", server.address, "--requests", "3", "--t0", "2", "--max-error-rate", "1")
    assert code == 0 and "SLO: met" in out  # errors reported, not judged


@pytest.mark.parametrize("shape", [dict(concurrency=2), dict(rate=200.0)], ids=["closed", "open"])
def test_a_vanished_server_gets_backoff_not_a_flood(make_server, shape):
    """The server stops 1 s into a 3.5 s run. Before, the client sent every call it could
    (closed loop: thousands a second, each failing at once with UNAVAILABLE; open loop: the
    full rate); now each caller (or the open loop's schedule) backs off exponentially, the
    requests due during a back-off are recorded as errors without being sent, and the
    default error-rate SLO fails the run."""
    from sdedit.v1 import sdedit_pb2_grpc
    from service.loadtest.report import build_report
    from service.loadtest.runner import Runner, open_channel
    from service.loadtest.workload import pick_model

    srv = make_server()
    plan = LoadPlan(address=srv.address, duration=3.5, **shape)

    async def run():
        async with open_channel(srv.address) as channel:
            stub = sdedit_pb2_grpc.ImageEditorStub(channel)
            workload = Workload(pick_model(list((await stub.ListModels(pb.ListModelsRequest())).models), ""), THREE_STEPS)
            runner = Runner(plan, workload, stub)

            async def stop_later() -> float:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(srv.stop)
                return runner._now()  # the port is closed from here on

            stopper = asyncio.create_task(stop_later())
            result = await runner.run()
            return workload, result, await stopper

    workload, result, stopped = asyncio.run(run())
    calls_after = sorted(r.sent for r in result.records if r.sent >= stopped and r.called)
    print(f"{plan.mode} loop: {len(calls_after)} calls in the {plan.duration - stopped:.1f} s after the server stopped")
    assert sum(r.code == "OK" for r in result.records) > 20  # it did run against a live server first
    assert 1 <= len(calls_after) < 40
    assert all(r.code == "UNAVAILABLE" for r in result.records if r.sent >= stopped)
    if plan.mode == "open":
        due = [r.intended for r in result.records]
        assert due == pytest.approx([k / plan.rate for k in range(len(due))])  # the schedule is kept...
        assert len(due) == pytest.approx(plan.duration * plan.rate, abs=2)
        not_sent = [r for r in result.records if not r.called]
        assert len(not_sent) > 0.8 * (plan.duration - stopped) * plan.rate  # ...requests due in a back-off are not sent
        assert all(r.message.startswith("not sent") for r in not_sent)
        for t in calls_after:  # and no burst when a back-off ends
            assert sum(t <= u < t + 0.1 for u in calls_after) <= 3
    report = build_report(plan, workload, result, SLO(max_error_rate=DEFAULT_MAX_ERROR_RATE))
    validate_report(report)
    assert report["slo"]["passed"] is False and report["status_codes"]["UNAVAILABLE"] > 0
    assert report["requests"]["not_sent"] == sum(not r.called for r in result.records if not r.warmup)


def test_bad_flags_and_no_server_exit_2(server, capsys):
    assert run_cli(capsys, "--address", server.address, "--concurrency", "0")[0] == 2
    assert run_cli(capsys, "--address", server.address, "--model", "gauss-ve", "--sizes", "32x32")[0] == 2  # 16x16 only
    code, _, err = run_cli(capsys, "--address", f"127.0.0.1:{free_port()}", "--requests", "1", "--timeout", "5")
    assert code == 2 and "cannot list the models" in err


def test_plots_are_written_and_skipped_without_matplotlib(server, capsys, tmp_path, monkeypatch):
    code, out, _ = run_cli(capsys, "--address", server.address, "--requests", "6", "--plot-dir", str(tmp_path / "plots"))
    assert code == 0
    for name in ("latency-over-time.png", "latency-histogram.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, out, _ = run_cli(capsys, "--address", server.address, "--requests", "2", "--plot-dir", str(tmp_path / "none"))
    assert code == 0 and "plots skipped" in out and not (tmp_path / "none").exists()


# --- Triton's counters ----------------------------------------------------------------------------

def triton_text(success: float, executions: float, inferences: float, queue_us: float, compute_us: float) -> str:
    """Triton's exposition for model "unet" (two versions) and an idle model."""
    lines = []
    for name, total in (("nv_inference_request_success", success), ("nv_inference_exec_count", executions),
                        ("nv_inference_count", inferences), ("nv_inference_queue_duration_us", queue_us),
                        ("nv_inference_compute_infer_duration_us", compute_us)):
        lines += [f"# HELP {name} Triton counter", f"# TYPE {name} counter",
                  f'{name}{{model="unet",version="1"}} {total - 1}', f'{name}{{model="unet",version="2"}} 1',
                  f'{name}{{model="idle",version="1"}} 7']
    lines += ["# HELP nv_gpu_utilization GPU utilization", "# TYPE nv_gpu_utilization gauge",
              'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5']
    return "\n".join(lines) + "\n"


BEFORE = triton_text(10, 5, 20, 1_000, 50_000)
AFTER = triton_text(30, 10, 60, 5_000, 150_000)
EXPECTED_UNET = {"requests": 20, "executions": 5, "inferences": 40, "avg_batch_size": 8.0,
                 "avg_queue_seconds": pytest.approx(200e-6), "avg_compute_seconds": pytest.approx(5e-3)}


def test_triton_counters_are_diffed_per_model():
    assert difference(parse(BEFORE), parse(AFTER)) == {"unet": EXPECTED_UNET}


@pytest.fixture
def fake_triton():
    """Triton's metrics endpoint on loopback: BEFORE and AFTER in turn (a run scrapes twice)."""
    scrapes = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (AFTER if len(scrapes) % 2 else BEFORE).encode()
            scrapes.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/metrics", scrapes
    httpd.shutdown()
    httpd.server_close()


def test_loadtest_reports_tritons_view_of_the_run(server, fake_triton, capsys):
    url, scrapes = fake_triton
    report = loadtest(server.address, triton_url=url, requests=3, warmup=0.2)
    assert scrapes == ["/metrics", "/metrics"]  # at the end of warm-up and at the end of the run
    assert report["triton"] == {"url": url, "error": None, "models": {"unet": EXPECTED_UNET}}
    code, out, _ = run_cli(capsys, "--address", server.address, "--requests", "1", "--triton-metrics-url", url)
    assert code == 0 and "triton unet: 20 requests, 5 executions, average batch 8.00, queue 0.20 ms" in out


def test_an_unreachable_triton_does_not_fail_the_run(server):
    report = loadtest(server.address, triton_url=f"http://127.0.0.1:{free_port()}/metrics", requests=2)
    assert report["requests"]["ok"] == 2 and report["triton"]["error"].startswith("cannot read")


# --- end to end: the console scripts --------------------------------------------------------------

@pytest.mark.e2e
def test_sdedit_loadtest_against_sdedit_serve(serve):
    metrics_port = free_port()
    process = serve("--metrics-port", str(metrics_port))
    sdedit = str(Path(sys.executable).parent / "sdedit")
    run = subprocess.run([sdedit, "loadtest", "--address", process.address, "--concurrency", "2", "--requests", "6",
                          "--warmup", "0", "--steps", "4", "--json", "-"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    validate_report(report)
    assert "closed loop, concurrency 2" in run.stderr  # the table goes to stderr when JSON takes stdout
    text = scrape(metrics_port)
    assert value(text, "sdedit_edit_seconds_count", model="gauss", cached="false") == report["requests"]["ok"] == 6
    # 6 edits x 4 steps of one sample; concurrent edits share calls (step-level batching)
    assert value(text, "sdedit_network_batch_size_sum", model="gauss") == 6 * 4
    assert value(text, "sdedit_network_calls_total", model="gauss") <= 6 * 4
    health = dict(grpc_type="unary", grpc_service="grpc.health.v1.Health", grpc_method="Check", grpc_code="OK")
    assert value(text, "grpc_server_handled_total", **health) >= 1  # the readiness polls count too


def test_loadtest_reads_a_real_tritons_counters(parity_repository, triton, make_server):
    """Against the service on a real tritonserver: every network call of the run is one
    Triton request carrying the edit's samples as its batch (one caller: nothing to merge)."""
    requests, steps, samples = 4, 3, 2
    srv = make_server.triton(triton.url, shm=False, repository=parity_repository)
    report = loadtest(srv.address, triton_url=f"http://{triton.host}:{triton.metrics_port}/metrics",
                      options=RequestOptions(steps=steps, num_samples=samples, sizes=((16, 16),)), requests=requests)
    assert report["triton"]["error"] is None
    gauss = report["triton"]["models"]["gauss"]
    assert gauss["requests"] == gauss["executions"] == requests * steps
    assert gauss["inferences"] == requests * steps * samples and gauss["avg_batch_size"] == samples
    assert gauss["avg_queue_seconds"] >= 0 and gauss["avg_compute_seconds"] > 0
    assert set(report["triton"]["models"]) == {"gauss"}


@pytest.mark.slow
def test_concurrency_benchmark_runs(tmp_path, capsys):
    """A tiny run of benchmarks/loadtest_concurrency.py (the recorded numbers come from a full run)."""
    from benchmarks import loadtest_concurrency as benchmark

    results = benchmark.run([1, 2], duration=0.5, warmup=0.0, work=tmp_path, options=RequestOptions(steps=5))
    benchmark.print_table(results)
    for row in results["rows"]:
        validate_report(row["report"])
        assert row["report"]["requests"]["errors"] == 0
        assert row["server_metrics"]["edits"] == row["report"]["requests"]["ok"]  # no warm-up here
        assert len(row["load_average_1min"]) == 2 and row["cpus"] >= 1
    assert "srv edits" in capsys.readouterr().out
    table = benchmark.markdown_table(results)
    assert f"Model `{results['rows'][0]['report']['config']['model']}`" in table and table.count("\n| ") == 3
