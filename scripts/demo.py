"""The README's first command: start `sdedit serve` on its embedded defaults, run edits, stop.

    make demo            (or: .venv/bin/python scripts/demo.py)

Starts the service on a free port (ONNX Runtime in process, in-memory cache, the default
model; its HTTP/JSON door and the browser editor on another free port), runs `sdedit models`
and two `sdedit edit` calls on the example guides, one edit through the HTTP door (the JSON a
curl user would send), writes the outputs and a side-by-side picture to demo/, then stops the
service with SIGTERM. `make serve` keeps it running: the editor is then at http://127.0.0.1:8080/.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OUT = ROOT / "demo"
SDEDIT = shutil.which("sdedit", path=str(Path(sys.executable).parent)) or "sdedit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"sdedit serve exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise SystemExit("sdedit serve did not become healthy in time")


def run(*args: str) -> None:
    print("$ sdedit " + " ".join(args), flush=True)
    subprocess.run([SDEDIT, *args], check=True)


def http_edit(base: str) -> None:
    """One edit through the HTTP/JSON door, as `curl -d @request.json` would send it."""
    body = {"image": base64.b64encode((EXAMPLES / "strokes.png").read_bytes()).decode(), "t0": 0.3, "seed": "1"}
    print(f"$ curl -s {base}/v1/edits -H 'Content-Type: application/json' "
          "-d '{\"image\": \"<base64 of strokes.png>\", \"t0\": 0.3, \"seed\": \"1\"}'", flush=True)
    request = urllib.request.Request(f"{base}/v1/edits", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        response = json.load(answer)
    (OUT / "http-edit.png").write_bytes(base64.b64decode(response["images"][0]["data"]))
    print(f"  {response['networkCalls']} network calls, seed {response['images'][0]['seed']}: {OUT / 'http-edit.png'}")
    print(f"  (while it runs, the browser editor is at {base}/)")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    print(f"$ sdedit serve --host 127.0.0.1 --port {port} --http-port {http_port} --metrics-port -1   (in the background)",
          flush=True)
    server = subprocess.Popen([SDEDIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
                               "--metrics-port", "-1"])
    try:
        wait_serving(address, server)
        run("models", "--address", address)
        run("edit", str(EXAMPLES / "strokes.png"), "--t0", "0.3", "--seed", "1", "--num-samples", "4",
            "-o", str(OUT / "strokes-edit.png"), "--address", address)
        run("edit", str(EXAMPLES / "digit.png"), "--mask", str(EXAMPLES / "mask-top.png"), "--t0", "0.6",
            "--seed", "1", "--num-samples", "4", "-o", str(OUT / "masked-edit.png"), "--address", address)
        http_edit(f"http://127.0.0.1:{http_port}")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    rows = []
    for guide, stem in (("strokes.png", "strokes-edit"), ("digit.png", "masked-edit")):
        images = [np.asarray(Image.open(EXAMPLES / guide))] + [np.asarray(Image.open(OUT / f"{stem}-{i}.png")) for i in range(4)]
        rows.append(np.concatenate([np.pad(im, 2, constant_values=128) for im in images], axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    sheet.resize((sheet.width * 4, sheet.height * 4), Image.NEAREST).save(OUT / "demo.png")
    print(f"\nguides (left) and their edits: {OUT / 'demo.png'}")
    print(f"sdedit serve stopped on SIGTERM with exit code {code}")
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
