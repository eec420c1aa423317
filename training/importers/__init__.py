"""`sdedit import`: score networks users bring, exported to the model repository.

Two sources: a diffusers UNet2DModel folder (diffusers_format.py) and a state dict of the
SDEdit reference code with its YAML config (reference.py). Both end in common.py: one ONNX
graph (float32 x and t in, the network's own output out, dynamic batch and size), its
config.pbtxt with the family's time and output conventions (service/backends/conventions.py),
and a model card.

These modules need torch and diffusers (the `import` extra); the service never imports
them. `missing_dependencies()` says which are absent, so the CLI can say what to install.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'sdedit-service[import]'  (torch 2.13 CPU, diffusers, PyYAML, onnxscript)"


def missing_dependencies(*modules: str) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


class ImportFailed(Exception):
    """The source cannot be imported as given (wrong layout, unsupported schedule, ...)."""
