"""Few-step samplers through the service against the exact answer (exact-score Gaussian oracle).

Data N(MU, S^2) per pixel with S = 0.3 (real images' per-pixel spread), a constant guide, the
exact eps as an ONNX model served by an in-process `sdedit` server, edited over gRPC with npy
outputs. The default samplers at 20 network calls on logSNR-uniform levels, t0 in {0.3, 0.5,
0.8}, VP (DDPM schedule) and VE:

- the exact answer (benchmarks/sampler_math.py, closed form): the reverse SDE's law of x0 | x_t0
  integrated over x_t0 given the guide, for the stochastic sampler; the probability-flow map of
  x_t0 for the deterministic one;
- the sampler's own output law, also closed form: every step is affine in (x, D_prev) plus
  independent noise, so a 2x2 covariance recursion gives it exactly (no statistics). Issue 11's
  acceptance is asserted there, with no sampling noise: variance within 3% (deterministic) or
  5% (stochastic) of the exact answer; the mean within 0.01 exact standard deviations;
- the service's outputs, statistically: their pooled mean and variance against that law and
  against the exact answer. n i.i.d. pixels (ORACLE.md, section 4) give SE(mean) = sqrt(v / n)
  and SE(variance) = v sqrt(2 / (n - 1)). All COMPARISONS in this file share one family-wise
  false-alarm rate ALPHA (Bonferroni): each allows Z = Phi^-1(1 - ALPHA / (2 m)) SE. The
  empirical variance against the exact answer may be off by the tolerance plus Z SE.

Seeds are fixed, so every run draws the same numbers. The largest deviation with these seeds,
ve dpmpp_2m_sde t0 = 0.8 variance at +3.3 SE (< Z = 3.73), was rerun: 8 other seed ranges pooled
gave +0.38 SE, and 40 edits each of it and its VP twin gave z-scores with sd 0.99 to 1.05 (the
standard errors are calibrated); noise, not a discrepancy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pytest

from benchmarks.sampler_math import exact_law, is_deterministic, sampler_law
from service.backends.oracle import gaussian_model
from service.backends.repository import model_parameters, write_model
from service.client import Client, build_request
from service.pipeline.imaging import decode_npy, encode_png
from service.sde.schedules import SDESpec, build_schedule

MU, S = 0.25, 0.3
GUIDE_PIXEL = 51  # -0.6 in the model's range
GUIDE = GUIDE_PIXEL / 127.5 - 1.0
SIDE, SAMPLES = 64, 16  # 65,536 pooled pixels per configuration
CALLS = 20
TOLERANCE = {"dpmpp_2m": 0.03, "dpmpp_2m_sde": 0.05}  # issue 11: deterministic 3%, stochastic 5%
SPECS = {"vp_discrete": SDESpec("vp_discrete"), "ve": SDESpec("ve", timesteps=1000, sigma_min=0.01, sigma_max=50.0)}


@dataclass(frozen=True)
class Case:
    sde: str
    sampler: str
    t0: float
    masked: bool = False
    repeats: int = 1

    @property
    def id(self) -> str:
        return f"{self.sde}-{self.sampler}-t0={self.t0}" + ("-masked-K2" if self.masked else "")


CASES = [Case(sde, sampler, t0) for sde in SPECS for sampler in TOLERANCE for t0 in (0.3, 0.5, 0.8)]
# masks and repeats: the regenerated pixels follow the unmasked law of K = 2 repeats (ORACLE.md, section 4)
MASKED = [Case("vp_discrete", sampler, 0.5, masked=True, repeats=2) for sampler in TOLERANCE]
# statistical comparisons: per plain case mean and variance vs the sampler's law, mean vs exact, variance
# band vs exact; per masked case mean and variance vs the sampler's law
COMPARISONS = 4 * len(CASES) + 2 * len(MASKED)
ALPHA = 0.01
Z = NormalDist().inv_cdf(1.0 - ALPHA / (2 * COMPARISONS))


@pytest.fixture(scope="module")
def oracle_server(tmp_path_factory, make_module_server):
    root = tmp_path_factory.mktemp("few_step_oracle")
    for sde, spec in SPECS.items():
        write_model(root, f"gauss-{sde}", gaussian_model(spec, MU, S).SerializeToString(),
                    model_parameters(spec, SIDE, SIDE, 1, default_steps=CALLS, flexible_size=True, description="oracle"))
    return make_module_server(repository=root, default_model="gauss-vp_discrete", cache="none", max_num_samples=SAMPLES,
                              onnx_threads=1)


def edit(server, case: Case, seed: int) -> np.ndarray:
    guide = encode_png(np.full((SIDE, SIDE, 1), GUIDE_PIXEL, dtype=np.uint8))
    mask = b""
    if case.masked:
        pixels = np.zeros((SIDE, SIDE, 1), dtype=np.uint8)
        pixels[:, : SIDE // 2] = 255  # regenerate the left half
        mask = encode_png(pixels)
    with Client(server.address) as client:
        response = client.edit(build_request(guide, mask=mask, t0=case.t0, steps=CALLS, repeats=case.repeats, sampler=case.sampler,
                                             spacing="logsnr_uniform", seed=seed, num_samples=SAMPLES, npy=True,
                                             model=f"gauss-{case.sde}"), timeout=300)
    assert response.network_calls == CALLS * case.repeats
    return np.stack([decode_npy(image.data) for image in response.images]).astype(np.float64)


def z_of(values: np.ndarray, mean: float, var: float) -> tuple[float, float]:
    n = values.size
    return (values.mean() - mean) / math.sqrt(var / n), (values.var(ddof=1) - var) / (var * math.sqrt(2.0 / (n - 1)))


@pytest.mark.statistical
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_twenty_calls_match_the_exact_answer(oracle_server, case: Case):
    schedule = build_schedule(SPECS[case.sde])
    exact_mean, exact_var = exact_law(schedule, case.t0, GUIDE, MU, S, is_deterministic(case.sampler))
    law_mean, law_var = sampler_law(schedule, case.t0, CALLS, "logsnr_uniform", case.sampler, GUIDE, MU, S)
    tolerance = TOLERANCE[case.sampler]
    # the acceptance, in closed form (exact, no sampling noise)
    assert abs(law_var / exact_var - 1.0) <= tolerance, f"variance {law_var / exact_var:.4f} x exact"
    assert abs(law_mean - exact_mean) <= 0.01 * math.sqrt(exact_var)
    # the service samples that law ...
    values = edit(oracle_server, case, seed=1_000 * (CASES.index(case) + 1))
    z_mean, z_var = z_of(values, law_mean, law_var)
    ratio = values.var(ddof=1) / exact_var
    se_ratio = law_var / exact_var * math.sqrt(2.0 / (values.size - 1))
    z_exact_mean, _ = z_of(values, exact_mean, law_var)
    print(f"{case.id}: variance / exact {ratio:.4f} ± {se_ratio:.4f} (closed form {law_var / exact_var:.4f}); "
          f"vs the sampler's law: mean {z_mean:+.2f} SE, variance {z_var:+.2f} SE; mean vs exact {z_exact_mean:+.2f} SE; Z = {Z:.2f}")
    assert abs(z_mean) <= Z and abs(z_var) <= Z
    # ... and so is as close to the exact answer as the acceptance asks, within sampling noise
    assert abs(z_exact_mean) <= Z
    assert abs(ratio - 1.0) <= tolerance + Z * se_ratio


@pytest.mark.statistical
@pytest.mark.parametrize("case", MASKED, ids=[c.id for c in MASKED])
def test_masks_and_repeats_with_the_multistep_history(oracle_server, case: Case):
    """The multistep history is kept across the per-step compositing; the regenerated half follows
    the closed-form law of two repeats and the kept half comes back bit-exact."""
    schedule = build_schedule(SPECS[case.sde])
    law_mean, law_var = sampler_law(schedule, case.t0, CALLS, "logsnr_uniform", case.sampler, GUIDE, MU, S, repeats=2)
    values = edit(oracle_server, case, seed=500_000 + 1_000 * MASKED.index(case))
    assert np.all(values[:, :, :, SIDE // 2:] == np.float32(GUIDE))
    z_mean, z_var = z_of(values[:, :, :, : SIDE // 2], law_mean, law_var)
    print(f"{case.id}: closed form N({law_mean:.5f}, {law_var:.5f}); mean {z_mean:+.2f} SE, variance {z_var:+.2f} SE; Z = {Z:.2f}")
    assert abs(z_mean) <= Z and abs(z_var) <= Z
