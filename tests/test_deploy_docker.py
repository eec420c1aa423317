"""The container image recipe (deploy/docker/Dockerfile) and the compose stack, read and parsed:
no Docker engine runs here. What the image runs is checked for real: `sdedit serve` serves
with every development and training package made unimportable."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from grpc_health.v1 import health_pb2

from service.client import Client, build_request
from service.config import Settings
from service.testing.servers import free_port, health_status, terminate, wait_for
from tests.deploy_checks import DEPLOY, ROOT, SHUTDOWN_MARGIN_SECONDS, env_pairs, image_pinned, read_dockerfile, settings_from_env, unknown_settings
from tests.helpers import png, promtool

DOCKER = DEPLOY / "docker"
FETCHERS = re.compile(r"\b(pip|pip3|uv|apt-get|apt|apk|curl|wget|git|make|gcc|python -m build)\b")


@pytest.fixture(scope="module")
def stages():
    return read_dockerfile(DOCKER / "Dockerfile")


# --- the Dockerfile -------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_on_one_pinned_base(stages):
    assert len(stages) >= 2
    for stage in stages:
        assert image_pinned(stage.base), stage.base
    assert stages[0].base == stages[-1].base  # the virtual environment's python is the same file in both
    assert stages[-1].all("COPY")[0].startswith(f"--from={stages[0].name} /opt/venv /opt/venv")


def test_the_image_runs_as_a_numeric_non_root_user(stages):
    (user,) = stages[-1].all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)  # numeric: runAsNonRoot can verify it


def test_nothing_is_built_or_downloaded_when_the_container_starts(stages):
    final = stages[-1]
    assert not final.all("RUN"), "the final stage only copies: everything is built in the builder"
    assert json.loads(final.all("ENTRYPOINT")[0]) == ["sdedit"]
    assert json.loads(final.all("CMD")[0]) == ["serve"]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "-m", "service.client.healthcheck"]
    for command in (*final.all("ENTRYPOINT"), *final.all("CMD"), healthcheck):
        assert not FETCHERS.search(command), command
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sdedit"] == "service.cli:main"  # the same entry point as `pip install` gives


def test_the_image_installs_runtime_dependencies_only(stages):
    (install,) = [r for r in stages[0].all("RUN") if "pip install" in r]
    assert "-c requirements/constraints.txt ." in install and "[" not in install  # no extras: no torch, no dev tools
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in runtime if re.match(r"(torch|pytest|ruff|matplotlib|grpcio-tools)\b", d)]


def test_the_image_carries_the_models_and_points_the_service_at_them(stages):
    final = stages[-1]
    env = {k: v for args in final.all("ENV") for k, v in env_pairs(args).items()}
    assert not unknown_settings(env)
    copies = [c.split() for c in final.all("COPY") if not c.startswith("--from")]
    assert ["model_repository", env["SDEDIT_MODEL_REPOSITORY"]] in copies
    settings = Settings()
    assert {int(p) for args in final.all("EXPOSE") for p in args.split()} == {settings.port, settings.http_port,
                                                                                settings.metrics_port}


def test_the_build_context_lets_in_what_the_dockerfile_copies(stages):
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = [word.rstrip("/") for stage in stages for copy in stage.all("COPY") if not copy.startswith("--from")
               for word in copy.split()[:-1]]
    assert sources and set(sources) <= allowed, set(sources) - allowed
    assert all((ROOT / source).exists() for source in sources)


def _dev_only_modules() -> set[str]:
    """Top-level modules of the packages in the `dev` and `train` extras (pytest, torch, ...)."""
    extras = [r for r in metadata.requires("sdedit-service") if re.search(r"extra == \"(dev|train)\"", r)]
    dists = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in extras}
    modules = {module for module, owners in metadata.packages_distributions().items()
               if any(o.lower().replace("_", "-") in dists for o in owners)}
    return {m for m in modules if not m.startswith("_")}


BLOCKING_LAUNCHER = """
import sys
blocked = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is a development dependency: not in the image")
sys.meta_path.insert(0, Blocker())
from service.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_the_service_runs_without_any_development_package(oracle_repository, tmp_path, guide16):
    blocked = _dev_only_modules()
    assert {"pytest", "torch", "yaml", "matplotlib", "grpc_tools", "kubernetes_validate"} <= blocked
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", BLOCKING_LAUNCHER, ",".join(sorted(blocked)), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--http-port", str(free_port()), "--metrics-port", "-1",
             "--model-repository", str(oracle_repository),
             "--default-model", "gauss"], stdout=out, stderr=subprocess.STDOUT)
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: process.poll() is not None or health_status(address) == health_pb2.HealthCheckResponse.SERVING, 60, what="SERVING")
        assert process.poll() is None, log.read_text()
        with Client(address) as client:
            assert client.edit(build_request(png(guide16), t0=0.5, steps=5, seed=1), timeout=30).network_calls == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        terminate(process, 10)


