"""`sdedit import`: tiny models of each architecture with random weights, in the exact
on-disk formats (diffusers folders written by save_pretrained; a reference state dict saved
by torch.save with a YAML config in the reference layout).

- the exported ONNX equals diffusers' own forward within 1e-4 (fp32) over several
  timesteps (fractional ones included), batch sizes and image sizes;
- an edit served with the imported model equals, within 1e-3, the same edit computed in
  process with diffusers' model and our engine (run_sdedit with an eps_fn around torch);
- a reference state dict loads strictly and matches diffusers' UNet2DModel after key mapping;
- --fp16: about half the file, the difference reported in the card and bounded here.

Skips, with the reason, only where torch, diffusers or PyYAML are missing (`make test`
installs them: '.[dev,train]').
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.backends.conventions import NetworkConvention
from service.backends.repository import load_model_info
from service.cli import main as cli_main
from service.client import Client, build_request
from service.pipeline.imaging import decode_npy, encode_png, to_model_range
from service.sde import EditParams, GaussianNoise, SDESpec, build_schedule, run_sdedit
from tests.helpers import ServerFactory

torch = pytest.importorskip("torch", reason="sdedit import needs torch (the train extra)")
diffusers = pytest.importorskip("diffusers", reason="sdedit import needs diffusers (the dev extra)")
yaml = pytest.importorskip("yaml", reason="the reference importer reads YAML configs (PyYAML, the dev extra)")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::torch.jit.TracerWarning")

TOLERANCE = 1e-4
SIZE = 16
VE_SIGMAS = (0.01, 50.0)


def tiny_ddpm():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None).eval()


def tiny_ncsnpp():
    torch.manual_seed(1)
    return diffusers.UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"), up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        norm_eps=1e-6, time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=2**0.5,
        attention_head_dim=None, downsample_padding=1).eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    ddpm, ncsnpp = tiny_ddpm(), tiny_ncsnpp()
    ddpm.save_pretrained(root / "ddpm" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=100, beta_start=1e-4, beta_end=0.2).save_pretrained(root / "ddpm" / "scheduler")
    ncsnpp.save_pretrained(root / "ncsnpp" / "unet")
    diffusers.ScoreSdeVeScheduler(num_train_timesteps=100, sigma_min=VE_SIGMAS[0], sigma_max=VE_SIGMAS[1]).save_pretrained(
        root / "ncsnpp" / "scheduler")
    return {"root": root, "ddpm": ddpm, "ncsnpp": ncsnpp}


@pytest.fixture(scope="module")
def repository(sources, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for name in ("ddpm", "ncsnpp"):
        assert cli_main(["import", "diffusers", str(sources["root"] / name), "--name", name, "--repository", str(repo),
                         "--default-steps", "6"]) == 0
    assert cli_main(["import", "diffusers", str(sources["root"] / "ddpm"), "--name", "ddpm16", "--repository", str(repo),
                     "--fp16"]) == 0
    return repo


def session(model_dir):
    import onnxruntime as ort

    return ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def torch_out(unet, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return unet(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()


def test_import_writes_config_card_and_conventions(repository):
    ddpm, ncsnpp = load_model_info(repository / "ddpm"), load_model_info(repository / "ncsnpp")
    assert (ddpm.sde.sde_type, ddpm.sde.timesteps, ddpm.sde.beta_max) == ("vp_discrete", 100, 0.2)
    assert ddpm.network.time_input == "index" and ddpm.convention is None  # the default: no conversion
    assert ddpm.default_steps == 6 and ddpm.flexible_size and ddpm.size_multiple == 2
    assert ddpm.memory_bytes_per_pixel > 0 and ddpm.attention_downsample == 2
    # score_sde's NCSN++ sees [0, 1] data: the service's sigmas are twice the network's
    assert (ncsnpp.sde.sde_type, ncsnpp.sde.sigma_min, ncsnpp.sde.sigma_max) == ("ve", 0.02, 100.0)
    assert (ncsnpp.network.time_input, ncsnpp.network.network_output, ncsnpp.network.data_range) == ("sigma", "score", "0,1")
    card = (repository / "ncsnpp" / "README.md").read_text()
    for needle in ("sha256", "parameters", "ONNX Runtime vs PyTorch", ncsnpp.content_hash, "level 2:", "level 100:"):
        assert needle in card
    config = (repository / "ncsnpp" / "config.pbtxt").read_text()
    assert "time_input" in config and "max_batch_size: 64" in config and "dynamic_batching" in config


@pytest.mark.parametrize("batch,size", [(1, SIZE), (3, SIZE), (2, 2 * SIZE)])
def test_ddpm_onnx_matches_diffusers(repository, sources, batch, size):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    onnx = session(repository / "ddpm")
    for t in (0.0, 7.5, 42.25, 99.0):  # fractional indices too: no int cast anywhere in the graph
        times = np.full(batch, t, np.float32)
        (got,) = onnx.run(["eps"], {"x": x, "t": times})
        assert np.abs(got - torch_out(sources["ddpm"], x, times)).max() < TOLERANCE


def test_fractional_timesteps_reach_the_network(repository, sources):
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    onnx = session(repository / "ddpm")
    at = {t: onnx.run(["eps"], {"x": x, "t": np.array([t], np.float32)})[0] for t in (7.0, 7.5, 8.0)}
    assert np.abs(at[7.5] - at[7.0]).max() > 1e-4 and np.abs(at[7.5] - at[8.0]).max() > 1e-4
    assert np.abs(at[7.5] - torch_out(sources["ddpm"], x, np.array([7.5], np.float32))).max() < TOLERANCE


@pytest.mark.parametrize("batch,size", [(1, SIZE), (3, SIZE), (2, 2 * SIZE)])
def test_ncsnpp_onnx_matches_diffusers(repository, sources, batch, size):
    """Compared as eps = -sigma x score, what the engine receives (the raw score grows as 1/sigma)."""
    rng = np.random.default_rng(batch)
    x = rng.uniform(0, 1, (batch, 3, size, size)).astype(np.float32)
    onnx = session(repository / "ncsnpp")
    for sigma in (0.01, 0.3, 7.0, 50.0):
        sigmas = np.full(batch, sigma, np.float32)
        (got,) = onnx.run(["eps"], {"x": x, "t": sigmas})
        expected = torch_out(sources["ncsnpp"], x, sigmas)
        assert np.abs(sigma * (got - expected)).max() < TOLERANCE
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def eps_fn_ddpm(unet):
    """Our engine's eps_fn around diffusers' model: vp_discrete model times are DDPM indices."""
    return lambda x, t: torch_out(unet, x.astype(np.float32), t.astype(np.float32))


def eps_fn_ncsnpp(unet, spec: SDESpec):
    """Written out independently of conventions.py: the network sees x' = (x + 1) / 2 at
    sigma' = sigma / 2 (its [0, 1] data) and returns the score in x' units: eps = -sigma' score."""
    def eps(x, t):
        sigma_net = 0.5 * spec.sigma_min * (spec.sigma_max / spec.sigma_min) ** t.astype(np.float64)
        score = torch_out(unet, ((x + 1.0) / 2.0).astype(np.float32), sigma_net.astype(np.float32))
        return (-sigma_net.reshape(-1, 1, 1, 1) * score).astype(np.float32)
    return eps


