"""What every importer shares: the ONNX export, fp16 weights, the export check, the memory
estimate, config.pbtxt and the model card."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from service.backends.conventions import convention_from_parameters
from service.backends.repository import load_model_info, model_parameters, write_model
from service.sde.schedules import SDESpec, build_schedule

OPSET = 17
TOLERANCE = 1e-4  # fp32 export vs PyTorch, max abs over eps
FP16_MIN_ELEMENTS = 16  # smaller initializers (shapes, scalars) stay float32
ATTENTION_BYTES_PER_ENTRY = 32.0  # the [HW, HW] scores, their softmax and a copy, float32, with slack
SLACK = 2.0  # allocator rounding, ONNX Runtime's arena and fused-kernel scratch


@dataclass
class Network:
    """A torch network ready to export, with the facts its config and card need."""

    module: torch.nn.Module  # forward(x [B, C, H, W], t [B] float32) -> the network's output like x
    spec: SDESpec
    convention: dict[str, str]  # time_input / network_output / data_range
    channels: int
    resolution: int
    size_multiple: int
    architecture: str  # one line for the card
    source: str  # where it came from, for the card
    parameters: int
    level_channels: list[tuple[int, int]]  # (channels, level) of every tensor the down path keeps, for memory
    attention_levels: list[int]  # levels (0 = full size) with self-attention
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportOptions:
    name: str
    repository: Path
    fp16: bool = False
    default_steps: int | None = None
    description: str = ""
    max_size: int = 0  # the largest side served; 0 = the native resolution
    check_size: int = 0  # side of the export check's inputs; 0 = the native resolution (smaller: faster, for big models)


def export_onnx(network: Network, trace_size: int = 0) -> bytes:
    """One self-contained graph (no external data): x and t float32, dynamic batch and size
    (traced at trace_size, default the native resolution: the graph does not depend on it)."""
    module = network.module.eval()
    size = trace_size or network.resolution
    example = (torch.zeros(2, network.channels, size, size), torch.full((2,), 0.5))
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module, example, buffer, input_names=["x", "t"], output_names=["eps"], opset_version=OPSET, dynamo=False,
            external_data=False,
            dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "t": {0: "batch"},
                          "eps": {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue()


def fp16_weights(onnx_bytes: bytes) -> bytes:
    """The same graph with its float32 weights stored as float16 and cast back on load: the
    file is about half, inputs, outputs and ONNX Runtime's CPU arithmetic stay float32 (a
    TensorRT FP16 build computes in fp16 from these same weights)."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    casts = []
    for initializer in list(graph.initializer):
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(initializer)
        if array.size < FP16_MIN_ELEMENTS:
            continue
        name = initializer.name
        half = numpy_helper.from_array(array.astype(np.float16), f"{name}__fp16")
        graph.initializer.remove(initializer)
        graph.initializer.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__cast"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def eps_of(network: Network, output: np.ndarray, model_time: np.ndarray) -> np.ndarray:
    """The engine's eps from the network's output, by the declared convention."""
    return convention_from_parameters(network.convention, network.spec).eps(output, model_time)


