"""The models this process serves: loaded and checked at start-up, looked up per request."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.backends.base import ScoreModel
from service.backends.repository import discover_models
from service.config import Settings
from service.errors import InvalidArgument, ModelConfigError, echo
from service.sde.schedules import NoiseSchedule, build_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    backend: ScoreModel
    schedule: NoiseSchedule

    @property
    def info(self):
        return self.backend.info


class ModelRegistry:
    def __init__(self, models: dict[str, ScoreModel], default: str):
        if default not in models:
            raise ModelConfigError(f"default model {default!r} is not in the repository (found: {', '.join(sorted(models)) or 'none'})")
        self.default = default
        self._models = {name: LoadedModel(m, build_schedule(m.info.sde)) for name, m in models.items()}

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name or self.default)
        if model is None:
            raise InvalidArgument("model", f"unknown model {echo(name)}; available: {', '.join(sorted(self._models))}")
        return model

    def all(self) -> list[LoadedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def ready(self) -> bool:
        return all(m.backend.ready() for m in self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.backend.close()


def load_registry(settings: Settings) -> ModelRegistry:
    """Loads every model with the configured backend; fails fast.

    onnx: every model of the repository, in process. triton: every score model Triton serves
    (the repository then only supplies weights for the content hash, where present).
    """
    models: dict[str, ScoreModel] = {}
    if settings.backend == "triton":
        from service.backends.triton import load_triton_models

        models.update(load_triton_models(settings))
    else:
        from service.backends.onnx import OnnxScoreModel

        for model_dir in discover_models(settings.model_repository):
            models[model_dir.name] = OnnxScoreModel(model_dir, settings.onnx_threads)
    for model in models.values():
        info = model.info
        log.info("%s model %s (%s, %dx%dx%d, hash %s)", settings.backend, info.name, info.sde.sde_type, info.channels,
                 info.height, info.width, info.content_hash[:12])
    try:
        return ModelRegistry(models, settings.default_model)
    except ModelConfigError:
        for model in models.values():
            model.close()
        raise
