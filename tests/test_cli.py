"""The installed `sdedit` console script end to end, and SIGTERM on a real process."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image

from service.client import Client, build_request
from service.testing.servers import free_port, health_status, wait_for
from tests.deploy_checks import SHUTDOWN_MARGIN_SECONDS
from tests.helpers import png

pytestmark = pytest.mark.e2e
SDEDIT = str(Path(sys.executable).parent / "sdedit")


def sdedit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([SDEDIT, *args], capture_output=True, text=True, timeout=120, check=check)


def test_models_and_edit_commands(serve, tmp_path, guide16, mask16):
    server = serve()
    listing = sdedit("models", "--address", server.address).stdout
    assert "gauss\t16x16" in listing and "gauss-ve\t16x16" in listing and "(default)" in listing
    assert "default dpmpp_2m_sde logsnr_uniform 20 steps (reference sampler ddpm)" in listing
    (tmp_path / "guide.png").write_bytes(png(guide16))
    (tmp_path / "mask.png").write_bytes(png(mask16))
    result = sdedit("edit", str(tmp_path / "guide.png"), "--mask", str(tmp_path / "mask.png"), "--t0", "0.6",
                    "--steps", "20", "--seed", "5", "--num-samples", "2", "-o", str(tmp_path / "out.png"),
                    "--preview-every", "10", "--preview-dir", str(tmp_path / "previews"), "--address", server.address)
    assert "wrote" in result.stdout and "(seed 5)" in result.stdout and "(seed 6)" in result.stdout
    assert "20/20 network calls" in result.stderr  # the progress bar, fed by StreamEdit
    for i in range(2):
        out = np.asarray(Image.open(tmp_path / f"out-{i}.png"))
        np.testing.assert_array_equal(out[mask16 == 0], guide16[mask16 == 0])
    assert len(list((tmp_path / "previews").glob("*.png"))) == 4
    assert "sampler dpmpp_2m_sde, spacing logsnr_uniform, 20 steps x 1 repeat(s) = 20 network calls" in result.stdout
    chosen = sdedit("edit", str(tmp_path / "guide.png"), "--t0", "0.05", "--sampler", "dpmpp_2m", "--spacing", "karras",
                    "--steps", "7", "-o", str(tmp_path / "chosen.png"), "--quiet", "--address", server.address)
    assert "sampler dpmpp_2m, spacing karras, 7 steps" in chosen.stdout
    full = sdedit("edit", str(tmp_path / "guide.png"), "--t0", "0.05", "--full-schedule", "-o", str(tmp_path / "full.png"),
                  "--quiet", "--address", server.address)
    assert "sampler ddpm, spacing time_uniform, 50 steps x 1 repeat(s) = 50 network calls" in full.stdout


def test_edit_reports_errors_clearly(serve, tmp_path, guide16):
    server = serve()
    (tmp_path / "guide.png").write_bytes(png(guide16))
    result = sdedit("edit", str(tmp_path / "guide.png"), "--t0", "1.5", "-o", str(tmp_path / "o.png"),
                    "--address", server.address, check=False)
    assert result.returncode == 1 and "INVALID_ARGUMENT: t0:" in result.stderr
    unreachable = sdedit("models", "--address", "127.0.0.1:1", "--timeout", "2", check=False)
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr


def test_serve_refuses_bad_settings_and_models(tmp_path):
    bad = subprocess.run([SDEDIT, "serve", "--port", "x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--port: expected int" in bad.stderr
    missing = subprocess.run([SDEDIT, "serve", "--model-repository", str(tmp_path), "--port", "0", "--http-port", "-1",
                              "--metrics-port", "-1"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "default model 'digits' is not in the repository" in missing.stderr


def guide(side: int) -> np.ndarray:
    """A larger guide for the flexible `gauss` model: each network call costs more, so edits last."""
    return np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)


def test_sigterm_drains_in_flight_edits_then_exits_zero(serve):
    grace = 30.0
    server = serve("--grace-seconds", str(grace), "--max-active-edits", "2")
    request = build_request(png(guide(128)), t0=1.0, full_schedule=True, repeats=3, seed=1)  # 3,000 network calls
    results: list = []
    running = [threading.Event(), threading.Event()]

    def run(started: threading.Event) -> None:
        own = build_request(png(guide(128)), t0=1.0, full_schedule=True, repeats=3, seed=2 + running.index(started))  # not one shared edit
        with Client(server.address) as client:
            for event in client.stream_edit(own, timeout=120):
                started.set()
                if event.WhichOneof("event") == "result":
                    results.append(event.result)

    threads = [threading.Thread(target=run, args=(started,)) for started in running]
    for thread in threads:
        thread.start()
    assert all(started.wait(30) for started in running), "edits did not start"
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: health_status(server.address) != health_pb2.HealthCheckResponse.SERVING, 10, what="NOT_SERVING")
    assert health_status(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with Client(server.address) as client, pytest.raises(grpc.RpcError) as raised:
        client.edit(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.process.wait(grace + SHUTDOWN_MARGIN_SECONDS) == 0
    exited_after = time.monotonic() - signalled
    assert exited_after < grace, f"exited {exited_after:.1f} s after SIGTERM, past the {grace} s grace period"
    for thread in threads:
        thread.join(10)
    assert len(results) == 2 and all(r.network_calls == 3000 for r in results)  # every accepted edit completed
    assert "draining: 2 edits in flight" in server.output()  # they were still running when the signal came


def test_sigterm_past_the_grace_period_cancels_what_is_left_and_still_exits_zero(serve):
    grace = 1.0
    server = serve("--grace-seconds", str(grace))
    outcome: dict = {}
    started = threading.Event()

    def run() -> None:
        long_edit = build_request(png(guide(256)), t0=1.0, full_schedule=True, repeats=10, seed=1)  # 10,000 calls: ~10 s
        with Client(server.address) as client:
            try:
                for _ in client.stream_edit(long_edit, timeout=120):
                    started.set()
            except grpc.RpcError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30), "the edit did not start"
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(grace + SHUTDOWN_MARGIN_SECONDS) == 0
    exited_after = time.monotonic() - signalled
    thread.join(10)
    assert grace <= exited_after < grace + SHUTDOWN_MARGIN_SECONDS, exited_after
    assert outcome["error"].code() == grpc.StatusCode.UNAVAILABLE  # retryable: the client may go to another replica
    assert "grace period over with 1 edits unfinished" in server.output()


def test_healthcheck_module_reads_the_servers_settings(server):
    """`python -m service.client.healthcheck` (the container HEALTHCHECK) asks the port from SDEDIT_PORT."""
    def healthcheck(port: int, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "SDEDIT_HOST": "127.0.0.1", "SDEDIT_PORT": str(port)}
        return subprocess.run([sys.executable, "-m", "service.client.healthcheck", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    port = int(server.address.rsplit(":", 1)[1])
    assert healthcheck(port).returncode == 0 and healthcheck(port).stdout.strip() == "SERVING"
    assert healthcheck(port, "--service", "liveness").returncode == 0
    unknown = healthcheck(port, "--service", "nothing")
    assert unknown.returncode == 1 and unknown.stdout.strip() == "NOT_FOUND"
    closed = healthcheck(free_port(), "--timeout", "1")
    assert closed.returncode == 1 and closed.stdout.strip() in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_png_output_is_a_valid_png(serve, guide16):
    server = serve()
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide16), t0=0.5, steps=5, seed=1))
    assert Image.open(io.BytesIO(response.images[0].data)).format == "PNG"