@pytest.mark.parametrize("name", ["ddpm", "ncsnpp"])
def test_served_edit_equals_in_process_diffusers(repository, sources, name, make_server):
    pixels = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    server = make_server(repository=repository, default_model=name, cache="none")
    with Client(server.address) as client:
        response = client.edit(build_request(encode_png(pixels), t0=0.6, steps=5, sampler="dpmpp_2m_sde",
                                             spacing="logsnr_uniform", seed=11, npy=True), timeout=120)
    served = decode_npy(response.images[0].data)
    info = load_model_info(repository / name)
    eps_fn = eps_fn_ddpm(sources["ddpm"]) if name == "ddpm" else eps_fn_ncsnpp(sources["ncsnpp"], info.sde)
    params = EditParams(t0=0.6, steps=5, sampler="dpmpp_2m_sde", spacing="logsnr_uniform")
    local = run_sdedit(eps_fn, build_schedule(info.sde), to_model_range(pixels), None, params, [GaussianNoise(11)])
    assert response.network_calls == 5
    assert np.abs(served - local.samples[0]).max() < 1e-3


def test_fp16_weights_half_the_file_and_bounded(repository, sources):
    fp32 = (repository / "ddpm" / "1" / "model.onnx").stat().st_size
    fp16 = (repository / "ddpm16" / "1" / "model.onnx").stat().st_size
    assert 0.45 < fp16 / fp32 < 0.6
    assert "float16" in (repository / "ddpm16" / "README.md").read_text()
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    t = np.array([3.0, 80.0], np.float32)
    (half,) = session(repository / "ddpm16").run(["eps"], {"x": x, "t": t})
    difference = np.abs(half - torch_out(sources["ddpm"], x, t)).max()
    assert half.dtype == np.float32 and 0 < difference < 1e-2


