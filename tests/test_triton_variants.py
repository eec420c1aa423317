"""Triton repository variants: generated from the production config.pbtxt, same weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from tritonclient.grpc import model_config_pb2

from service.backends.repository import discover_models, load_model_info, production_config, read_config
from service.backends.variants import CPU_MODEL_CODE, cpu_config, write_cpu_repository
from service.errors import ModelConfigError
from service.testing.servers import ROOT

SHIPPED = ROOT / "model_repository"
KEPT = ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup", "parameters")


def _fields(config: model_config_pb2.ModelConfig) -> dict:
    return {name: getattr(config, name) for name in KEPT}


def test_cpu_variant_keeps_the_production_config_and_links_the_same_weights(tmp_path, oracle_repository):
    models = discover_models(SHIPPED) + discover_models(oracle_repository)
    target = write_cpu_repository(models, tmp_path / "cpu")
    for model_dir in models:
        production, generated = read_config(model_dir), read_config(target / model_dir.name)
        assert generated == cpu_config(production)
        assert _fields(generated) == _fields(production)  # same tensors, batching, warm-up, SDE metadata
        assert generated.backend == "python" and not generated.platform and not generated.HasField("optimization")
        assert [g.kind for g in generated.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        version = target / model_dir.name / "1"
        assert (version / "model.onnx").is_symlink()
        assert (version / "model.onnx").resolve() == (model_dir / "1" / "model.onnx").resolve()
        assert (version / "model.py").resolve() == CPU_MODEL_CODE
    copies = [p for p in target.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix in (".onnx", ".data")]
    assert copies == []  # never a second copy of the weights


def test_the_optional_tensorrt_accelerator_is_dropped_on_cpu():
    info = load_model_info(SHIPPED / "digits-mixture")
    production = production_config(info, tensorrt=True)
    (accelerator,) = production.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert production.dynamic_batching.max_queue_delay_microseconds <= 500  # every step of a lone request pays it
    cpu = cpu_config(production)
    assert not cpu.HasField("optimization") and cpu.parameters == production.parameters


def test_cpu_variant_rewrites_only_a_generated_folder(tmp_path):
    target = write_cpu_repository(discover_models(SHIPPED)[:1], tmp_path / "cpu")
    write_cpu_repository(discover_models(SHIPPED)[1:], target)  # generated: wiped and rewritten
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == [p.name for p in discover_models(SHIPPED)[1:]]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelConfigError, match="refusing to overwrite"):
        write_cpu_repository(discover_models(SHIPPED), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _build_plan(model_dir: Path, target: Path, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tensorrt_plan.py"), str(model_dir), str(target),
                             "--dry-run", *args], capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.split()


@pytest.mark.parametrize("model, args, spatial, shapes", [
    ("digits-mixture", (), [32, 32], ("x:1x1x32x32,t:1", "x:4x1x32x32,t:4", "x:16x1x32x32,t:16")),
    ("gaussian-vp", ("--min-side", "64", "--opt-side", "256", "--max-side", "512", "--max-batch", "8"), [-1, -1],
     ("x:1x1x64x64,t:1", "x:4x1x256x256,t:4", "x:8x1x512x512,t:8")),
])
def test_tensorrt_plan_variant_config_and_trtexec_command(tmp_path, model, args, spatial, shapes):
    command = _build_plan(SHIPPED / model, tmp_path, *args)
    assert command[0] == "trtexec" and "--fp16" in command
    assert [c.split("=", 1)[1] for c in command if c.startswith(("--minShapes", "--optShapes", "--maxShapes"))] == list(shapes)
    assert f"--onnx={(SHIPPED / model / '1' / 'model.onnx').resolve()}" in command
    assert f"--saveEngine={(tmp_path / model / '1' / 'model.plan').resolve()}" in command

    production, plan = read_config(SHIPPED / model), read_config(tmp_path / model)  # Triton's own schema
    assert plan.platform == "tensorrt_plan" and plan.default_model_filename == "model.plan"
    assert plan.max_batch_size == int(shapes[2].split(":")[1].split("x")[0])  # the profile's largest batch
    assert plan.parameters == production.parameters and plan.dynamic_batching == production.dynamic_batching
    assert [(i.name, i.data_type) for i in plan.input] == [(i.name, i.data_type) for i in production.input]
    assert [(o.name, o.data_type) for o in plan.output] == [(o.name, o.data_type) for o in production.output]
    assert list(plan.input[0].dims) == list(plan.output[0].dims) == [production.input[0].dims[0], *spatial]
    assert plan.input[1].HasField("reshape") and list(plan.input[1].dims) == [1]

    graph = onnx.load(SHIPPED / model / "1" / "model.onnx").graph  # the plan's inputs are the graph's
    onnx_inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    assert onnx_inputs == {plan.input[0].name: 1 + len(plan.input[0].dims), plan.input[1].name: 1}
    assert [o.name for o in graph.output] == [plan.output[0].name]