# --- compose --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _with_password(env: dict) -> dict[str, str]:
    """Compose's ${VAR:?message} filled in, as `docker compose` does from the shell."""
    return {k: re.sub(r"\$\{REDIS_PASSWORD:\?[^}]*\}", "secret", str(v)) for k, v in env.items()}


def test_compose_names_every_service_on_pinned_images(compose):
    services = compose["services"]
    assert set(services) == {"sdedit", "triton", "redis", "prometheus"}
    for name, service in services.items():
        assert image_pinned(service["image"]), f"{name}: {service['image']}"
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", services["triton"]["image"])
    build = services["sdedit"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()


def test_compose_gives_triton_a_gpu_and_the_model_repository(compose):
    triton = compose["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    repository = next(a.split("=", 1)[1] for a in triton["command"] if a.startswith("--model-repository="))
    (source,) = [v.split(":")[0] for v in triton["volumes"] if v.split(":")[1] == repository]
    assert (DOCKER / source).resolve() == ROOT / "model_repository"


def test_compose_settings_ports_and_drain_fit_the_service(compose):
    sdedit = compose["services"]["sdedit"]
    env = _with_password(sdedit["environment"])
    assert not unknown_settings(env)
    settings = settings_from_env(env)
    assert settings.backend == "triton" and settings.triton_url.split(":")[0] in compose["services"]
    assert settings.redis_url.startswith("redis://redis:") and "@" not in settings.redis_url  # the password is separate
    assert {int(p.split(":")[1]) for p in sdedit["ports"]} == {settings.port, settings.http_port, settings.metrics_port}
    stop = int(sdedit["stop_grace_period"].rstrip("s"))
    assert stop >= settings.grace_seconds + SHUTDOWN_MARGIN_SECONDS
    if settings.triton_shared_memory:  # both see one /dev/shm, and Triton accepts client regions
        assert sdedit["ipc"] == "service:triton" and compose["services"]["triton"]["ipc"] == "shareable"
        assert "--allow-client-shm=true" in compose["services"]["triton"]["command"]
    redis = compose["services"]["redis"]
    assert "$$REDIS_PASSWORD" in " ".join(redis["command"]) and "REDIS_PASSWORD" in redis["environment"]


def test_compose_prometheus_scrapes_the_service_and_triton(compose):
    prometheus = compose["services"]["prometheus"]
    (mount,) = prometheus["volumes"]
    config = yaml.safe_load((DOCKER / mount.split(":")[0]).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    settings = settings_from_env(_with_password(compose["services"]["sdedit"]["environment"]))
    assert targets == {"sdedit": [f"sdedit:{settings.metrics_port}"], "triton": ["triton:8002"]}
    assert Path(mount.split(":")[1]).as_posix() in " ".join(prometheus["command"])
    checked = subprocess.run([promtool(), "check", "config", str(DOCKER / mount.split(":")[0])], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
