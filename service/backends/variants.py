"""Triton repository variants, generated from the production config.pbtxt and the same weights.

model_repository/<name>/config.pbtxt (written by `production_config`: ONNX Runtime on GPU) is
the source; every variant is derived from it and keeps its inputs, outputs, batching, warm-up
and `parameters` (the SDE metadata), so the Triton backend reads the same metadata whichever
variant serves the model:

- `cpu`: Triton's Python backend running ONNX Runtime on the same model.onnx (a symbolic
  link, never a copy) for a tritonserver without GPU or ONNX Runtime backend, such as the
  one the nvidia-pytriton wheel ships. The model code is triton_cpu_model.py, also linked.
- `tensorrt_plan`: a TensorRT engine built from the same ONNX file by trtexec
  (scripts/build_tensorrt_plan.py). A plan only runs on the TensorRT version that built it
  (use the trtexec of the Triton container that will serve it) and on the GPU architecture
  it was built on: rebuild it for every new container release and every GPU type.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.backends.repository import CONFIG_FILE, MODEL_FILE, model_files, read_config
from service.errors import ModelConfigError

CPU_MODEL_CODE = Path(__file__).with_name("triton_cpu_model.py")
GENERATED_MARKER = ".generated"  # a folder holding it may be wiped and written again
PLAN_FILE = "model.plan"


def cpu_config(production: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """The production config, served by the Python backend on CPU instead of ONNX Runtime on GPU."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(production)
    config.ClearField("platform")
    config.backend = "python"
    config.ClearField("default_model_filename")  # the Python backend loads 1/model.py
    config.ClearField("instance_group")
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    config.ClearField("optimization")  # GPU execution accelerators mean nothing here
    return config


@dataclass(frozen=True)
class PlanProfile:
    """A TensorRT optimisation profile: batch sizes and (square) image sides it accepts."""

    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 16
    min_side: int = 0  # 0: the model's native size
    opt_side: int = 0
    max_side: int = 0


def _native_size(production: model_config_pb2.ModelConfig) -> tuple[int, int]:
    params = {key: value.string_value for key, value in production.parameters.items()}
    return int(params["height"]), int(params["width"])


def _side_shape(production: model_config_pb2.ModelConfig, side: int) -> tuple[int, int]:
    return (side, side) if side else _native_size(production)


def tensorrt_plan_config(production: model_config_pb2.ModelConfig, profile: PlanProfile,
                         fp16: bool = True) -> model_config_pb2.ModelConfig:
    """The production config for a TensorRT plan built with `profile` (see trtexec_command).

    fp16=False (a plan built without --fp16) records `precision: fp32` in the parameters: a
    plan is taken as fp16 otherwise, and the precision is part of the result cache key."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(production)
    config.platform = "tensorrt_plan"
    config.default_model_filename = PLAN_FILE
    config.max_batch_size = profile.max_batch
    config.ClearField("optimization")  # the ONNX Runtime TensorRT accelerator does not apply
    if not fp16:
        config.parameters["precision"].string_value = "fp32"
    smallest, largest = _side_shape(production, profile.min_side), _side_shape(production, profile.max_side)
    spatial = list(largest) if smallest == largest else [-1, -1]
    for tensor in (config.input[0], config.output[0]):
        tensor.dims[1:] = spatial
    x_name = config.input[0].name
    for warmup in config.model_warmup:  # inside the profile, or the plan refuses it
        warmup.batch_size = max(warmup.batch_size, profile.min_batch)
        if x_name in warmup.inputs:
            warmup.inputs[x_name].dims[1:] = _side_shape(production, profile.opt_side)
    return config


def trtexec_command(onnx_path: Path, plan_path: Path, production: model_config_pb2.ModelConfig, profile: PlanProfile,
                    trtexec: str = "trtexec", fp16: bool = True) -> list[str]:
    """trtexec arguments that build `plan_path` from the ONNX file for `profile` (FP16 by default).

    The batch dimension is the first of every tensor; `t` is one value per batch element.
    """
    x, t = production.input[0], production.input[1]
    channels = x.dims[0]

    def shapes(batch: int, side: int) -> str:
        h, w = _side_shape(production, side)
        return f"{x.name}:{batch}x{channels}x{h}x{w},{t.name}:{batch}"

    command = [
        trtexec, f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
        f"--minShapes={shapes(profile.min_batch, profile.min_side)}",
        f"--optShapes={shapes(profile.opt_batch, profile.opt_side)}",
        f"--maxShapes={shapes(profile.max_batch, profile.max_side)}",
    ]
    return [*command, "--fp16"] if fp16 else command


def prepare_target(target: Path) -> None:
    """Creates an empty generated repository at target (wiping only a generated one)."""
    if target.exists():
        if not (target / GENERATED_MARKER).exists() and any(target.iterdir()):
            raise ModelConfigError(f"{target} exists and was not generated here; refusing to overwrite it")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / GENERATED_MARKER).write_text("generated from model_repository/ configs; rewritten at will\n")


def write_config(model_dir: Path, config: model_config_pb2.ModelConfig) -> None:
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))


def write_cpu_repository(model_dirs: Iterable[Path], target: Path) -> Path:
    """A Python-backend repository at target for the given production model folders.

    Each <target>/<name>/1/ links model.onnx (and any external-data file) to the original
    and model.py to triton_cpu_model.py; config.pbtxt is cpu_config(production).
    """
    prepare_target(target)
    for model_dir in model_dirs:
        production = read_config(model_dir)
        weights = model_files(model_dir, production)
        if not weights[0].is_file():
            raise ModelConfigError(f"{model_dir}: missing {weights[0]}")
        version = target / model_dir.name / "1"
        version.mkdir(parents=True)
        (version / MODEL_FILE).symlink_to(weights[0].resolve())
        for data_file in weights[1:]:  # external data is found next to the graph, by its own name
            (version / data_file.name).symlink_to(data_file.resolve())
        (version / "model.py").symlink_to(CPU_MODEL_CODE)
        write_config(target / model_dir.name, cpu_config(production))
    return target
