"""The CPU variant's model code: Triton's Python backend running ONNX Runtime on model.onnx.

Not imported by the service: Triton's Python-backend stub loads it (as <model>/1/model.py, a
link to this file, see variants.py) in the server's own environment, where
`triton_python_backend_utils` exists. The tensor names come from the model's config, whose
`t` input Triton has already reshaped from [B, 1] to [B].
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # One thread that sleeps when idle: this server shares its host's cores with the
        # service (scale with instance_group count instead).
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x_name, t_name = self.input_names
            x = pb_utils.get_input_tensor_by_name(request, x_name).as_numpy()
            t = pb_utils.get_input_tensor_by_name(request, t_name).as_numpy().reshape(-1)
            try:
                (eps,) = self.session.run([self.output_name], {x_name: x, t_name: t})
            except Exception as exc:  # noqa: BLE001 (one bad request must not fail the others in this batch)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, np.ascontiguousarray(eps))]))
        return responses
