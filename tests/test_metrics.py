"""The Prometheus exposition after a known workload, checked number by number and by promtool."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter

import grpc
import numpy as np
import pytest

from sdedit.v1 import sdedit_pb2 as pb
from service.client import Client, build_request
from service.testing.servers import ROOT, wait_for
from tests.helpers import join_threads, png, promtool, start_threads
from tests.metrics_scrape import key, samples, scrape, value
from tests.models_for_tests import counting

EDITOR = "sdedit.v1.ImageEditor"
UNARY, STREAM = "unary", "server_stream"
SECRET_SEED = 987654321987  # must never show up as a label value
SECRET_REQUEST_ID = "req-4f1d2c9a"


def rpc(method: str, rpc_type: str, **extra: str) -> dict[str, str]:
    return dict(grpc_type=rpc_type, grpc_service=EDITOR, grpc_method=method, **extra)


def run_known_workload(address: str, guide: np.ndarray) -> dict:
    """k successful edits (unary and streaming), c cache hits (repeats of some of them),
    j invalid requests, one backend failure, on a server with the (default) memory cache.

    Returns the counters and histogram counts the exposition must show afterwards, every
    non-zero one (zero ones may be absent).
    """
    image = png(guide)
    small = png(np.full((8, 8), 200, dtype=np.uint8))
    ok_edits = [  # (rpc, model, steps, repeats, samples)
        ("Edit", "gauss", 5, 1, 1),
        ("Edit", "gauss", 4, 2, 3),
        ("Edit", "mix", 2, 1, 2),
        ("StreamEdit", "gauss", 6, 1, 1),
        ("StreamEdit", "gauss", 3, 1, 2),
    ]
    invalid = [  # (rpc, request): each fails validation, before or while decoding
        ("Edit", build_request(image, t0=0.0)),
        ("Edit", build_request(png(np.zeros((12, 12), np.uint8)), model="gauss-ve", t0=0.5)),  # wrong size
        ("Edit", build_request(image, t0=0.5, model="no-such-model")),
        ("StreamEdit", build_request(image, t0=0.5, steps=10_000)),
    ]
    repeated = [0, 3]  # these ok edits are sent again, without a request_id: cache hits
    codes: Counter[tuple[str, str]] = Counter()

    def send(client: Client, method: str, request) -> pb.EditResponse:
        if method == "Edit":
            return client.edit(request)
        return list(client.stream_edit(request))[-1].result  # the whole stream, to its status

    with Client(address) as client:
        client.list_models()
        codes["ListModels", "OK"] += 1
        for i, (method, model, steps, repeats, count) in enumerate(ok_edits):
            request = build_request(small if model == "mix" else image, model=model, t0=0.6, steps=steps, repeats=repeats,
                                    num_samples=count, seed=SECRET_SEED, request_id=f"{SECRET_REQUEST_ID}-{i}")
            response = send(client, method, request)
            assert len(response.images) == count and response.network_calls == steps * repeats and not response.cached
            codes[method, "OK"] += 1
            if i in repeated:
                request.request_id = ""
                assert send(client, method, request).cached
                codes[method, "OK"] += 1
        for method, request in invalid:
            with pytest.raises(grpc.RpcError) as err:
                client.edit(request) if method == "Edit" else list(client.stream_edit(request))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            codes[method, "INVALID_ARGUMENT"] += 1
        with pytest.raises(grpc.RpcError) as err:  # the gauss-ve backend was closed: a real backend failure
            client.edit(build_request(image, model="gauss-ve", t0=0.5, steps=3))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        codes["Edit", "UNAVAILABLE"] += 1

    expected: dict = {}
    rpc_types = {"Edit": UNARY, "StreamEdit": STREAM, "ListModels": UNARY}
    for (method, code), n in codes.items():
        labels = rpc(method, rpc_types[method])
        expected[key("grpc_server_handled_total", **labels, grpc_code=code)] = n
        for name in ("grpc_server_started_total", "grpc_server_handling_seconds_count"):
            expected[key(name, **labels)] = expected.get(key(name, **labels), 0) + n
    per_model: dict[str, Counter] = {}
    for _, model, steps, repeats, count in ok_edits:
        m = per_model.setdefault(model, Counter())
        m["edits"] += 1
        m["calls"] += steps * repeats
        m["samples"] += count
        m["batch_items"] += steps * repeats * count
    for model, m in per_model.items():
        for name in ("sdedit_decode_seconds_count", "sdedit_sde_loop_seconds_count", "sdedit_encode_seconds_count"):
            expected[key(name, model=model)] = m["edits"]
        expected[key("sdedit_edit_seconds_count", model=model, cached="false")] = m["edits"]
        for name in ("sdedit_network_calls_total", "sdedit_network_call_seconds_count", "sdedit_network_batch_size_count"):
            expected[key(name, model=model)] = m["calls"]
        expected[key("sdedit_samples_total", model=model)] = m["samples"]
    expected[key("sdedit_decode_seconds_count", model="gauss-ve")] = 1  # decoded, admitted, then the backend failed
    expected[key("sdedit_queue_wait_seconds_count")] = len(ok_edits) + 1  # cache hits take no slot
    expected[key("sdedit_backend_errors_total", model="gauss-ve", kind="closed")] = 1
    # cache hits: decoded (the key needs the decoded image), answered, nothing else
    expected[key("sdedit_decode_seconds_count", model="gauss")] += len(repeated)
    expected[key("sdedit_edit_seconds_count", model="gauss", cached="true")] = len(repeated)
    expected[key("sdedit_cache_requests_total", result="miss")] = len(ok_edits)
    expected[key("sdedit_cache_requests_total", result="hit")] = len(repeated)
    expected[key("sdedit_cache_requests_total", result="uncacheable")] = 1  # the unseeded gauss-ve edit
    expected[key("sdedit_cache_stored_total")] = 2 * len(ok_edits)  # each result and its request_id record
    # sequential edits: every network call is one batch tick with one edit in it
    ticks = sum(m["calls"] for m in per_model.values())
    expected[key("sdedit_batch_edits_count")] = ticks
    expected[key("sdedit_batch_tick_cpu_seconds_count")] = ticks
    batch_sums = {model: m["batch_items"] for model, m in per_model.items()}
    return {"counts": expected, "batch_sums": batch_sums}


@pytest.fixture(scope="module")
def workload(make_module_server):
    """A server with its metrics endpoint, after the known workload: (exposition, expectations)."""
    server = make_module_server(metrics_port=0)
    server.service.registry.get("gauss-ve").backend.close()
    guide = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    expected = run_known_workload(server.address, guide)
    return scrape(server.running.metrics_port), expected


def is_count(name: str) -> bool:
    return name.endswith("_total") or name.endswith("_count")


def test_every_counter_and_histogram_count_matches_the_workload(workload):
    text, expected = workload
    actual = {k: v for k, v in samples(text).items() if is_count(k[0]) and v != 0}
    assert actual.pop(key("sdedit_network_busy_seconds_total")) > 0  # seconds: not a count to predict
    assert actual == expected["counts"]
    assert value(text, "sdedit_batch_edits_sum") == expected["counts"][key("sdedit_batch_edits_count")]
    for model, total in expected["batch_sums"].items():
        assert value(text, "sdedit_network_batch_size_sum", model=model) == total
    assert value(text, "sdedit_cache_available") == 1
    assert key("sdedit_cache_errors_total") in samples(text)  # at 0: every cache counter shows from the start


def test_histograms_are_consistent_and_reach_300_seconds(workload):
    text, _ = workload
    all_samples = samples(text)
    counts = {k: v for k, v in all_samples.items() if k[0].endswith("_count")}
    assert counts
    for (name, labels), count in counts.items():
        base = name.removesuffix("_count")
        assert all_samples[(f"{base}_bucket", labels | {("le", "+Inf")})] == count
        if base.endswith("_seconds"):
            assert (f"{base}_bucket", labels | {("le", "300.0")}) in all_samples, f"{base} stops below 300 s"


def test_no_label_carries_a_per_request_value(workload):
    text, _ = workload
    assert str(SECRET_SEED) not in text and SECRET_REQUEST_ID not in text
    label_names = {name for (_, labels) in samples(text) for name, _ in labels}
    assert label_names <= {"grpc_type", "grpc_service", "grpc_method", "grpc_code", "model", "cached", "kind", "result", "le",
                           "state", "outcome",  # jobs and webhooks: fixed sets, shown at 0 from the start
                           "version", "python", "grpcio", "onnxruntime",
                           "content_hash", "sde", "width", "height", "channels", "flexible_size", "default"}


def test_info_metrics_describe_the_build_and_the_models(workload):
    text, _ = workload
    infos = [labels for (name, labels) in samples(text) if name == "sdedit_model_info"]
    assert sorted(dict(labels)["model"] for labels in infos) == ["gauss", "gauss-rgb", "gauss-ve", "mix"]
    assert [dict(labels)["default"] for labels in infos if dict(labels)["model"] == "gauss"] == ["true"]
    build = [dict(labels) for (name, labels) in samples(text) if name == "sdedit_build_info"]
    assert len(build) == 1 and build[0]["version"]


def test_promtool_finds_no_problem_in_the_exposition(workload):
    text, _ = workload
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_promtool_catches_a_badly_named_metric():
    """The check above can fail: promtool does object to a counter without _total."""
    bad = "# HELP edits Edits.\n# TYPE edits counter\nedits 1\n"
    result = subprocess.run([promtool(), "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "_total" in result.stdout + result.stderr


def test_in_flight_and_queue_depth_gauges_are_live(make_server, guide16):
    wrap = counting(delay=0.03)
    srv = make_server(wrap_model=wrap, max_active_edits=1, max_queue=4, metrics_port=0)
    port = srv.running.metrics_port
    assert value(scrape(port), "sdedit_edit_slots") == 1 and value(scrape(port), "sdedit_queue_capacity") == 4

    def one_edit(seed: int):  # different seeds: identical requests would share one edit
        with Client(srv.address) as client:
            client.edit(build_request(png(guide16), t0=0.5, steps=10, seed=seed))

    threads = start_threads(one_edit, range(3))
    wait_for(lambda: value(scrape(port), "sdedit_edits_in_flight") == 3, 10, what="3 edits in flight")
    assert value(scrape(port), "sdedit_queue_depth") == 2
    join_threads(threads, 30)
    text = scrape(port)
    assert value(text, "sdedit_edits_in_flight") == 0 and value(text, "sdedit_queue_depth") == 0
    assert value(text, "sdedit_queue_wait_seconds_count") == 3
    # when all three were in flight, one ran and two waited: the last waited at least the
    # whole of the second (10 calls x 30 ms)
    assert value(text, "sdedit_queue_wait_seconds_sum") >= 10 * 0.03


def test_a_cancelled_stream_is_counted_as_cancelled(make_server, guide16):
    srv = make_server(wrap_model=counting(delay=0.05), metrics_port=0)
    with Client(srv.address) as client:
        stream = client.stream_edit(build_request(png(guide16), t0=0.5, steps=50, seed=1))
        next(stream)
        stream.cancel()
    labels = rpc("StreamEdit", STREAM, grpc_code="CANCELLED")
    wait_for(lambda: value(scrape(srv.running.metrics_port), "grpc_server_handled_total", **labels) == 1, 10,
             what="a CANCELLED StreamEdit")
    text = scrape(srv.running.metrics_port)
    assert value(text, "grpc_server_started_total", **rpc("StreamEdit", STREAM)) == 1
    assert value(text, "sdedit_edit_seconds_count", model="gauss", cached="false") == 0  # not a completed edit


def test_each_server_has_its_own_registry(make_server, guide16):
    first, second = make_server(metrics_port=0), make_server(metrics_port=0)
    assert first.running.metrics_port != second.running.metrics_port
    with Client(first.address) as client:
        client.edit(build_request(png(guide16), t0=0.5, steps=2, seed=1))
    assert value(scrape(first.running.metrics_port), "sdedit_edit_seconds_count", model="gauss", cached="false") == 1
    assert value(scrape(second.running.metrics_port), "sdedit_edit_seconds_count", model="gauss", cached="false") == 0


def test_metrics_port_minus_one_serves_nothing(make_server):
    assert make_server(metrics_port=-1).running.metrics_port is None


# --- the Grafana dashboard ---------------------------------------------------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "sdedit-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "${model}": ".*"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) reads."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,.*\)\s*", expr)
    if label_values:
        return {label_values.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)  # label matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket'
            '{grpc_service="a.B", x=~"$model"}[$__rate_interval]))) / on (job) group_left sdedit_edit_slots offset 5m')
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "sdedit_edit_slots"}
    assert metric_names("label_values(sdedit_model_info, model)") == {"sdedit_model_info"}


def test_every_metric_the_dashboard_reads_is_exported(workload):
    text, _ = workload
    exported = {name for name, _ in samples(text)}
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert len(used) >= 15  # the extraction found the dashboard's metrics, not nothing
    assert used - exported == set()


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses each expression (Grafana's variables filled in) as a recording rule."""
    rules = []
    for i, expr in enumerate(e for e in dashboard_expressions() if not e.startswith("label_values")):
        for variable, filler in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, filler)
        rules.append(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(expr)}\n")
    path = tmp_path / "rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
