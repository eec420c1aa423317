"""The UNet exports to ONNX that matches PyTorch, and a checkpoint round-trips into a model folder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is installed by `make setup`")

from service.backends.onnx import OnnxScoreModel  # noqa: E402
from training.export import max_difference, to_onnx  # noqa: E402
from training.train import alphas_cumprod, min_snr_weights  # noqa: E402
from training.unet import UNet, UNetConfig  # noqa: E402


def test_onnx_export_matches_pytorch():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=8, groups=4, attention_heads=2)).eval()
    for p in model.parameters():  # zero-initialised output layers would make the check vacuous
        p.data.add_(0.05 * torch.randn_like(p))
    onnx_bytes = to_onnx(model)
    assert max_difference(model, onnx_bytes) < 1e-4


def test_exported_model_serves_through_the_embedded_backend(tmp_path):
    from service.backends.repository import model_parameters, write_model
    from service.sde.schedules import SDESpec

    torch.manual_seed(1)
    model = UNet(UNetConfig(base_channels=8, groups=4, attention_heads=2)).eval()
    params = model_parameters(SDESpec(), 32, 32, 1, default_steps=10, description="tiny", flexible_size=True, size_multiple=4)
    backend = OnnxScoreModel(write_model(tmp_path, "tiny", to_onnx(model), params))
    x = np.random.default_rng(0).standard_normal((2, 1, 48, 64)).astype(np.float32)
    t = np.array([5.0, 900.0], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(backend.predict_eps(x, t), expected, atol=1e-4)
    assert backend.info.accepts_size(64, 48) and not backend.info.accepts_size(30, 30)


def test_min_snr_weights():
    abar = alphas_cumprod()
    weights = min_snr_weights(abar, 5.0)
    snr = abar / (1 - abar)
    assert torch.all(weights[snr <= 5] == 1) and torch.all(weights[snr > 5] < 1)
    assert torch.allclose(weights[0], 5 / snr[0])


def test_model_card_reports_the_runs_own_hyper_parameters(tmp_path):
    """A tiny run with non-default flags: the card must carry them, not train.py's defaults.
    A checkpoint without a recorded config (as the shipped model's) says so instead of guessing."""
    from training import export, train

    run = tmp_path / "run"
    flags = ["--batch", "4", "--lr", "0.001", "--warmup", "2", "--ema", "0.99", "--min-snr", "0", "--seed", "5",
             "--base-channels", "8"]
    train.main(["--out", str(run), "--steps", "2", "--threads", "1", *flags])
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["training"]["lr"] == 0.001 and state["training"]["unet"]["base_channels"] == 8

    export.main(["--checkpoint", str(run / "last.pt"), "--name", "tiny", "--repository", str(tmp_path / "repo")])
    card = (tmp_path / "repo" / "tiny" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| training |"))
    assert row == ("| training | 2 steps of batch 4 with Adam, lr 0.001 after a 2-step warm-up, unweighted loss, "
                   "gradient clipping at 1, dropout 0.1, seed 5; exported weights are the EMA (decay 0.99) |")
    assert "base 8 channels" in card and "T = 1000, betas linear from 0.0001 to 0.02" in card
    assert "--steps 2 --batch 4 --lr 0.001 --warmup 2 --ema 0.99 --min-snr 0 --seed 5 --base-channels 8" in card

    with pytest.raises(SystemExit, match="other hyper-parameters"):  # resuming with other flags would mix two runs
        train.main(["--out", str(run), "--steps", "3", "--threads", "1", *flags[:-2], "--base-channels", "16"])

    del state["training"]
    torch.save(state, run / "old.pt")
    (run / "config.json").unlink()
    export.main(["--checkpoint", str(run / "old.pt"), "--name", "old", "--repository", str(tmp_path / "repo")])
    card = (tmp_path / "repo" / "old" / "README.md").read_text()
    assert "hyper-parameters were not recorded" in card and "0.9995" not in card and "5e-4" not in card

    (run / "old.pt").replace(run / "last.pt")  # resuming a checkpoint without a config records from there on
    train.main(["--out", str(run), "--steps", "3", "--threads", "1", *flags])
    assert torch.load(run / "last.pt", weights_only=False)["training"]["recorded_from_step"] == 2
    export.main(["--checkpoint", str(run / "last.pt"), "--name", "resumed", "--repository", str(tmp_path / "repo")])
    card = (tmp_path / "repo" / "resumed" / "README.md").read_text()
    assert "seed 5 (these flags are recorded from step 2 on; the earlier steps' were not)" in card
