"""Settings: flags over environment over defaults; conflicts fail at start-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.config import Settings, SettingsError, add_arguments, load_settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults():
    settings = load_settings(env={})
    assert settings == Settings() and settings.port == 50051 and settings.backend == "onnx"


def test_flags_win_over_environment_over_defaults():
    env = {"SDEDIT_PORT": "6000", "SDEDIT_MAX_QUEUE": "3", "SDEDIT_MODEL_REPOSITORY": "/models"}
    settings = load_settings(parse("--port", "7000"), env)
    assert settings.port == 7000 and settings.max_queue == 3 and settings.model_repository == Path("/models")


@pytest.mark.parametrize("source, message", [
    (dict(argv=("--port", "seventy")), "--port: expected int"),
    (dict(env={"SDEDIT_GRACE_SECONDS": "soon"}), "SDEDIT_GRACE_SECONDS: expected float"),
    (dict(argv=("--port", "9000", "--metrics-port", "9000")), "both 9000"),
    (dict(argv=("--max-active-edits", "0")), "max_active_edits must be >= 1"),
    (dict(argv=("--backend", "tensorflow")), "backend must be one of"),
    (dict(argv=("--port", "70000")), "port must be in"),
    (dict(argv=("--cache", "memcached")), "cache must be one of memory, redis, none"),
    (dict(argv=("--cache", "redis", "--redis-url", "http://:pw@h/0")), r"redis_url must start with .*'http://:\*\*\*@h/0'"),
    (dict(env={"SDEDIT_CACHE_TTL_SECONDS": "0"}), "cache_ttl_seconds must be > 0"),
    (dict(argv=("--cache-key-prefix", "a b")), "cache_key_prefix must be printable with no spaces"),
    (dict(argv=("--triton-shared-memory",)), "triton_shared_memory needs backend triton"),
    (dict(env={"SDEDIT_TRITON_SHARED_MEMORY": "maybe"}), "expected true or false"),
    (dict(argv=("--backend", "triton", "--triton-retry-seconds", "-1")), "triton_retry_seconds must be >= 0"),
    (dict(argv=("--max-connection-age-seconds", "-5")), "max_connection_age_seconds must be >= 0"),
    (dict(argv=("--redis-url", "redis://:a@h/0"), env={"SDEDIT_REDIS_PASSWORD": "b"}), "give it in one place"),
])
def test_bad_settings_fail_with_a_clear_message(source, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(parse(*source.get("argv", ())), source.get("env", {}))


def test_triton_backend_settings_from_flags_and_environment():
    env = {"SDEDIT_BACKEND": "triton", "SDEDIT_TRITON_SHARED_MEMORY": "true", "SDEDIT_TRITON_URL": "triton:8001"}
    settings = load_settings(parse("--triton-url", "10.0.0.7:8001", "--no-triton-shared-memory"), env)
    assert settings.backend == "triton" and settings.triton_url == "10.0.0.7:8001" and not settings.triton_shared_memory
    assert load_settings(None, env).triton_shared_memory


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_the_start_up_line_masks_passwords_in_urls():
    settings = load_settings(parse("--cache", "redis", "--redis-url", "rediss://user:hunter2@redis.internal:6380/1"), {})
    line = settings.describe()
    assert "hunter2" not in line and "redis_url=rediss://user:***@redis.internal:6380/1" in line
    assert "cache=redis" in line


def test_the_start_up_line_masks_the_redis_password_setting():
    settings = load_settings(None, {"SDEDIT_CACHE": "redis", "SDEDIT_REDIS_PASSWORD": "hunter2"})
    line = settings.describe()
    assert settings.redis_password == "hunter2" and "hunter2" not in line and "redis_password=***" in line
    assert "redis_password= " in Settings().describe() + " "  # unset: shown empty, not as ***


def test_every_setting_is_documented():
    """Docs match the code: each setting's flag appears in the README or the deploy and metrics docs."""
    import dataclasses

    from service.testing.servers import ROOT

    docs = "".join((ROOT / path).read_text() for path in ("README.md", "deploy/README.md", "docs/metrics.md"))
    undocumented = [f.name for f in dataclasses.fields(Settings) if "--" + f.name.replace("_", "-") not in docs]
    assert undocumented == []