# --- the reference format ---------------------------------------------------------------------

REFERENCE_YAML = """\
data:
    dataset: "LSUN"
    image_size: 16
    channels: 3
model:
    type: "simple"
    in_channels: 3
    out_ch: 3
    ch: 32
    ch_mult: [1, 2, 2]
    num_res_blocks: 1
    attn_resolutions: [8, ]
    dropout: 0.1
    var_type: fixedsmall
    resamp_with_conv: True
diffusion:
    beta_schedule: linear
    beta_start: 0.0001
    beta_end: 0.02
    num_diffusion_timesteps: 1000
"""


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory):
    from training.reference_unet import ReferenceConfig, ReferenceUNet

    root = tmp_path_factory.mktemp("reference")
    (root / "church.yml").write_text(REFERENCE_YAML)
    torch.manual_seed(3)
    model = ReferenceUNet(ReferenceConfig.from_yaml_dict(yaml.safe_load(REFERENCE_YAML)))
    with torch.no_grad():
        for parameter in model.parameters():  # away from the initialisation's zeros and ones
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save(model.state_dict(), root / "church.ckpt")  # the reference's format: a plain state dict
    return root


def test_reference_state_dict_keys_are_the_reference_layout(reference_files):
    state = torch.load(reference_files / "church.ckpt", weights_only=True)
    for key in ("temb.dense.0.weight", "down.0.block.0.norm1.weight", "down.0.downsample.conv.weight",
                "down.1.attn.0.q.weight", "down.1.block.0.nin_shortcut.weight", "mid.attn_1.proj_out.bias",
                "mid.block_2.temb_proj.weight", "up.2.block.1.conv2.weight", "up.1.upsample.conv.weight", "norm_out.bias"):
        assert key in state, key
    assert state["down.1.attn.0.q.weight"].shape == (64, 64, 1, 1)


def test_reference_loads_strictly_and_matches_diffusers(reference_files):
    from training.importers.reference import load_network
    from training.reference_unet import diffusers_config, to_diffusers_state_dict

    network = load_network(reference_files / "church.ckpt", reference_files / "church.yml")
    state = torch.load(reference_files / "church.ckpt", weights_only=True)
    independent = diffusers.UNet2DModel(**diffusers_config(network.module.config)).eval()
    independent.load_state_dict(to_diffusers_state_dict(state, network.module.config), strict=True)
    rng = np.random.default_rng(4)
    for batch, size in ((1, 16), (3, 16), (2, 32)):
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        t = np.array([0.0, 499.5, 999.0][:batch], np.float32)
        with torch.no_grad():
            ours = network.module(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        assert np.abs(ours - torch_out(independent, x, t)).max() < 1e-5


def test_reference_strict_mismatch_is_refused(reference_files, tmp_path, capsys):
    state = torch.load(reference_files / "church.ckpt", weights_only=True)
    del state["mid.attn_1.q.bias"]
    torch.save(state, tmp_path / "broken.ckpt")
    assert cli_main(["import", "reference", str(tmp_path / "broken.ckpt"), "--config", str(reference_files / "church.yml"),
                     "--name", "broken", "--repository", str(tmp_path)]) == 1
    assert "mid.attn_1.q.bias" in capsys.readouterr().err


def test_reference_import_cli_and_onnx(reference_files, tmp_path):
    from training.reference_unet import ReferenceConfig, ReferenceUNet

    # DataParallel's prefix and the original DDPM conversion's `downsample.op` are read too
    state = torch.load(reference_files / "church.ckpt", weights_only=True)
    renamed = {"module." + key.replace(".downsample.conv.", ".downsample.op."): value for key, value in state.items()}
    torch.save(renamed, tmp_path / "church-dp.ckpt")
    assert cli_main(["import", "reference", str(tmp_path / "church-dp.ckpt"), "--config", str(reference_files / "church.yml"),
                     "--name", "church", "--repository", str(tmp_path / "repo")]) == 0
    info = load_model_info(tmp_path / "repo" / "church")
    assert (info.width, info.size_multiple, info.sde.timesteps) == (16, 4, 1000)
    model = ReferenceUNet(ReferenceConfig.from_yaml_dict(yaml.safe_load(REFERENCE_YAML))).eval()
    model.load_state_dict(state, strict=True)
    x = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)
    t = np.array([12.5, 700.0], np.float32)
    (got,) = session(tmp_path / "repo" / "church").run(["eps"], {"x": x, "t": t})
    with torch.no_grad():
        assert np.abs(got - model(torch.from_numpy(x), torch.from_numpy(t)).numpy()).max() < TOLERANCE
    card = (tmp_path / "repo" / "church" / "README.md").read_text()
    assert "downsample.op" in card and "module." in card


