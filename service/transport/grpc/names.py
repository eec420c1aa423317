"""The API's enum values for the names the service uses, made from the service's own tables
(service/sde/samplers.py SAMPLERS, service/sde/schedules.py SPACINGS): the proto mapping, the
client, the CLI and the load client all read these, so a sampler added to the table is known
everywhere at once. An entry with no enum value of the same name (SAMPLER_<NAME>) fails here,
at import; tests/test_proto.py checks that no enum value lacks an entry."""

from __future__ import annotations

from sdedit.v1 import sdedit_pb2 as pb
from service.sde.samplers import SAMPLERS
from service.sde.schedules import SPACINGS


def _enum_values(enum, prefix: str, names: tuple[str, ...]) -> dict[str, int]:
    return {name: enum.Value(f"{prefix}_{name.upper()}") for name in names}


SAMPLER_ENUMS = _enum_values(pb.Sampler, "SAMPLER", SAMPLERS)  # name -> enum value
SPACING_ENUMS = _enum_values(pb.Spacing, "SPACING", SPACINGS)
SAMPLER_NAMES = {pb.SAMPLER_UNSPECIFIED: "", **{value: name for name, value in SAMPLER_ENUMS.items()}}  # "" = the default
SPACING_NAMES = {pb.SPACING_UNSPECIFIED: "", **{value: name for name, value in SPACING_ENUMS.items()}}
