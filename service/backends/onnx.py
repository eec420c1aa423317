"""The embedded backend: ONNX Runtime in process, on the model repository's model.onnx."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.backends.base import ModelInfo
from service.backends.repository import EMBEDDED_PRECISION, load_model_info, model_files, read_config
from service.errors import BackendError, ModelConfigError

log = logging.getLogger(__name__)


class OnnxScoreModel:
    """ScoreModel on an onnxruntime.InferenceSession (thread-safe for concurrent run calls)."""

    def __init__(self, model_dir: Path, intra_op_threads: int = 0):
        self.info: ModelInfo = load_model_info(model_dir, precision=EMBEDDED_PRECISION)
        onnx_path = model_files(model_dir, read_config(model_dir))[0]
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        # The CPU arena keeps its peak for the life of the session (a 256x256 call left
        # ~1.2 GB behind); shrinking it after every run returns what a call took, so the
        # process's memory follows admission's budget instead of its largest edit so far.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelConfigError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from exc
        self._check_signature()

    def _check_signature(self) -> None:
        """Fail fast when the graph does not match its config: names, dtypes, ranks."""
        x_name, t_name = self.info.input_names
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        problems = []
        if x_name not in inputs or t_name not in inputs:
            problems.append(f"inputs {sorted(inputs)} lack {x_name!r} or {t_name!r}")
        else:
            if inputs[x_name].type != "tensor(float)" or len(inputs[x_name].shape) != 4:
                problems.append(f"{x_name!r} must be float32 [B, C, H, W], is {inputs[x_name].type} {inputs[x_name].shape}")
            if inputs[t_name].type != "tensor(float)" or len(inputs[t_name].shape) != 1:
                problems.append(f"{t_name!r} must be float32 [B], is {inputs[t_name].type} {inputs[t_name].shape}")
            channels = inputs[x_name].shape[1]
            if isinstance(channels, int) and channels != self.info.channels:
                problems.append(f"graph has {channels} channels, config says {self.info.channels}")
        if self.info.output_name not in outputs:
            problems.append(f"outputs {sorted(outputs)} lack {self.info.output_name!r}")
        if problems:
            raise ModelConfigError(f"model {self.info.name}: " + "; ".join(problems))

    def predict_eps(self, x: np.ndarray, t: np.ndarray, deadline: float | None = None) -> np.ndarray:
        # in process, a call cannot outlive the loop's own deadline check by more than one step
        x_name, t_name = self.info.input_names
        session = self._session
        if session is None:
            raise BackendError(f"model {self.info.name} is closed", kind="closed")
        network = self.info.network  # the family's time input and output (conventions.py)
        x_in, t_in = network.network_inputs(x, t)
        (out,) = session.run(
            [self.info.output_name],
            {x_name: np.ascontiguousarray(x_in, dtype=np.float32), t_name: np.ascontiguousarray(t_in, dtype=np.float32)},
            self._run_options,
        )
        return network.eps(out, t)

    def ready(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        self._session = None
