"""A non-Python client: @grpc/grpc-js (Node.js, from npm) calls the service over TLS with a
bearer token. `make test` installs it into .tools/node (scripts/install_node_client.sh) from
tests/node/package-lock.json; without node the test is skipped. The client loads the API with
proto/ as its only include path, as a client built from the repository's protos alone would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from service.testing.servers import ROOT
from tests.helpers import png

NODE_TOOLS = ROOT / ".tools" / "node"
TOKEN = "node-client-" + "5" * 32

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("openssl") is None,
                                reason="needs node (18+) and openssl")


@pytest.fixture(scope="module")
def grpc_js() -> None:
    """The npm packages, installed by the project's own script if they are not there yet."""
    subprocess.run(["bash", str(ROOT / "scripts" / "install_node_client.sh")], check=True, timeout=300)
    if not (NODE_TOOLS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("npm could not install @grpc/grpc-js")


def test_grpc_js_edits_over_tls_with_a_token_and_is_refused_without_one(grpc_js, make_server, ca, tmp_path, guide16):
    pair = ca.issue("server")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tenants": [{"name": "node", "token": TOKEN}]}))
    srv = make_server(tls_cert_file=str(pair.cert), tls_key_file=str(pair.key), auth_tokens_file=str(tokens))
    guide = tmp_path / "guide.png"
    guide.write_bytes(png(guide16))
    run = subprocess.run(["node", str(ROOT / "tests" / "node" / "edit_client.js"), f"localhost:{srv.running.port}",
                          str(ca.cert), TOKEN, str(guide), str(ROOT / "proto")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NODE_PATH": str(NODE_TOOLS / "node_modules")})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "gauss" in out["models"]
    assert out["edit"]["images"] == 1 and out["edit"]["png"] and out["edit"]["network_calls"] == 2
    assert out["anonymous"]["code"] == 16  # UNAUTHENTICATED
