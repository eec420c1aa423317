"""Analytic score models as ONNX graphs: the exact epsilon of known data distributions.

If the data are N(mu, s^2 I), every noised marginal x_t = alpha x_0 + sigma eps is
N(alpha mu, (alpha^2 s^2 + sigma^2) I), so the exact network output is

    eps*(x, t) = E[eps | x_t = x] = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2).

For an isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I) in D dimensions, with
v_k = alpha^2 s_k^2 + sigma^2 and responsibilities r_k(x) = softmax_k(log w_k
- D/2 log v_k - |x - alpha mu_k|^2 / (2 v_k)),

    eps*(x, t) = sigma sum_k r_k(x) (x - alpha mu_k) / v_k.

With s_k = 0 and mu_k real images this is the exact score of that small data set: the
network a perfect model trained on it would be. Tests use these to check SDEdit outputs
against closed-form distributions; `digits-mixture` serves real digits with no training.

    python -m service.backends.oracle --repository model_repository
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.backends.repository import model_parameters, write_model
from service.sde.schedules import SDESpec, build_schedule

OPSET = 17


class _Graph:
    """A small helper to write ONNX graphs node by node."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def model(self, x_shape: list, output: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], ["eps"]))
        graph = helper.make_graph(
            self.nodes,
            "oracle",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
             helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])],
            [helper.make_tensor_value_info("eps", TensorProto.FLOAT, x_shape)],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sdedit-oracle")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _alpha_sigma(g: _Graph, spec: SDESpec, dtype=np.float32) -> tuple[str, str]:
    """alpha(t), sigma(t) as [B] tensors of `dtype`, exactly as service.sde.schedules defines them."""
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if spec.sde_type == "vp_discrete":
        schedule = build_schedule(spec)
        index = g.op("Cast", "t", to=TensorProto.INT64)
        alpha = g.op("Gather", g.const(schedule.alphas[1:], "alphas", dtype), index)
        sigma = g.op("Gather", g.const(schedule.sigmas[1:], "sigmas", dtype), index)
        return alpha, sigma
    t = g.op("Cast", "t", to=onnx_type)
    if spec.sde_type == "vp":
        quadratic = g.op("Mul", g.op("Mul", t, t), g.const(-0.25 * (spec.beta_max - spec.beta_min), dtype=dtype))
        linear = g.op("Mul", t, g.const(-0.5 * spec.beta_min, dtype=dtype))
        log_alpha = g.op("Add", quadratic, linear)
        alpha = g.op("Exp", log_alpha)
        sigma = g.op("Sqrt", g.op("Sub", g.const(1.0, dtype=dtype), g.op("Exp", g.op("Mul", log_alpha, g.const(2.0, dtype=dtype)))))
        return alpha, sigma
    sigma = g.op("Mul", g.const(spec.sigma_min, dtype=dtype),
                 g.op("Exp", g.op("Mul", t, g.const(np.log(spec.sigma_max / spec.sigma_min), dtype=dtype))))
    alpha = g.op("Add", g.op("Mul", sigma, g.const(0.0, dtype=dtype)), g.const(1.0, dtype=dtype))
    return alpha, sigma


def gaussian_model(spec: SDESpec, mean: float, std: float, channels: int = 1) -> onnx.ModelProto:
    """eps* of N(mean, std^2 I); works at any image size (elementwise)."""
    g = _Graph()
    alpha, sigma = _alpha_sigma(g, spec)
    column = g.const([-1, 1, 1, 1], "column", np.int64)
    a = g.op("Reshape", alpha, column)
    s = g.op("Reshape", sigma, column)
    variance = g.op("Add", g.op("Mul", g.op("Mul", a, a), g.const(std**2)), g.op("Mul", s, s))
    centred = g.op("Sub", "x", g.op("Mul", a, g.const(mean)))
    eps = g.op("Div", g.op("Mul", s, centred), variance)
    return g.model(["batch", channels, "height", "width"], eps)


