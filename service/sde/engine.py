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

Every sample has its own noise stream (service/sde/noise.py GaussianNoise, one per seed;
any object with numpy.random.Generator's standard_normal will do) and draws, in a fixed order,
the start noise of each repeat, then per step the sampler noise (if any) and the mask noise
(if a mask), so a sample's output depends on its own seed only, not on the batch it ran in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.sde.samplers import INITIAL_STATE, SamplerState, coefficients, get_sampler
from service.sde.schedules import NoiseSchedule, start_level
from service.sde.schedules import plan_levels as plan_schedule_levels

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
class Progress:
    """Where an edit is: the one progress type. The engine's step events carry it, the service
    adds the time elapsed, a stream's update adds previews, a job's record keeps the latest,
    and the API's Progress message is its mapping field for field."""

    repeat: int  # 1-based
    repeats: int
    step: int  # 1-based within the repeat
    steps: int
    network_calls: int  # made so far (per sample)
    total_network_calls: int
    elapsed_seconds: float = 0.0  # since the edit started running (0 from the engine, which keeps no clock)


@dataclass(frozen=True)
class StepEvent:
    progress: Progress
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


class EditTrajectory:
    """One edit's whole state, explicit: its samples now, its levels and position in them, its
    sampler's history, its generators, its mask and its repeat. A pure state machine over
    (state, network output): `network_input()` says what the network must see next,
    `advance(eps)` applies the step to the network's answer. run_sdedit drives one alone; the
    batch scheduler (service/batching/) drives many with one network call per step.
    """

    def __init__(self, schedule: NoiseSchedule, guide: np.ndarray, mask: np.ndarray | None, params: EditParams,
                 rngs: Sequence[np.random.Generator], levels: np.ndarray | None = None):
        """levels: the planned levels of one repeat (plan_levels(params, schedule), planned once by
        the caller); None plans them here."""
        if not 0.0 < params.t0 <= 1.0:
            raise ValueError(f"t0 must be in (0, 1], got {params.t0}")
        if params.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {params.repeats}")
        if not rngs:
            raise ValueError("at least one sample (one generator) is needed")
        self.schedule = schedule
        self.params = params
        self.rngs = list(rngs)
        self.sampler = get_sampler(params.sampler, params.eta)
        self.levels = plan_levels(params, schedule) if levels is None else levels
        self.targets = np.append(self.levels[1:], 0)
        self.steps = len(self.levels)
        self.total_calls = self.steps * params.repeats
        self.batch = len(self.rngs)
        x0 = guide.astype(np.float32)
        x0 = x0[None] if x0.ndim == 3 else x0  # [1 or B, C, H, W]
        if x0.ndim != 4 or x0.shape[0] not in (1, self.batch):
            raise ValueError(f"guide must be [C, H, W] or [{self.batch}, C, H, W], got {guide.shape}")
        self.x0 = x0
        self.regen = self.keep = None
        if mask is not None:
            m = mask.astype(np.float32)
            self.regen = (m[None] if m.ndim == 2 else m)[:, None]  # [1 or B, 1, H, W]
            if self.regen.shape[0] not in (1, self.batch) or self.regen.shape[2:] != x0.shape[2:]:
                raise ValueError(f"mask must be [H, W] or [{self.batch}, H, W] matching the guide, got {mask.shape}")
            self.keep = 1.0 - self.regen
        self.shape = x0.shape[1:]
        self.guide = np.broadcast_to(x0, (self.batch, *self.shape))  # the current repeat's guide
        self.repeat = 1  # 1-based
        self.index = 0  # 0-based position in levels
        self.network_calls = 0
        self.done = False
        self.state: SamplerState = INITIAL_STATE
        self._prepared: tuple[np.ndarray | None, ...] | None = None  # noise drawn ahead for the next advance
        self._buffers: np.ndarray | None = None  # [3, B, C, H, W]: reused every step
        self.x = self._start()

    def _start(self, noise: np.ndarray | None = None) -> np.ndarray:
        """The guide noised to the start level: a new repeat, a new trajectory (no history)."""
        n0 = int(self.levels[0])
        self.state = INITIAL_STATE
        noise = _normal(self.rngs, self.shape) if noise is None else noise
        return (self.schedule.alphas[n0] * self.guide + self.schedule.sigmas[n0] * noise).astype(np.float32, copy=False)

    def _next_draws(self) -> tuple[bool, bool, bool]:
        """Which standard normals the next advance() consumes, in this order: the sampler's,
        the mask's (the kept region re-noised), the next repeat's start."""
        r = int(self.targets[self.index])
        last = self.index == self.steps - 1
        return (self.sampler.needs_noise(r), self.keep is not None and r > 0,
                last and self.repeat < self.params.repeats)

    def noise_tasks(self) -> list[Callable[[], None]]:
        """One task per sample that draws, from that sample's own generator and in its fixed
        order, the noise the next advance() will use. The batch scheduler runs them on other
        threads while the network call is in flight; advance() draws whatever was not drawn.
        Each generator's sequence is the same either way, so outputs do not change."""
        if self._prepared is not None or self.done:
            return []
        draws = self._next_draws()
        if not any(draws):
            return []
        if self._buffers is None:
            self._buffers = np.empty((3, self.batch, *self.shape), dtype=np.float32)
        buffers = self._buffers
        self._prepared = tuple(buffers[i] if wanted else None for i, wanted in enumerate(draws))
        chosen = [i for i, wanted in enumerate(draws) if wanted]

        def task(k: int) -> Callable[[], None]:
            def draw() -> None:
                for i in chosen:
                    self.rngs[k].standard_normal(out=buffers[i, k], dtype=np.float32)
            return draw

        return [task(k) for k in range(self.batch)]

    def _take_noise(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if self._prepared is not None:
            prepared, self._prepared = self._prepared, None
            return prepared  # type: ignore[return-value]
        sampler_draw, mask_draw, start_draw = self._next_draws()
        return (_normal(self.rngs, self.shape) if sampler_draw else None,
                _normal(self.rngs, self.shape) if mask_draw else None,
                _normal(self.rngs, self.shape) if start_draw else None)

    def network_input(self) -> tuple[np.ndarray, np.ndarray]:
        """(x [B, C, H, W], t [B]): what the network is called with for the next step."""
        if self.done:
            raise RuntimeError("the trajectory is finished")
        s = int(self.levels[self.index])
        return self.x, np.full(self.batch, self.schedule.model_times[s], dtype=np.float32)

    def advance(self, eps: np.ndarray) -> StepEvent:
        """Applies one step to the network's answer eps (like x) at network_input()."""
        s, r = int(self.levels[self.index]), int(self.targets[self.index])
        self.network_calls += 1
        c = coefficients(self.schedule, s, r)
        noise, mask_noise, start_noise = self._take_noise()
        out = self.sampler.step(self.x, np.asarray(eps, dtype=np.float32), c, noise, self.state)
        x, self.state = out.prev_sample, out.state
        if self.keep is not None:
            known = c.alpha_r * self.x0 + c.sigma_r * mask_noise if r > 0 else self.x0
            x = (self.regen * x + self.keep * known).astype(np.float32, copy=False)
        step = self.index + 1
        preview = self.params.preview_every and (step % self.params.preview_every == 0 or step == self.steps)
        event = StepEvent(Progress(self.repeat, self.params.repeats, step, self.steps, self.network_calls, self.total_calls),
                          out.pred_original_sample if preview else None)
        self.index += 1
        if self.index == self.steps:  # the repeat ends
            if self.keep is not None:
                x = np.where(self.keep > 0, self.x0, x).astype(np.float32, copy=False)  # bit-exact kept region
            self.guide = x
            if self.repeat == self.params.repeats:
                self.done = True
            else:
                self.repeat += 1
                self.index = 0
                x = self._start(start_noise)
        self.x = x
        return event

    def result(self, network_seconds: float = 0.0) -> EditResult:
        if not self.done:
            raise RuntimeError("the trajectory is not finished")
        return EditResult(samples=np.ascontiguousarray(self.guide), network_calls=self.network_calls,
                          network_seconds=network_seconds)


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
    """Runs SDEdit for len(rngs) samples of one guide, alone (one trajectory, its own calls).

    guide: float32 [C, H, W] in [-1, 1], or [B, C, H, W] (one guide per sample).
    mask: float [H, W] or [B, H, W], 1 = regenerate; or None.
    eps_fn(x [B, C, H, W], t [B]) -> eps [B, C, H, W].
    """
    trajectory = EditTrajectory(schedule, guide, mask, params, rngs)
    network_seconds = 0.0
    while not trajectory.done:
        if should_stop is not None and should_stop():
            raise EditCancelled(f"stopped after {trajectory.network_calls} network calls")
        x, t = trajectory.network_input()
        started = time.perf_counter()
        eps = eps_fn(x, t)
        network_seconds += time.perf_counter() - started
        event = trajectory.advance(eps)
        if on_step is not None:
            on_step(event)
    return trajectory.result(network_seconds)
