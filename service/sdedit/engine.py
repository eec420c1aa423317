"""SDEdit as an engine over samplers: noise the guide to t0, run the reverse process.

    for each repeat k = 1..K:
        x = alpha_n0 * guide + sigma_n0 * z                   (n0 = round(t0 * N))
        state = INITIAL_STATE                                 (multistep history: per repeat)
        for each planned level s from n0 down, next level r (0 after the last):
            eps = network(x, t_s);  x, state = sampler.step(x, eps, s -> r, state)
            masked:  x = M * x + (1 - M) * (alpha_r * x0 + sigma_r * e),  e fresh each step
        guide = x
    masked: paste x0 back into the kept region, so it returns bit-exact.

The planned levels are `steps` levels from n0 to 1 spread by `spacing` (schedules.plan_levels).

Multistep history and masks: the history is kept across the per-step compositing. The data
prediction D a step stores is the network's, made at the composited x, so the history is the
trajectory the network actually saw; in the kept region D_prev only feeds an update that the
composite then overwrites, and in the regenerated region it is the plain multistep history.
Each repeat starts a new trajectory with an empty history (first-order first step).

Masks: M = 1 regenerates, M = 0 keeps (the paper's Omega). The kept region is re-noised to
the level of the step's *output* (alpha_r, sigma_r) with fresh noise every step. That is our
deliberate choice, not the paper's: the reference code re-noises at the step's *input* level
(alpha_s, one level too noisy for the output it is mixed with) with one draw per repeat, and
the paper's Algorithm 3, as far as we can read it, also uses the input level, with fresh noise.

Every sample has its own generator and draws, in a fixed order, the start noise of each
repeat, then per step the sampler noise (if any) and the mask noise (if a mask), so a
sample's output depends on its own seed only, not on the batch it ran in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.sdedit.samplers import INITIAL_STATE, coefficients, get_sampler
from service.sdedit.schedules import NoiseSchedule, start_level
from service.sdedit.schedules import plan_levels as plan_schedule_levels

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class EditCancelled(Exception):
    """The caller asked the loop to stop (client cancelled, deadline, shutdown)."""


@dataclass(frozen=True)
class EditParams:
    t0: float  # 0 < t0 <= 1
    steps: int = 0  # network calls per repeat; 0 = every level from n0 down
    repeats: int = 1
    sampler: str = "ddpm"
    eta: float = 0.0  # DDIM only
    spacing: str = "time_uniform"  # how the levels spread from n0 to 1 (schedules.SPACINGS)
    preview_every: int = 0  # 0 = no pred_original_sample in step events


@dataclass(frozen=True)
class StepEvent:
    repeat: int  # 1-based
    repeats: int
    step: int  # 1-based within the repeat
    steps: int
    network_calls: int  # made so far (per sample)
    total_network_calls: int
    pred_original_sample: np.ndarray | None  # [B, C, H, W], only on preview steps


@dataclass(frozen=True)
class EditResult:
    samples: np.ndarray  # float32 [B, C, H, W]
    network_calls: int  # per sample
    network_seconds: float


def plan_levels(params: EditParams, schedule: NoiseSchedule) -> np.ndarray:
    """The levels the network is called at in one repeat (raises ValueError on bad steps)."""
    n0 = start_level(params.t0, schedule.num_levels)
    return plan_schedule_levels(schedule, n0, params.steps or n0, params.spacing)


def max_steps(t0: float, num_levels: int) -> int:
    return start_level(t0, num_levels)


def _normal(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])


def run_sdedit(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    guide: np.ndarray,
    mask: np.ndarray | None,
    params: EditParams,
    rngs: Sequence[np.random.Generator],
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EditResult:
    """Runs SDEdit for len(rngs) samples of one guide.

    guide: float32 [C, H, W] in [-1, 1], or [B, C, H, W] (one guide per sample).
    mask: float [H, W] or [B, H, W], 1 = regenerate; or None.
    eps_fn(x [B, C, H, W], t [B]) -> eps [B, C, H, W].
    """
    if not 0.0 < params.t0 <= 1.0:
        raise ValueError(f"t0 must be in (0, 1], got {params.t0}")
    if params.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {params.repeats}")
    if not rngs:
        raise ValueError("at least one sample (one generator) is needed")
    sampler = get_sampler(params.sampler, params.eta)
    levels = plan_levels(params, schedule)
    targets = np.append(levels[1:], 0)
    steps = len(levels)
    total_calls = steps * params.repeats
    n0 = int(levels[0])

    batch = len(rngs)
    x0 = guide.astype(np.float32)
    x0 = x0[None] if x0.ndim == 3 else x0  # [1 or B, C, H, W]
    if x0.ndim != 4 or x0.shape[0] not in (1, batch):
        raise ValueError(f"guide must be [C, H, W] or [{batch}, C, H, W], got {guide.shape}")
    regen = keep = None
    if mask is not None:
        m = mask.astype(np.float32)
        regen = (m[None] if m.ndim == 2 else m)[:, None]  # [1 or B, 1, H, W]
        if regen.shape[0] not in (1, batch) or regen.shape[2:] != x0.shape[2:]:
            raise ValueError(f"mask must be [H, W] or [{batch}, H, W] matching the guide, got {mask.shape}")
        keep = 1.0 - regen
    shape = x0.shape[1:]
    current_guide = np.broadcast_to(x0, (batch, *shape))
    calls = 0
    network_seconds = 0.0

    for repeat in range(1, params.repeats + 1):
        alpha0, sigma0 = schedule.alphas[n0], schedule.sigmas[n0]
        x = (alpha0 * current_guide + sigma0 * _normal(rngs, shape)).astype(np.float32)
        state = INITIAL_STATE  # a new trajectory: no multistep history
        for index, (s, r) in enumerate(zip(levels, targets), start=1):
            if should_stop is not None and should_stop():
                raise EditCancelled(f"stopped after {calls} network calls")
            t = np.full(batch, schedule.model_times[s], dtype=np.float32)
            started = time.perf_counter()
            eps = np.asarray(eps_fn(x, t), dtype=np.float32)
            network_seconds += time.perf_counter() - started
            calls += 1
            c = coefficients(schedule, int(s), int(r))
            noise = _normal(rngs, shape) if sampler.needs_noise(int(r)) else None
            out = sampler.step(x, eps, c, noise, state)
            x, state = out.prev_sample, out.state
            if keep is not None:
                known = c.alpha_r * x0 + c.sigma_r * _normal(rngs, shape) if r > 0 else x0
                x = (regen * x + keep * known).astype(np.float32)
            if on_step is not None:
                preview = params.preview_every and (index % params.preview_every == 0 or index == steps)
                on_step(StepEvent(repeat, params.repeats, index, steps, calls, total_calls,
                                  out.pred_original_sample if preview else None))
        if keep is not None:
            x = np.where(keep > 0, x0, x).astype(np.float32)  # bit-exact kept region
        current_guide = x
    return EditResult(samples=np.ascontiguousarray(current_guide), network_calls=calls, network_seconds=network_seconds)
