"""The quality benchmark's metrics, and a small run of the benchmark itself."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks import quality
from benchmarks.quality_metrics import coarsen, kid, l2_faithfulness, median_filter, mmd2_unbiased, paint_over, palette_quantize


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    same = [mmd2_unbiased(rng.standard_normal((200, 16)), rng.standard_normal((200, 16))) for _ in range(50)]
    # unbiased: the mean over independent draws is within 3 standard errors of 0
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    shifted, shifted_std = kid(rng.standard_normal((500, 16)) + 0.5, rng.standard_normal((500, 16)))
    assert shifted > 10 * max(shifted_std, abs(np.mean(same)))


def test_median_filter_and_palette():
    image = np.zeros((8, 8), dtype=np.uint8)
    image[3, 3] = 255  # an isolated speck disappears
    image[5:8, 0:3] = 200  # a block survives (its centre)
    filtered = median_filter(image, 3)
    assert filtered[3, 3] == 0 and filtered[6, 1] == 200
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    assert len(np.unique(palette_quantize(ramp, 3))) == 3
    assert coarsen(ramp).shape == (8, 8) and len(np.unique(coarsen(ramp))) == 16


def test_l2_is_the_euclidean_distance_in_unit_range_and_paint_over_masks_the_square():
    a = np.zeros((2, 4, 4), dtype=np.uint8)
    b = a.copy()
    b[1, 0, :] = 255
    np.testing.assert_allclose(l2_faithfulness(a, b), [0.0, 2.0])
    image = np.zeros((32, 32), dtype=np.uint8)
    guide, mask = paint_over(image, np.random.default_rng(1))
    assert np.all(mask[guide != image] == 255) and (mask == 255).sum() > (guide != image).sum()


@pytest.mark.slow
def test_small_benchmark_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["quality", "--model", "digits-mixture", "--guides", "16", "--unconditional", "16",
                                      "--unconditional-steps", "5", "--sweep-steps", "5", "--t0", "0.2", "0.5", "1.0",
                                      "--masked-t0", "0.5", "--out", str(tmp_path)])
    quality.main()
    result = json.loads((tmp_path / "results.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names[:3] == ["real training digits (reference)", "stroke guides (reference)", "unconditional (t0 = 1, steps 5)"]
    assert [r["t0"] for r in result["rows"][3:]] == [0.2, 0.5, 1.0]
    assert result["masked"][0]["outside_mask_bit_exact"] is True
    assert set(result["acceptance"]) and all(isinstance(v, bool) for v in result["acceptance"].values())
    for name in ("results.md", "tradeoff.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 0
