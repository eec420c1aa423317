"""Score-network backends behind one interface: (x, t) -> eps, plus health.

`onnx` runs ONNX Runtime in process (the embedded default); `triton` calls NVIDIA Triton.
Both read the model's facts from the same model_repository/<name>/config.pbtxt.
"""

from service.backends.base import ModelInfo, ScoreModel

__all__ = ["ModelInfo", "ScoreModel"]
