"""Shared fixtures: a model repository of small oracle models, in-process servers and `sdedit serve`
processes (tests/helpers.py ServerFactory), images, a certificate authority, a Redis, and a real
tritonserver serving the CPU variant of those models."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np
import pytest

from service.backends.oracle import gaussian_model, mixture_model
from service.backends.repository import discover_models, model_parameters, write_model
from service.testing.redis_server import RedisServer
from service.testing.servers import ROOT
from tests.certs import CertificateAuthority
from tests.helpers import VE, VP, NeverRetrieved, ServerFactory, start_triton

ORACLE_DEFAULTS = {"default_model": "gauss"}  # what the servers on the oracle models run unless told otherwise


def write_oracle_repository(root: Path) -> Path:
    """gauss (VP, 16x16, flexible size), gauss-ve (VE, 16x16), mix (two-component VP mixture, 8x8)."""
    write_model(root, "gauss", gaussian_model(VP, 0.25, 0.5).SerializeToString(),
                model_parameters(VP, 16, 16, 1, default_steps=20, description="test gaussian", flexible_size=True))
    write_model(root, "gauss-ve", gaussian_model(VE, 0.25, 0.5).SerializeToString(),
                model_parameters(VE, 16, 16, 1, default_steps=20, description="test gaussian ve"))
    means = np.stack([np.full((1, 8, 8), 0.8), np.full((1, 8, 8), -0.8)])
    write_model(root, "mix", mixture_model(VP, means, np.array([0.1, 0.1]), np.array([0.5, 0.5])).SerializeToString(),
                model_parameters(VP, 8, 8, 1, default_steps=20, description="test mixture"))
    write_model(root, "gauss-rgb", gaussian_model(VP, 0.0, 0.5, channels=3).SerializeToString(),
                model_parameters(VP, 16, 16, 3, default_steps=20, description="test rgb gaussian"))
    return root


@pytest.fixture(scope="session")
def oracle_repository(tmp_path_factory) -> Path:
    return write_oracle_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def server(oracle_repository):
    """A shared in-process server (default model: gauss). Tests must not change its state."""
    with ServerFactory(oracle_repository, **ORACLE_DEFAULTS) as start:
        yield start(max_active_edits=2)


@pytest.fixture
def make_server(oracle_repository):
    """Starts in-process servers with custom settings (a ServerFactory on the oracle models, default model
    gauss, or on another `repository=`); stops them after the test."""
    with ServerFactory(oracle_repository, **ORACLE_DEFAULTS) as start:
        yield start


@pytest.fixture(scope="module")
def make_module_server(oracle_repository):
    """make_server for module-scoped fixtures: its servers stop after the module's last test."""
    with ServerFactory(oracle_repository, **ORACLE_DEFAULTS) as start:
        yield start


@pytest.fixture
def serve(oracle_repository, tmp_path, request):
    """Starts `sdedit serve` processes (default model gauss, or on another `repository=`) and waits until they
    serve; stops them after the test and prints their logs if it failed."""
    def failed() -> bool:
        report = getattr(request.node, "rep_call", None)
        return report is not None and report.failed

    with ServerFactory(oracle_repository, logs=tmp_path, failed=failed, **ORACLE_DEFAULTS) as start:
        yield start.process


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own on a free loopback port (never the machine's)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    """A certificate authority of this test's own."""
    return CertificateAuthority(tmp_path / "ca")


@pytest.fixture(scope="session")
def parity_repository(oracle_repository, tmp_path_factory) -> Path:
    """The oracle models and the shipped ones (the default model among them), linked side by side."""
    root = tmp_path_factory.mktemp("parity_repository")
    for source in (oracle_repository, ROOT / "model_repository"):
        for model_dir in discover_models(source):
            (root / model_dir.name).symlink_to(model_dir.resolve(), target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def triton(parity_repository, tmp_path_factory):
    """One tritonserver for every test that leaves it running (fault tests start their own)."""
    server = start_triton(discover_models(parity_repository), tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest.fixture
def guide16() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (16, 16), dtype=np.uint8)


@pytest.fixture
def mask16() -> np.ndarray:
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 2:9] = 255
    return mask


NEVER_RETRIEVED = NeverRetrieved()


def pytest_configure(config):
    logging.getLogger("asyncio").addHandler(NEVER_RETRIEVED)


@pytest.fixture(autouse=True)
def no_exception_left_unretrieved():
    """Every test of the suite fails if a task or future (of its own, or dropped since the
    previous test) ended with an exception nobody retrieved."""
    yield
    gc.collect()  # a task in a reference cycle (its exception's traceback) is logged only when collected
    if found := NEVER_RETRIEVED.take():
        pytest.fail("asyncio: exception never retrieved:\n" + "\n".join(found), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """The same after the last module's and the session's servers stopped."""
    gc.collect()
    if found := NEVER_RETRIEVED.take():
        print("\nasyncio: exception never retrieved after the last test:\n" + "\n".join(found))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item so fixtures can dump server logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_addoption(parser):
    parser.addoption("--fuzz-requests", type=int, default=2000,
                     help="requests the gRPC fuzz suite (tests/test_fuzz.py) sends (default 2000)")
