"""The service's settings: declared once, typed, each with a default and a line of help.

Every setting can come from a command-line flag (`--max-queue 8`) or an environment
variable (`SDEDIT_MAX_QUEUE=8`); a flag wins over the environment, which wins over the
default. The result is frozen and logged at start-up; no other module reads the environment.

settings.py declares them (in sections) with the facts derived from them; checks.py checks
them, a function per section; loading.py reads flags and the environment; docs.py writes
docs/settings.md from the declarations.
"""

from service.config.loading import ENV_PREFIX, add_arguments, declared, env_name, load_settings
from service.config.settings import PROJECT_ROOT, Section, Settings, SettingsError, setting
from service.config.urls import redact_url

__all__ = ["ENV_PREFIX", "PROJECT_ROOT", "Section", "Settings", "SettingsError", "add_arguments", "declared", "env_name",
           "load_settings", "redact_url", "setting"]
