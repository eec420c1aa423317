"""The model repository: one config.pbtxt per model, read by Triton's schema, checked at start-up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.backends.onnx import OnnxScoreModel
from service.backends.oracle import write_shipped_models
from service.backends.registry import load_registry
from service.backends.repository import discover_models, load_model_info, read_config
from service.config import load_settings
from service.errors import ModelConfigError
from service.sde import build_schedule
from service.testing.servers import ROOT

SHIPPED = ROOT / "model_repository"


def test_shipped_oracle_models_are_reproducible(tmp_path):
    for model_dir in write_shipped_models(tmp_path):
        shipped = SHIPPED / model_dir.name
        for name in ("config.pbtxt", "1/model.onnx"):
            assert (shipped / name).read_bytes() == (model_dir / name).read_bytes(), f"{shipped / name} is stale"


def test_every_shipped_model_loads_and_matches_its_config():
    names = [p.name for p in discover_models(SHIPPED)]
    assert "digits-mixture" in names
    for model_dir in discover_models(SHIPPED):
        model = OnnxScoreModel(model_dir)
        info = model.info
        config = read_config(model_dir)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.input[0].dims[0] == info.channels
        x = np.zeros((2, info.channels, info.height, info.width), np.float32)
        times = build_schedule(info.sde).model_times[[1, -1]]  # the smallest and largest noise level
        eps = model.predict_eps(x, times)
        assert eps.shape == x.shape and np.isfinite(eps).all()


def _copy_model(tmp_path, name="gaussian-vp"):
    target = tmp_path / "repo" / name
    shutil.copytree(SHIPPED / name, target)
    return target


def _edit_config(model_dir, edit):
    config = read_config(model_dir)
    edit(config)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


@pytest.mark.parametrize("breakage, message", [
    (lambda c: c.parameters.pop("sde"), "lack sde"),
    (lambda c: c.parameters["sde"].__setattr__("string_value", "vp_banana"), "unknown sde"),
    (lambda c: c.parameters["timesteps"].__setattr__("string_value", "many"), "not a number"),
    (lambda c: c.parameters["prediction_type"].__setattr__("string_value", "v"), "epsilon"),
    (lambda c: c.parameters["channels"].__setattr__("string_value", "3"), "channels"),
    (lambda c: c.input[0].__setattr__("name", "image"), "lack 'image'"),
    (lambda c: c.__setattr__("name", "other"), "differs from its folder"),
])
def test_a_malformed_model_fails_fast_with_a_clear_message(tmp_path, breakage, message):
    model_dir = _copy_model(tmp_path)
    _edit_config(model_dir, breakage)
    with pytest.raises(ModelConfigError, match=message):
        OnnxScoreModel(model_dir)


def test_unparsable_config_and_missing_weights_fail_fast(tmp_path):
    model_dir = _copy_model(tmp_path)
    (model_dir / "config.pbtxt").write_text("name: \"gaussian-vp\"\nplatform: 42 {")
    with pytest.raises(ModelConfigError, match=r"config\.pbtxt"):
        load_model_info(model_dir)
    model_dir = _copy_model(tmp_path, "gaussian-ve")
    (model_dir / "1" / "model.onnx").unlink()
    with pytest.raises(ModelConfigError, match="missing"):
        load_model_info(model_dir)
    model_dir = _copy_model(tmp_path, "digits-mixture")
    (model_dir / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelConfigError, match="onnxruntime cannot load"):
        OnnxScoreModel(model_dir)


def test_unknown_default_model_fails_at_start_up(tmp_path):
    _copy_model(tmp_path)
    with pytest.raises(ModelConfigError, match=r"default model 'digits'"):
        load_registry(load_settings(env={}, model_repository=tmp_path / "repo", default_model="digits"))


def test_content_hash_changes_with_weights_and_schedule(tmp_path):
    model_dir = _copy_model(tmp_path)
    before = load_model_info(model_dir).content_hash
    _edit_config(model_dir, lambda c: c.parameters["beta_max"].__setattr__("string_value", "0.03"))
    after_schedule = load_model_info(model_dir).content_hash
    (model_dir / "1" / "model.onnx").write_bytes((model_dir / "1" / "model.onnx").read_bytes() + b"\0")
    after_weights = load_model_info(model_dir).content_hash
    assert len({before, after_schedule, after_weights}) == 3
