"""The SDEdit math: noise schedules, samplers and the editing engine. numpy only, no I/O.

Notation (Meng et al. 2021, Ho et al. 2020): images live in [-1, 1]; a noise *level* k of a
schedule has x_k = alpha_k * x_0 + sigma_k * eps. Level 0 is the clean image (alpha = 1,
sigma = 0); levels 1..N are the network's timesteps. The network predicts eps.
"""

from service.sde.engine import EditCancelled, EditParams, EditResult, EditTrajectory, Progress, StepEvent, run_sdedit
from service.sde.noise import GaussianNoise
from service.sde.samplers import SAMPLERS, Sampler, get_sampler
from service.sde.schedules import NoiseSchedule, SDESpec, build_schedule

# The version of this package's outputs: part of every result cache key. Bump it in the
# change that makes any edit give other samples for the same inputs and seed (a sampler's
# update, a schedule, the masking, how the noise is drawn), so no replica serves results
# of the old code as if they were the new code's.
ENGINE_VERSION = 2  # 2: the noise is drawn by Box-Muller (service/sde/noise.py), no longer numpy's ziggurat

__all__ = [
    "ENGINE_VERSION",
    "SAMPLERS",
    "EditCancelled",
    "EditParams",
    "EditResult",
    "EditTrajectory",
    "GaussianNoise",
    "NoiseSchedule",
    "Progress",
    "SDESpec",
    "Sampler",
    "StepEvent",
    "build_schedule",
    "get_sampler",
    "run_sdedit",
]
