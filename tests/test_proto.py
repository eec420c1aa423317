"""The committed generated code is exactly what scripts/gen_proto.py makes from the proto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_tools import protoc

from service.testing.servers import ROOT


def test_generated_code_matches_the_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen_proto = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = gen_proto
    spec.loader.exec_module(gen_proto)
    generated = gen_proto.generate(tmp_path)
    assert {p.name for p in generated} == {"__init__.py", "sdedit_pb2.py", "sdedit_pb2.pyi", "sdedit_pb2_grpc.py"}
    for path in generated:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run `make proto`"


def compile_from_proto_alone(out: Path, *files: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """protoc with proto/ as its only include path (besides its own well-known types): each
    file compiled with its imports, by name."""
    wellknown = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*, bundled with every protoc
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{wellknown}", "--include_imports", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, *(str(ROOT / "proto" / f) for f in files)]) == 0, "protoc failed (output above)"
    return {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}


def test_the_api_compiles_from_proto_alone(tmp_path):
    compiled = compile_from_proto_alone(tmp_path / "api.pb", "sdedit/v1/sdedit.proto")
    assert set(compiled) == {"sdedit/v1/sdedit.proto", "google/rpc/status.proto", "google/protobuf/any.proto",
                             "google/protobuf/timestamp.proto"}


@pytest.mark.parametrize("module", [status_pb2, error_details_pb2, code_pb2], ids=lambda m: m.__name__)
def test_the_shipped_google_rpc_protos_describe_what_the_service_runs_with(tmp_path, module):
    """proto/google/rpc/ is a copy of googleapis' files: the same messages, fields and options
    as the googleapis-common-protos package the service encodes its errors with."""
    name = module.DESCRIPTOR.name
    assert (ROOT / "proto" / name).read_text().startswith("// Copyright")
    assert "Apache License, Version 2.0" in (ROOT / "proto" / name).read_text()
    running = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(running)
    shipped = compile_from_proto_alone(tmp_path / "rpc.pb", name)[name]
    messages = list(shipped.message_type)
    while messages:  # a descriptor set adds each field's json_name, which the generated module leaves out
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    assert shipped == running


def test_package_is_versioned():
    from sdedit.v1 import sdedit_pb2

    assert sdedit_pb2.DESCRIPTOR.package == "sdedit.v1"
    assert set(sdedit_pb2.DESCRIPTOR.services_by_name["ImageEditor"].methods_by_name) == {
        "Edit", "StreamEdit", "ListModels", "SubmitEdit", "GetJob", "WatchJob", "CancelJob", "ListJobs"}


def test_every_enum_value_of_the_api_has_a_name_in_the_service_tables():
    """Samplers and spacings come from one table each (service/sde); the API's enums map onto
    them both ways, so a sampler added to one and not the other fails here."""
    from sdedit.v1 import sdedit_pb2 as pb
    from service.sde.samplers import SAMPLERS
    from service.sde.schedules import SPACINGS
    from service.transport.grpc.names import SAMPLER_NAMES, SPACING_NAMES

    assert set(SAMPLER_NAMES) == set(pb.Sampler.values()) and set(SPACING_NAMES) == set(pb.Spacing.values())
    assert sorted(name for name in SAMPLER_NAMES.values() if name) == sorted(SAMPLERS)
    assert sorted(name for name in SPACING_NAMES.values() if name) == sorted(SPACINGS)


def test_the_cli_and_the_client_offer_the_table_s_samplers():
    from service.cli import build_parser
    from service.client import SAMPLERS as CLIENT_SAMPLERS
    from service.sde.samplers import SAMPLERS

    edit = build_parser()._subparsers._group_actions[0].choices["edit"]
    choices = next(a.choices for a in edit._actions if a.dest == "sampler")
    assert tuple(choices) == SAMPLERS and tuple(name for name in CLIENT_SAMPLERS if name) == SAMPLERS
