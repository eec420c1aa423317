"""Settings: flags over environment over defaults; conflicts fail at start-up."""

from __future__ import annotations

import argparse
import dataclasses
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
    (dict(argv=("--cache-lock-seconds", "1", "--redis-timeout-seconds", "0.5")), "cache_lock_seconds must be at least 3 x"),
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
    """Docs match the code: each setting's flag appears in the README, deploy/README.md or docs/."""
    import dataclasses

    from service.testing.servers import ROOT

    pages = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs = "".join(page.read_text() for page in pages)
    undocumented = [f.name for f in dataclasses.fields(Settings) if "--" + f.name.replace("_", "-") not in docs]
    assert undocumented == []


def test_docs_settings_md_is_made_from_the_settings():
    """docs/settings.md lists every flag, its variable, default and help as declared: a setting
    added, renamed or changed without `make docs` fails here, naming the rows that differ."""
    from service.config.docs import markdown
    from service.testing.servers import ROOT

    page, expected = (ROOT / "docs" / "settings.md").read_text(), markdown()
    stale = [line for line in expected.splitlines() if line not in page.splitlines()]
    extra = [line for line in page.splitlines() if line not in expected.splitlines()]
    assert (stale, extra) == ([], []), "docs/settings.md is out of date: run `make docs`"
    assert page == expected, "docs/settings.md is out of date: run `make docs`"


def test_every_setting_has_a_section_and_a_row_with_its_variable_default_and_help():
    from service.config import declared
    from service.config.docs import markdown, shown_default

    rows = [line for line in markdown().splitlines() if line.startswith("| `--")]
    assert len(rows) == len(dataclasses.fields(Settings))
    for d, line in zip(declared(), rows):
        assert d.section is not None and d.help, d.name
        assert line.startswith(f"| `{d.flag}`") and f"| `{d.env}` | {shown_default(d)} | " in line, line
        assert d.help.split("<")[0].replace("|", "\\|") in line, line


def test_python_m_service_config_prints_the_page(capsys):
    from service.config.__main__ import main
    from service.config.docs import markdown

    assert main(["--markdown"]) == 0 and capsys.readouterr().out == markdown()


@pytest.mark.parametrize("overrides, depth", [
    (dict(), 1), (dict(backend="triton"), 2), (dict(pipeline_depth=1, backend="triton"), 1), (dict(pipeline_depth=2), 2),
])
def test_the_effective_pipeline_depth_follows_the_backend_when_unset(overrides, depth):
    assert Settings(**overrides).effective_pipeline_depth == depth


def test_derived_facts():
    assert Settings().in_process_network and not Settings(backend="triton").in_process_network
    assert Settings().job_store_kind == "memory" and Settings(cache="redis").job_store_kind == "redis"
    assert Settings(cache="redis", jobs="memory").job_store_kind == "memory" and Settings(jobs="redis").job_store_kind == "redis"
    assert Settings(redis_url="redis://a/0").job_store_url == "redis://a/0"
    assert Settings(redis_url="redis://a/0", job_redis_url="redis://b/1").job_store_url == "redis://b/1"
    settings = Settings(max_message_mib=3, max_request_mib=2, memory_budget_mib=5)
    assert (settings.max_message_bytes, settings.max_request_bytes, settings.memory_budget_bytes) == (3 << 20, 2 << 20, 5 << 20)


def test_every_problem_is_named_at_once():
    with pytest.raises(SettingsError) as caught:
        Settings(port=70000, tls_key_file="k", max_queue=-1, cache_ttl_seconds=0, job_key_prefix="sdedit",
                 webhook_timeout_seconds=-1, triton_timeout_seconds=float("nan"), log_level="LOUD")
    assert str(caught.value).split("; ") == [
        "port must be in [0, 65535], got 70000",
        "tls_cert_file and tls_key_file go together",
        "triton_timeout_seconds must be > 0, got nan",
        "max_queue must be >= 0, got -1",
        "cache_ttl_seconds must be > 0, got 0",
        "job_key_prefix must differ from cache_key_prefix: job data stay apart from the cache",
        "webhook_timeout_seconds must be > 0, got -1",
        "log_level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
    ]
