"""The model repository: model_repository/<name>/config.pbtxt + 1/model.onnx.

One source of truth for both backends. config.pbtxt is Triton's own ModelConfig (parsed
with Triton's schema); the SDE metadata lives in its `parameters`:

    sde             vp_discrete | vp | ve
    timesteps       number of levels N (1000 for DDPM)
    beta_min/max    VP schedule       sigma_min/max    VE schedule
    prediction_type epsilon
    width, height, channels   the native resolution
    flexible_size   "true" if other sizes (multiples of size_multiple) are accepted
    max_width, max_height     the largest size a flexible model accepts (default: native)
    memory_bytes_per_pixel    network working memory per input pixel per image
    attention_downsample      self-attention runs at 1/d of the input's side (0: none)
    attention_bytes_per_entry bytes per attention-matrix entry per image
                              (the memory entries are measured by scripts/measure_model_memory.py;
                              admission control budgets with them, service/pipeline/costs.py)
    default_steps   recommended network calls per repeat for interactive use
    default_steps   network calls per repeat of an edit with steps = 0 (DEFAULT_STEPS if absent)
    default_sampler, default_spacing   that edit's sampler and level spacing (DEFAULT_SAMPLER,
                    DEFAULT_SPACING if absent); chosen from benchmarks/samplers.py (docs/quality.md)
    description     one line for ListModels
    time_input, network_output, data_range   what the network takes as time and returns
                    (conventions.py; defaults: the DDPM index or t in (0, 1], eps, [-1, 1])
    precision       optional: fp32 | fp16 | bf16 | int8, what Triton computes in (else
                    inferred: fp16 for a TensorRT plan or ONNX Runtime's TensorRT
                    accelerator in FP16, fp32 otherwise; the embedded backend is fp32)

The content hash covers the ONNX bytes (and an external-data file, if any) and the SDE
metadata, so a new weight file or schedule never serves an old cached result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.backends.base import ModelInfo
from service.backends.conventions import convention_from_parameters, convention_parameters
from service.errors import ModelConfigError
from service.sde.samplers import SAMPLERS
from service.sde.schedules import SPACINGS, SDESpec

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
DEFAULT_MEMORY_BYTES_PER_PIXEL = "2048"  # undeclared: about what a small conv UNet takes; declare the measured value
REQUIRED_PARAMETERS = ("sde", "timesteps", "prediction_type", "width", "height", "channels")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
EMBEDDED_PRECISION = "fp32"  # ONNX Runtime's CPU provider, float32 in and out (its graph is in the content hash)
# What an edit with steps = 0 runs when a model's config does not say: measured on the exact
# Gaussian oracle and the digits model (docs/quality.md, "Few-step samplers").
DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS = "dpmpp_2m_sde", "logsnr_uniform", 20


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    path = model_dir / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ModelConfigError(f"{path}: {exc}") from exc


def config_parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


# Defaults per SDE type: DDPM's linear betas, Song et al.'s continuous VP and VE values.
SDE_DEFAULTS = {
    "vp_discrete": {"beta_min": 1e-4, "beta_max": 0.02},
    "vp": {"beta_min": 0.1, "beta_max": 20.0},
    "ve": {"sigma_min": 0.01, "sigma_max": 50.0},
}


def sde_spec_from_parameters(params: dict[str, str], where: str = "") -> SDESpec:
    sde_type = params.get("sde", "vp_discrete")
    if sde_type not in SDE_DEFAULTS:
        raise ModelConfigError(f"{where}unknown sde {sde_type!r}; known: {', '.join(SDE_DEFAULTS)}")
    values: dict[str, float] = dict(SDE_DEFAULTS[sde_type])
    for key in ("beta_min", "beta_max", "sigma_min", "sigma_max", "timesteps"):
        if key in params:
            try:
                values[key] = float(params[key])
            except ValueError as exc:
                raise ModelConfigError(f"{where}parameter {key!r} is not a number: {params[key]!r}") from exc
    timesteps = int(values.pop("timesteps", 1000))
    try:
        return SDESpec(sde_type=sde_type, timesteps=timesteps,
                       prediction_type=params.get("prediction_type", "epsilon"), **values)
    except ValueError as exc:
        raise ModelConfigError(f"{where}{exc}") from exc


def model_files(model_dir: Path, config: model_config_pb2.ModelConfig) -> list[Path]:
    version_dir = model_dir / "1"
    onnx_path = version_dir / (config.default_model_filename or MODEL_FILE)
    files = [onnx_path]
    files += sorted(p for p in version_dir.glob("*.onnx.data"))
    return files


def content_hash(files: list[Path], spec: SDESpec, channels: int) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(json.dumps({"sde": spec.__dict__, "channels": channels}, sort_keys=True).encode())
    return digest.hexdigest()


def served_precision(config: model_config_pb2.ModelConfig, where: str = "") -> str:
    """What Triton computes this model in: the `precision` parameter if given, else what its
    platform implies (a TensorRT plan: fp16, as scripts/build_tensorrt_plan.py builds it by
    default; ONNX Runtime's TensorRT accelerator: its precision_mode), else fp32."""
    declared = config_parameters(config).get("precision")
    if declared is not None:
        if declared.lower() not in PRECISIONS:
            raise ModelConfigError(f"{where}parameter 'precision' must be one of {', '.join(PRECISIONS)}, "
                                   f"got {declared!r}")
        return declared.lower()
    if config.platform == "tensorrt_plan":
        return "fp16"
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            mode = accelerator.parameters.get("precision_mode", "FP32").lower()
            return mode if mode in PRECISIONS else "fp32"
    return "fp32"


def load_model_info(model_dir: Path, precision: str | None = None) -> ModelInfo:
    """Reads and checks one model's configuration; raises ModelConfigError if malformed.

    precision: what the backend that loads it computes in (None: what the config says)."""
    config = read_config(model_dir)
    if config.name and config.name != model_dir.name:
        raise ModelConfigError(f"{model_dir}: config name {config.name!r} differs from its folder")
    files = model_files(model_dir, config)
    if not files[0].is_file():
        raise ModelConfigError(f"{model_dir}: missing {files[0]}")
    return model_info_from_config(config, model_dir.name, lambda spec, channels: content_hash(files, spec, channels),
                                  where=f"{model_dir}: ", precision=precision)


def _integer(params: dict[str, str], key: str, default, where: str) -> int:
    try:
        return int(params.get(key, default))
    except ValueError as exc:
        raise ModelConfigError(f"{where}{exc}") from exc


def _shape_and_costs(params: dict[str, str], where: str) -> dict:
    """The ModelInfo fields of the image sizes the model takes and of its memory estimates."""
    try:
        width, height, channels = (int(params[k]) for k in ("width", "height", "channels"))
        flexible = params.get("flexible_size", "false").lower() == "true"
        fields = dict(
            width=width, height=height, channels=channels, flexible_size=flexible,
            size_multiple=max(1, int(params.get("size_multiple", "1"))),
            max_width=int(params.get("max_width", width)) if flexible else width,
            max_height=int(params.get("max_height", height)) if flexible else height,
            memory_bytes_per_pixel=float(params.get("memory_bytes_per_pixel", DEFAULT_MEMORY_BYTES_PER_PIXEL)),
            attention_downsample=int(params.get("attention_downsample", "0")),
            attention_bytes_per_entry=float(params.get("attention_bytes_per_entry", "0")))
    except ValueError as exc:
        raise ModelConfigError(f"{where}{exc}") from exc
    if fields["max_width"] < width or fields["max_height"] < height:
        raise ModelConfigError(f"{where}max_width x max_height {fields['max_width']}x{fields['max_height']} "
                               f"is below the native {width}x{height}")
    if fields["memory_bytes_per_pixel"] < 0 or fields["attention_downsample"] < 0 or fields["attention_bytes_per_entry"] < 0:
        raise ModelConfigError(f"{where}memory parameters must be >= 0")
    return fields


def _default_edit(params: dict[str, str], where: str) -> tuple[str, str]:
    """The sampler and spacing of an edit that names none."""
    default_sampler = params.get("default_sampler", DEFAULT_SAMPLER)
    default_spacing = params.get("default_spacing", DEFAULT_SPACING)
    if default_sampler not in SAMPLERS:
        raise ModelConfigError(f"{where}default_sampler {default_sampler!r} is not one of {', '.join(SAMPLERS)}")
    if default_spacing not in SPACINGS:
        raise ModelConfigError(f"{where}default_spacing {default_spacing!r} is not one of {', '.join(SPACINGS)}")
    return default_sampler, default_spacing


def model_info_from_config(config: model_config_pb2.ModelConfig, name: str,
                           hasher: Callable[[SDESpec, int], str], where: str = "",
                           precision: str | None = None) -> ModelInfo:
    """A model's facts from its Triton ModelConfig, wherever it was read (a file, or Triton).

    hasher(spec, channels) gives the content hash once the metadata has been checked.
    precision: what the serving backend computes in; None: served_precision(config).
    """
    params = config_parameters(config)
    missing = [key for key in REQUIRED_PARAMETERS if key not in params]
    if missing:
        raise ModelConfigError(f"{where}config.pbtxt parameters lack {', '.join(missing)}")
    spec = sde_spec_from_parameters(params, where)
    shape = _shape_and_costs(params, where)
    default_sampler, default_spacing = _default_edit(params, where)
    inputs = [tensor.name for tensor in config.input]
    outputs = [tensor.name for tensor in config.output]
    if len(inputs) != 2 or len(outputs) != 1:
        raise ModelConfigError(f"{where}expected inputs (x, t) and one output, got {inputs} -> {outputs}")
    try:
        convention = convention_from_parameters(params, spec)
    except ValueError as exc:
        raise ModelConfigError(f"{where}{exc}") from exc
    digest = hasher(spec, shape["channels"])
    if not convention.is_identity:  # the same weights called another way give other results
        digest = hashlib.sha256((digest + json.dumps(convention_parameters(convention), sort_keys=True)).encode()).hexdigest()
    return ModelInfo(
        name=name,
        content_hash=digest,
        sde=spec,
        **shape,
        default_steps=max(1, min(_integer(params, "default_steps", DEFAULT_STEPS, where), spec.timesteps)),
        max_batch_size=config.max_batch_size,
        description=params.get("description", ""),
        input_names=(inputs[0], inputs[1]),
        output_name=outputs[0],
        parameters=params,
        precision=served_precision(config, where) if precision is None else precision,
        default_sampler=default_sampler,
        default_spacing=default_spacing,
        convention=None if convention.is_identity else convention,
    )


def discover_models(repository: Path) -> list[Path]:
    """Every folder of the repository that holds a config.pbtxt, sorted by name."""
    if not repository.is_dir():
        raise ModelConfigError(f"model repository {repository} is not a folder")
    return sorted(p for p in repository.iterdir() if (p / CONFIG_FILE).is_file())


def production_config(
    info: ModelInfo,
    max_batch_size: int = 64,
    queue_delay_us: int = 100,
    tensorrt: bool = False,
) -> model_config_pb2.ModelConfig:
    """The GPU config.pbtxt for Triton's ONNX Runtime backend.

    Batched with a per-sample timestep: `t` is sent as [B, 1] and reshaped to [B] for the
    graph. Dynamic batching merges concurrent edits' steps; the queue delay is short because
    every step of a lone request pays it. Warm-up runs one batch at the native size.
    """
    config = model_config_pb2.ModelConfig(name=info.name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    h, w = (-1, -1) if info.flexible_size else (info.height, info.width)
    x_name, t_name = info.input_names
    config.input.add(name=x_name, data_type=model_config_pb2.TYPE_FP32, dims=[info.channels, h, w])
    t_input = config.input.add(name=t_name, data_type=model_config_pb2.TYPE_FP32, dims=[1])
    t_input.reshape.SetInParent()  # shape [] : one scalar per batch element
    config.output.add(name=info.output_name, data_type=model_config_pb2.TYPE_FP32, dims=[info.channels, h, w])
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    if tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
    warmup = config.model_warmup.add(name="native_size", batch_size=1)
    warmup.inputs[x_name].data_type = model_config_pb2.TYPE_FP32
    warmup.inputs[x_name].dims.extend([info.channels, info.height, info.width])
    warmup.inputs[x_name].zero_data = True
    warmup.inputs[t_name].data_type = model_config_pb2.TYPE_FP32
    warmup.inputs[t_name].dims.extend([1])
    warmup.inputs[t_name].zero_data = True
    for key, value in sorted(info.parameters.items()):
        config.parameters[key].string_value = value
    return config


def model_parameters(
    spec: SDESpec,
    width: int,
    height: int,
    channels: int,
    default_steps: int,
    description: str,
    flexible_size: bool = False,
    size_multiple: int = 1,
    max_size: tuple[int, int] | None = None,
    memory_bytes_per_pixel: float | None = None,
    attention: tuple[int, float] | None = None,
    default_sampler: str = DEFAULT_SAMPLER,
    default_spacing: str = DEFAULT_SPACING,
    convention: dict[str, str] | None = None,
) -> dict[str, str]:
    """The `parameters` block that carries a model's SDE metadata.

    convention: time_input / network_output / data_range (conventions.py), if not the defaults."""
    params = {
        "sde": spec.sde_type,
        "timesteps": str(spec.timesteps),
        "prediction_type": spec.prediction_type,
        "width": str(width),
        "height": str(height),
        "channels": str(channels),
        "default_steps": str(default_steps),
        "default_sampler": default_sampler,
        "default_spacing": default_spacing,
        "flexible_size": "true" if flexible_size else "false",
        "size_multiple": str(size_multiple),
        "description": description,
    }
    if flexible_size:
        max_width, max_height = max_size or (1024, 1024)
        params |= {"max_width": str(max_width), "max_height": str(max_height)}
    if memory_bytes_per_pixel is not None:
        params["memory_bytes_per_pixel"] = f"{memory_bytes_per_pixel:g}"
    if attention is not None:
        params |= {"attention_downsample": str(attention[0]), "attention_bytes_per_entry": f"{attention[1]:g}"}
    if spec.sde_type == "ve":
        params |= {"sigma_min": repr(spec.sigma_min), "sigma_max": repr(spec.sigma_max)}
    else:
        params |= {"beta_min": repr(spec.beta_min), "beta_max": repr(spec.beta_max)}
    if convention:
        convention_from_parameters(convention, spec)  # raises ValueError on a convention that does not fit
        params |= convention
    return params


def write_model(repository: Path, name: str, onnx_bytes: bytes, parameters: dict[str, str], **config_options) -> Path:
    """Writes <repository>/<name>/config.pbtxt and 1/model.onnx; returns the model folder."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / MODEL_FILE).write_bytes(onnx_bytes)
    spec = sde_spec_from_parameters(parameters)
    info = ModelInfo(
        name=name, content_hash="", sde=spec,
        width=int(parameters["width"]), height=int(parameters["height"]), channels=int(parameters["channels"]),
        default_steps=int(parameters["default_steps"]),
        flexible_size=parameters.get("flexible_size") == "true", parameters=parameters,
    )
    config = production_config(info, **config_options)
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return model_dir
