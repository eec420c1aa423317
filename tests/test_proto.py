"""The committed generated code is exactly what scripts/gen_proto.py makes from the proto."""

from __future__ import annotations

import importlib.util
import sys

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


def test_package_is_versioned():
    from sdedit.v1 import sdedit_pb2

    assert sdedit_pb2.DESCRIPTOR.package == "sdedit.v1"
    assert set(sdedit_pb2.DESCRIPTOR.services_by_name["ImageEditor"].methods_by_name) == {
        "Edit", "StreamEdit", "ListModels", "SubmitEdit", "GetJob", "WatchJob", "CancelJob", "ListJobs"}
