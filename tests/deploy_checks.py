"""What the deployment tests share: the service's settings as the manifests may name them, image
pinning, a small Dockerfile reader, and the shutdown margin the manifests and the SIGTERM test agree on."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.config import Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Time a process may take beyond --grace-seconds to stop (cancel, close, exit): the SIGTERM tests
# show it is enough, and terminationGracePeriodSeconds / stop_grace_period must leave at least this.
SHUTDOWN_MARGIN_SECONDS = 10

SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}
SETTING_ENV = {env_name(name): name for name in SETTING_NAMES}
SETTING_FLAGS = {"--" + name.replace("_", "-") for name in SETTING_NAMES} | {
    "--no-" + f.name.replace("_", "-") for f in dataclasses.fields(Settings) if f.type in (bool, "bool")}

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def unknown_settings(env: dict[str, str]) -> set[str]:
    """The SDEDIT_* names in env that are no setting."""
    return {name for name in env if name.startswith("SDEDIT_") and name not in SETTING_ENV}


def settings_from_env(env: dict[str, str]) -> Settings:
    """What `sdedit serve` would run with, given these environment variables (SDEDIT_* only)."""
    return load_settings(None, {k: v for k, v in env.items() if k.startswith("SDEDIT_")})


def image_pinned(image: str) -> bool:
    """A digest, or an explicit tag that is a version (has a digit) and not `latest`."""
    if DIGEST.search(image):
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def image_tag(image: str) -> str:
    return image.rpartition(":")[2]


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


# --- Dockerfile -----------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def read_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions (keyword upper-case, arguments with continuations joined);
    FROM's ${ARG} references are resolved from the global ARG defaults."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            words = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest).split()
            words = [w for w in words if not w.startswith("--")]
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def env_pairs(env_args: str) -> dict[str, str]:
    """ENV A=1 B=2 -> {'A': '1', 'B': '2'}."""
    return dict(word.split("=", 1) for word in shlex.split(env_args))


# --- kubectl --------------------------------------------------------------------------------------

def kubectl() -> str:
    """The pinned kubectl in .tools/, else the machine's; never a silent skip."""
    pinned = ROOT / ".tools" / "kubectl" / "kubectl"
    found = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make test` installs it (scripts/install_kubectl.sh)")
    return found


def kustomize(directory: Path) -> str:
    return subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=True,
                          timeout=120).stdout