def check_points(network: Network) -> list[tuple[int, float]]:
    """Three levels (near clean, middle, near pure noise): (level, model time)."""
    schedule = build_schedule(network.spec)
    n = network.spec.timesteps
    return [(level, float(schedule.model_times[level])) for level in (max(1, n // 50), n // 2, n)]


def export_difference(network: Network, onnx_bytes: bytes, batch: int = 1, seed: int = 0, size: int = 0) -> dict[int, float]:
    """max |ONNX Runtime - PyTorch| in eps units at the three check levels, on random x at the
    given size (default native; x at that level's noise scale)."""
    convention = convention_from_parameters(network.convention, network.spec)
    schedule = build_schedule(network.spec)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    out: dict[int, float] = {}
    size = size or network.resolution
    for level, model_time in check_points(network):
        x = (schedule.sigmas[level] * rng.standard_normal((batch, network.channels, size, size))
             + schedule.alphas[level] * rng.uniform(-1, 1, (batch, network.channels, size, size))).astype(np.float32)
        t = np.full(batch, model_time, np.float32)
        x_in, t_in = convention.network_inputs(x, t)
        with torch.no_grad():
            expected = network.module(torch.from_numpy(x_in), torch.from_numpy(t_in)).numpy()
        (got,) = session.run(["eps"], {"x": x_in, "t": t_in})
        out[level] = float(np.abs(convention.eps(got, t) - convention.eps(expected, t)).max())
    return out


def memory_estimate(network: Network) -> tuple[float, tuple[int, float] | None]:
    """(bytes per input pixel per image, (attention downsample, bytes per entry) or None).

    An upper-bound estimate from the architecture, not a measurement: the skip tensors the
    down path keeps, plus a block's working set (input, concatenation, two normalised copies,
    two convolution outputs) at the widest level, in float32, times SLACK. scripts/
    measure_model_memory.py measures the real figure (benchmarks/big_model.py compares them).
    """
    skips = sum(channels / 4**level for channels, level in network.level_channels)
    working = max(6 * 2 * channels / 4**level for channels, level in network.level_channels)
    per_pixel = 4.0 * (skips + working) * SLACK
    attention = None
    if network.attention_levels:
        attention = (2 ** min(network.attention_levels), ATTENTION_BYTES_PER_ENTRY)
    return per_pixel, attention


def content_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_imported(network: Network, options: ImportOptions, source_hash: str) -> Path:
    """Exports, checks, writes model.onnx + config.pbtxt + README.md; returns the model folder."""
    check = options.check_size or network.resolution
    onnx_bytes = export_onnx(network, trace_size=check)
    fp32_difference = export_difference(network, onnx_bytes, size=check)
    worst = max(fp32_difference.values())
    if worst > TOLERANCE:
        raise SystemExit(f"the ONNX export differs from PyTorch by {worst:.3e} (eps units) > {TOLERANCE:g}; not written")
    fp32_size = len(onnx_bytes)
    fp16_difference = None
    if options.fp16:
        onnx_bytes = fp16_weights(onnx_bytes)
        fp16_difference = export_difference(network, onnx_bytes, size=check)
    per_pixel, attention = memory_estimate(network)
    size = network.resolution
    max_side = max(size, options.max_size or size)
    steps = options.default_steps or 20
    description = options.description or f"{network.architecture.split(':')[0]}, imported from {network.source}"
    params = model_parameters(
        network.spec, size, size, network.channels, default_steps=steps, description=description,
        flexible_size=True, size_multiple=network.size_multiple, max_size=(max_side, max_side),
        memory_bytes_per_pixel=round(per_pixel), attention=attention, convention=network.convention,
    )
    if options.fp16:
        params["weights"] = "fp16"
    model_dir = write_model(options.repository, options.name, onnx_bytes, params)
    info = load_model_info(model_dir)
    (model_dir / "README.md").write_text(model_card(network, options, info.content_hash, source_hash, fp32_difference,
                                                    fp16_difference, fp32_size, len(onnx_bytes), per_pixel, attention, steps, check))
    return model_dir


def _differences(values: dict[int, float]) -> str:
    return ", ".join(f"level {level}: {value:.2e}" for level, value in values.items())


def model_card(network: Network, options: ImportOptions, content_hash: str, source_hash: str, fp32: dict[int, float],
               fp16: dict[int, float] | None, fp32_bytes: int, file_bytes: int, per_pixel: float,
               attention: tuple[int, float] | None, steps: int, check: int) -> str:
    spec, convention = network.spec, network.convention
    if spec.sde_type == "ve":
        schedule = f"VE, sigma from {spec.sigma_min:g} to {spec.sigma_max:g} (service units, data in [-1, 1]), N = {spec.timesteps}"
    else:
        schedule = f"{spec.sde_type}, betas {spec.beta_min:g} to {spec.beta_max:g}, N = {spec.timesteps}"
    fp16_line = ("not exported (add --fp16)" if fp16 is None else
                 f"weights stored as float16 ({file_bytes / 1e6:.1f} MB vs {fp32_bytes / 1e6:.1f} MB), float32 inputs, outputs "
                 f"and CPU arithmetic; max abs difference to PyTorch fp32 in eps: {_differences(fp16)}")
    attention_line = "none" if attention is None else f"at 1/{attention[0]} of the side, {attention[1]:g} bytes per entry"
    notes = "\nImport notes:\n\n" + "".join(f"- {note}\n" for note in network.notes) if network.notes else ""
    return f"""# {options.name}: imported score network

| | |
|---|---|
| source | {network.source} (sha256 `{source_hash}`) |
| architecture | {network.architecture} |
| parameters | {network.parameters:,} |
| schedule | {schedule} |
| conventions | time input `{convention['time_input']}`, output `{convention['network_output']}`, data range `{convention['data_range']}` (service/backends/conventions.py) |
| sizes | native {network.resolution}x{network.resolution}; multiples of {network.size_multiple} up to {max(network.resolution, options.max_size or 0)} (dynamic batch and size) |
| export | ONNX opset {OPSET}, one file, {fp32_bytes / 1e6:.1f} MB fp32; ONNX Runtime vs PyTorch max abs difference in eps at batch 1, {check}x{check}: {_differences(fp32)} |
| fp16 | {fp16_line} |
| memory (estimate) | {per_pixel:.0f} bytes per pixel per image; attention {attention_line} (scripts/measure_model_memory.py measures it) |
| default edit | {steps} network calls (--default-steps) |
| content hash | `{content_hash}` |

Imported with `sdedit import`; the weights are the source's, unchanged (random-weight models
are test and benchmark fixtures, not image models).
{notes}"""