def mixture_model(
    spec: SDESpec,
    means: np.ndarray,
    stds: np.ndarray,
    weights: np.ndarray,
    means_uint8: bool = False,
) -> onnx.ModelProto:
    """eps* of sum_k w_k N(mu_k, s_k^2 I); means [K, C, H, W] fix the image size.

    With means_uint8 the means are stored as pixels (uint8) and mapped to [-1, 1] in the
    graph, which keeps a data-set mixture small. Distances are computed in float64: at the
    smallest noise levels the softmax is decided by differences of large numbers.
    """
    k, c, h, w = means.shape
    d = c * h * w
    g = _Graph()
    alpha, sigma = _alpha_sigma(g, spec, np.float64)
    column = g.const([-1, 1], "column", np.int64)
    a = g.op("Reshape", alpha, column)  # [B, 1]
    s = g.op("Reshape", sigma, column)
    if means_uint8:
        pixels = g.const(means.reshape(k, d), "mean_pixels", np.uint8)
        mu = g.op("Sub", g.op("Div", g.op("Cast", pixels, to=TensorProto.DOUBLE), g.const(127.5, dtype=np.float64)),
                  g.const(1.0, dtype=np.float64))
        mu_values = means.reshape(k, d).astype(np.float64) / 127.5 - 1.0
    else:
        mu_values = means.reshape(k, d).astype(np.float64)
        mu = g.const(mu_values, "means", np.float64)
    mu_t = g.op("Transpose", mu, perm=[1, 0])  # [D, K]
    xf = g.op("Cast", g.op("Reshape", "x", g.const([-1, d], "flat", np.int64)), to=TensorProto.DOUBLE)  # [B, D]
    var_k = g.op("Add", g.op("Mul", g.op("Mul", a, a), g.const((stds.astype(np.float64) ** 2)[None], "s2", np.float64)),
                 g.op("Mul", s, s))  # [B, K]
    x2 = g.op("ReduceSum", g.op("Mul", xf, xf), g.const([1], "axis1", np.int64), keepdims=1)  # [B, 1]
    xm = g.op("MatMul", xf, mu_t)  # [B, K]
    m2 = g.const((mu_values**2).sum(axis=1)[None], "m2", np.float64)  # [1, K]
    two_a = g.op("Mul", a, g.const(2.0, dtype=np.float64))
    dist2 = g.op("Add", g.op("Sub", x2, g.op("Mul", two_a, xm)), g.op("Mul", g.op("Mul", a, a), m2))
    logits = g.op(
        "Sub",
        g.op("Sub", g.const(np.log(weights.astype(np.float64))[None], "logw", np.float64),
             g.op("Mul", g.const(d / 2.0, dtype=np.float64), g.op("Log", var_k))),
        g.op("Div", dist2, g.op("Mul", var_k, g.const(2.0, dtype=np.float64))),
    )
    resp = g.op("Softmax", logits, axis=1)
    resp_over_var = g.op("Div", resp, var_k)  # [B, K]
    total = g.op("ReduceSum", resp_over_var, g.const([1], "axis1b", np.int64), keepdims=1)  # [B, 1]
    eps_flat = g.op("Mul", s, g.op("Sub", g.op("Mul", xf, total), g.op("Mul", a, g.op("MatMul", resp_over_var, mu))))
    eps = g.op("Reshape", g.op("Cast", eps_flat, to=TensorProto.FLOAT), g.op("Shape", "x"))
    return g.model(["batch", c, h, w], eps)


# The oracle models that ship in model_repository/ (small files, regenerated by this script).
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.25, 0.5


def digits_mixture_means(per_class: int = 100) -> np.ndarray:
    """The first `per_class` training digits of each class, uint8 [10 * per_class, 1, 32, 32]."""
    from training.digits import load_split

    split = load_split()
    chosen = np.concatenate([np.flatnonzero(split.train_labels == digit)[:per_class] for digit in range(10)])
    return split.train_images[chosen][:, None]


# Measured by scripts/measure_model_memory.py (22-33 bytes per pixel for the Gaussians at
# 256^2-512^2; the mixture's 1,000 components are within its load-time peak), rounded up.
MEMORY_BYTES_PER_PIXEL = {"gaussian": 64, "mixture": 8192}


def write_shipped_models(repository: Path) -> list[Path]:
    vp = SDESpec(sde_type="vp_discrete")
    ve = SDESpec(sde_type="ve", timesteps=1000, sigma_min=0.01, sigma_max=50.0)
    written = []
    for name, spec in (("gaussian-vp", vp), ("gaussian-ve", ve)):
        params = model_parameters(
            spec, 32, 32, 1, default_steps=20, flexible_size=True, size_multiple=1, max_size=(1024, 1024),
            memory_bytes_per_pixel=MEMORY_BYTES_PER_PIXEL["gaussian"],
            description=f"exact score of N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2 I) ({spec.sde_type}); near-zero cost, any size",
        )
        written.append(write_model(repository, name, gaussian_model(spec, GAUSSIAN_MEAN, GAUSSIAN_STD).SerializeToString(), params))
    means = digits_mixture_means()
    params = model_parameters(
        vp, 32, 32, 1, default_steps=20, memory_bytes_per_pixel=MEMORY_BYTES_PER_PIXEL["mixture"],
        description=f"exact score of {len(means)} real MNIST digits (a data-set mixture; no training)",
    )
    mixture = mixture_model(vp, means, np.zeros(len(means)), np.full(len(means), 1.0 / len(means)), means_uint8=True)
    written.append(write_model(repository, "digits-mixture", mixture.SerializeToString(), params))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the analytic oracle models into a model repository.")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    for path in write_shipped_models(args.repository):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
