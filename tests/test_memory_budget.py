"""No legal request takes the process past its memory budget (issue 10, item 3).

`sdedit serve` runs in a subprocess with a 1.5 GiB budget on the shipped models. For each
model: at its largest accepted size, 16 samples are refused (INVALID_ARGUMENT naming
num_samples, saying how many fit), the number that fits is accepted and runs, one more is
refused again; the server's peak resident memory (VmHWM, read from /proc) stays within the
budget throughout. Without the budget (before the fix) 256x256 x 16 samples on `digits`
took the process past 9 GB.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from sdedit.v1 import sdedit_pb2 as pb
from service.client import Client, build_request
from service.config import PROJECT_ROOT
from service.testing.servers import peak_rss_mib
from tests.helpers import ServerFactory, image_bytes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BUDGET_MIB = 1536  # leaves ~1.2 GiB for edits: one 256x256 sample of digits (~0.8 GiB estimated)



def noisy_png(width: int, height: int, channels: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return image_bytes(pixels[:, :, 0] if channels == 1 else pixels)


@pytest.fixture(scope="module")
def budgeted_server(tmp_path_factory):
    with ServerFactory(PROJECT_ROOT / "model_repository", logs=tmp_path_factory.mktemp("logs")) as start:
        yield start.process("--memory-budget-mib", str(BUDGET_MIB), "--cache", "none", "--max-active-edits", "1", wait=120)


def models(address: str) -> list[pb.ModelInfo]:
    with Client(address) as client:
        return list(client.list_models())


def test_the_largest_legal_request_of_every_shipped_model_stays_within_the_budget(budgeted_server):
    report = {}
    for info in models(budgeted_server.address):
        width, height = info.max_width, info.max_height
        image = noisy_png(width, height, info.channels)
        with Client(budgeted_server.address) as client:
            try:
                response = client.edit(build_request(image, model=info.name, t0=0.3, steps=2, seed=1, num_samples=16), timeout=600)
                fit = 16  # max_num_samples: the whole range is legal at this size
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most" in refused.details(), refused.details()
                fit = int(re.search(r"at most (\d+) fit", refused.details()).group(1))
                response = client.edit(build_request(image, model=info.name, t0=0.3, steps=2, seed=1, num_samples=fit), timeout=600)
                with pytest.raises(grpc.RpcError) as over:
                    client.edit(build_request(image, model=info.name, t0=0.3, steps=1, seed=1, num_samples=fit + 1), timeout=300)
                assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(response.images) == fit
        report[info.name] = (f"{width}x{height}", fit, round(peak_rss_mib(budgeted_server.process.pid)))
    print("\nmodel: largest size, samples that fit, peak RSS MiB so far:", report)
    assert peak_rss_mib(budgeted_server.process.pid) <= BUDGET_MIB, report
