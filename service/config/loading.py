"""Settings from flags and the environment: one flag and one environment variable per setting.

A flag (`--max-queue 8`) wins over the environment (`SDEDIT_MAX_QUEUE=8`), which wins over
the default. `declared()` is what the flags, their help and docs/settings.md are made from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.config.settings import Section, Settings, SettingsError

ENV_PREFIX = "SDEDIT_"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True)
class Declared:
    """One setting as its field declares it."""

    name: str
    kind: type
    default: Any  # a factory's default is made here, on this machine
    factory_doc: str  # what a factory's default is, in words (its docstring); "" for a plain default
    help: str
    choices: tuple[str, ...] | None
    section: Section

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def env(self) -> str:
        return env_name(self.name)


def _field_type(f: dataclasses.Field) -> type:
    kinds = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}
    return kinds[str(f.type)]


def declared() -> list[Declared]:
    """Every setting, in declaration order (its section's settings together)."""
    rows = []
    for f in dataclasses.fields(Settings):
        plain = f.default is not dataclasses.MISSING
        factory = f.default_factory  # type: ignore[misc]
        rows.append(Declared(f.name, _field_type(f), f.default if plain else factory(),
                             "" if plain else (factory.__doc__ or "").strip(), f.metadata["help"], f.metadata["choices"],
                             f.metadata["section"]))
    return rows


def _parse(kind: type, raw: str, where: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{where}: expected true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{where}: expected {kind.__name__}, got {raw!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the help shows the environment variable and the default."""
    for d in declared():
        help_text = f"{d.help} [env {d.env}, default {d.default}]"
        if d.kind is bool:
            parser.add_argument(d.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(d.flag, type=str, default=None, metavar=d.name.upper(), help=help_text)


def load_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Flags (args) over environment (env) over defaults; keyword overrides win over all."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = _field_type(f)
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is not None:
            values[f.name] = raw if isinstance(raw, bool) else _parse(kind, raw, _flag(f.name))
        elif env_name(f.name) in env:
            values[f.name] = _parse(kind, env[env_name(f.name)], env_name(f.name))
    values.update(overrides)
    return Settings(**values)