# --- conventions (no torch needed, but kept with their importers) ----------------------------

def test_conventions_convert_time_and_output():
    ve = SDESpec(sde_type="ve", sigma_min=0.02, sigma_max=100.0)
    convention = NetworkConvention(ve, "sigma", "score", "0,1")
    x, t = np.full((2, 1, 2, 2), 0.2, np.float32), np.array([0.5, 1.0], np.float32)
    x_in, t_in = convention.network_inputs(x, t)
    sigma = 0.02 * (100.0 / 0.02) ** t.astype(np.float64)
    assert np.allclose(x_in, 0.6) and np.allclose(t_in, sigma / 2)
    score = np.ones_like(x)
    assert np.allclose(convention.eps(score, t), -(sigma / 2).reshape(-1, 1, 1, 1))
    vp = NetworkConvention(SDESpec(sde_type="vp", beta_min=0.1, beta_max=20.0), "999t")
    assert np.allclose(vp.network_inputs(x, np.array([0.25, 1.0], np.float32))[1], [249.75, 999.0])
    with pytest.raises(ValueError, match="does not fit"):
        NetworkConvention(SDESpec(), "sigma")
    with pytest.raises(ValueError, match="only exact for ve"):
        NetworkConvention(SDESpec(), "index", data_range="0,1")


def test_import_without_torch_says_what_to_install(monkeypatch, capsys, tmp_path):
    import training.importers as importers

    monkeypatch.setattr(importers, "missing_dependencies", lambda *names: ["diffusers"])
    assert cli_main(["import", "diffusers", str(tmp_path), "--name", "x", "--repository", str(tmp_path)]) == 2
    assert "pip install 'sdedit-service[import]'" in capsys.readouterr().err


def test_shipped_models_keep_their_convention():
    from service.config import PROJECT_ROOT

    for name in ("gaussian-ve", "gaussian-vp", "digits"):
        info = load_model_info(PROJECT_ROOT / "model_repository" / name)
        assert info.convention is None and info.network.is_identity
        assert json.dumps(info.parameters).count("time_input") == 0


def test_triton_backend_honours_the_convention(repository, tmp_path):
    """The Triton CPU stand-in serves the imported NCSN++ model (sigma in, score out, [0, 1]
    data): the same edit as the embedded backend's, within float32 noise."""
    from service.backends.triton_local import TOOLS, LocalTriton, cpu_repository

    if not (TOOLS / ".installed").is_file():
        pytest.skip("no CPU tritonserver: run `make triton-tools`")
    pixels = np.random.default_rng(7).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    request = build_request(encode_png(pixels), t0=0.5, steps=4, seed=2, npy=True, model="ncsnpp")
    outputs = []
    with LocalTriton(cpu_repository([repository], tmp_path / "cpu"), tmp_path / "triton.log") as triton:
        for overrides in ({}, {"backend": "triton", "triton_url": triton.url}):
            with ServerFactory(repository) as start:  # each server stops before Triton does
                server = start(default_model="ncsnpp", cache="none", **overrides)
                with Client(server.address) as client:
                    outputs.append(decode_npy(client.edit(request, timeout=120).images[0].data))
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4
