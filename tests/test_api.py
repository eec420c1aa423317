"""The gRPC API end to end against a real in-process server and real ONNX oracle models."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client import Client, build_request
from service.pipeline.imaging import decode_npy
from service.server import server_options
from service.testing.servers import health_status, wait_for
from tests.helpers import bad_fields, image_bytes, png
from tests.models_for_tests import counting


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- masks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("repeats", [1, 2])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_masked_edit_keeps_every_unmasked_pixel_bit_identical(server, guide16, mask16, sampler, repeats):
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide16), mask=png(mask16), t0=0.7, steps=30, repeats=repeats,
                                             sampler=sampler, seed=11, num_samples=3))
    keep = mask16 == 0
    for image in response.images:
        out = decode_png(image.data)
        assert out.shape == guide16.shape
        np.testing.assert_array_equal(out[keep], guide16[keep])
        assert (out[~keep] != guide16[~keep]).mean() > 0.5  # the masked region really was regenerated


def test_masked_edit_float_output_keeps_the_guide_exactly(server, guide16, mask16):
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide16), mask=png(mask16), t0=0.5, steps=10, seed=1, npy=True))
    out = decode_npy(response.images[0].data)
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    expected = guide16.astype(np.float32) / np.float32(127.5) - np.float32(1)
    np.testing.assert_array_equal(out[0][mask16 == 0], expected[mask16 == 0])


def test_masked_edit_of_a_colour_jpeg_keeps_the_decoded_pixels(server):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    jpeg = image_bytes(rgb, "JPEG", quality=80)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    with Client(server.address) as client:
        response = client.edit(build_request(jpeg, mask=png(mask), t0=0.5, steps=10, seed=5, model="gauss-rgb"))
    out = decode_png(response.images[0].data)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[:, :8], decoded[:, :8])


def test_mask_conditions_the_regenerated_region(server):
    """Mixture of two flat images (+0.8 / -0.8): regenerating the left half of a +0.8 image
    must give +0.8-like pixels, because the kept half pins the component."""
    guide = np.full((8, 8), int((0.8 + 1) * 127.5), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide), mask=png(mask), t0=1.0, seed=0, num_samples=8, model="mix", npy=True))
    regenerated = np.stack([decode_npy(i.data)[0][:, :4] for i in response.images])
    assert regenerated.mean() > 0.5


# --- seeds and determinism -------------------------------------------------------------------
# These tests run on a server without a result cache: through the cache, a repeated seeded
# request is answered with the first response's bytes, so "the same seed gives the same
# output" would hold even for a nondeterministic engine. Each response must say cached=False.


@pytest.fixture(scope="module")
def uncached_server(make_module_server):
    """A server of this module's own with no result cache: every edit is computed."""
    return make_module_server(max_active_edits=2, cache="none")


def computed(*responses: pb.EditResponse) -> bool:
    """True when no response came from the result cache (or a shared identical edit)."""
    return not any(r.cached for r in responses)


def test_same_seed_same_bytes_and_each_sample_seed_reproduces_it_alone(uncached_server, guide16):
    with Client(uncached_server.address) as client:
        first = client.edit(build_request(png(guide16), t0=0.6, steps=20, seed=123, num_samples=4))
        again = client.edit(build_request(png(guide16), t0=0.6, steps=20, seed=123, num_samples=4))
        other = client.edit(build_request(png(guide16), t0=0.6, steps=20, seed=999, num_samples=4))
        alone = client.edit(build_request(png(guide16), t0=0.6, steps=20, seed=first.images[2].seed, num_samples=1))
    assert computed(first, again, other, alone)  # "again" was computed again, not read back
    assert [i.seed for i in first.images] == [123, 124, 125, 126]
    assert [i.data for i in first.images] == [i.data for i in again.images]
    assert all(a.data != b.data for a, b in zip(first.images, other.images))
    assert len({i.data for i in first.images}) == 4
    assert alone.images[0].data == first.images[2].data


def test_float_outputs_are_bit_identical_for_the_same_seed(uncached_server, guide16):
    with Client(uncached_server.address) as client:
        a = client.edit(build_request(png(guide16), t0=0.8, steps=15, seed=2**64 - 1, num_samples=2, npy=True))
        b = client.edit(build_request(png(guide16), t0=0.8, steps=15, seed=2**64 - 1, num_samples=2, npy=True))
    assert computed(a, b)
    assert [i.seed for i in a.images] == [2**64 - 1, 0]  # seed + i wraps mod 2^64
    for x, y in zip(a.images, b.images):
        assert decode_npy(x.data).tobytes() == decode_npy(y.data).tobytes()


def test_unseeded_requests_get_random_seeds(server, guide16):
    with Client(server.address) as client:
        a = client.edit(build_request(png(guide16), t0=0.5, steps=5))
        b = client.edit(build_request(png(guide16), t0=0.5, steps=5))
    assert a.images[0].seed != b.images[0].seed
    assert a.images[0].data != b.images[0].data


# --- response contents ----------------------------------------------------------------------

def test_response_reports_network_calls_parameters_and_timings(uncached_server, guide16):
    """On the shared, cached server this depended on test order: once any earlier test had sent
    the same seeded request, the answer came from the cache (cached=True, every timing 0)."""
    with Client(uncached_server.address) as client:
        response = client.edit(build_request(png(guide16), t0=0.5, steps=0, repeats=2, seed=1))
        models = {m.name: m for m in client.list_models()}
    assert not response.cached
    # steps = 0: the model's default edit (default_steps = 20, DPM-Solver++(2M) SDE, logSNR-uniform)
    assert response.network_calls == 2 * 20
    assert (response.steps, response.repeats, response.sampler, response.spacing) == (
        20, 2, pb.SAMPLER_DPMPP_2M_SDE, pb.SPACING_LOGSNR_UNIFORM)
    assert response.model == "gauss" and response.model_hash == models["gauss"].content_hash
    t = response.timings
    assert 0 < t.network_seconds <= t.sde_seconds <= t.total_seconds
    assert t.decode_seconds > 0 and t.encode_seconds > 0 and t.queue_seconds >= 0


def test_full_schedule_is_every_level_with_the_reference_sampler(server, guide16):
    with Client(server.address) as client:
        full = client.edit(build_request(png(guide16), t0=0.2, full_schedule=True, seed=1))
        explicit = client.edit(build_request(png(guide16), t0=0.2, steps=200, sampler="ddpm", spacing="time_uniform", seed=1))
        ve = client.edit(build_request(png(guide16), t0=0.1, full_schedule=True, seed=1, model="gauss-ve"))
        with pytest.raises(grpc.RpcError) as info:
            client.edit(build_request(png(guide16), t0=0.2, steps=5, full_schedule=True))
    assert (full.steps, full.network_calls, full.sampler, full.spacing) == (200, 200, pb.SAMPLER_DDPM, pb.SPACING_TIME_UNIFORM)
    assert full.images[0].data == explicit.images[0].data  # the same edit: steps = n0 with DDPM
    assert (ve.network_calls, ve.sampler) == (100, pb.SAMPLER_EULER_MARUYAMA)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "steps" in info.value.details()


def test_ve_model_defaults_to_dpm_solver_and_refuses_diverging_euler_maruyama(server, guide16):
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide16), t0=0.3, steps=10, seed=1, model="gauss-ve"))
        assert response.sampler == pb.SAMPLER_DPMPP_2M_SDE and response.network_calls == 10
        # t0 = 1 in 5 steps: Euler-Maruyama's variance would be 17x the data's (issue 11)
        with pytest.raises(grpc.RpcError) as info:
            client.edit(build_request(png(guide16), t0=1.0, steps=5, sampler="euler_maruyama", model="gauss-ve"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "steps" in info.value.details() and "use at least" in info.value.details()
        fine = client.edit(build_request(png(guide16), t0=0.3, steps=10, sampler="euler_maruyama", seed=1, model="gauss-ve"))
    assert fine.sampler == pb.SAMPLER_EULER_MARUYAMA and fine.network_calls == 10


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"])
@pytest.mark.parametrize("spacing", ["time_uniform", "logsnr_uniform", "karras"])
def test_every_sampler_and_spacing_keeps_the_unmasked_region_bit_exact(server, guide16, mask16, sampler, spacing):
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide16), mask=png(mask16), t0=0.6, steps=8, repeats=2, seed=3,
                                             sampler=sampler, spacing=spacing))
    out = decode_png(response.images[0].data)
    assert np.array_equal(out[mask16 == 0], guide16[mask16 == 0])
    assert response.network_calls == 16 and response.sampler == getattr(pb, f"SAMPLER_{sampler.upper()}")


def test_list_models(server):
    with Client(server.address) as client:
        models = {m.name: m for m in client.list_models()}
    assert set(models) == {"gauss", "gauss-ve", "mix", "gauss-rgb"}
    gauss = models["gauss"]
    assert (gauss.width, gauss.height, gauss.channels, gauss.sde_type, gauss.timesteps) == (16, 16, 1, "vp_discrete", 1000)
    assert gauss.is_default and not models["mix"].is_default
    assert gauss.default_steps == 20 and gauss.flexible_size and not models["gauss-ve"].flexible_size
    assert (gauss.default_sampler, gauss.default_spacing) == (pb.SAMPLER_DPMPP_2M_SDE, pb.SPACING_LOGSNR_UNIFORM)
    assert gauss.reference_sampler == pb.SAMPLER_DDPM and models["gauss-ve"].reference_sampler == pb.SAMPLER_EULER_MARUYAMA
    assert models["gauss-ve"].sde_type == "ve" and models["gauss-rgb"].channels == 3
    assert len({m.content_hash for m in models.values()}) == 4 and all(len(m.content_hash) == 64 for m in models.values())


def test_flexible_size_model_accepts_other_sizes(server):
    guide = np.zeros((24, 40), dtype=np.uint8)
    with Client(server.address) as client:
        response = client.edit(build_request(png(guide), t0=0.3, steps=3, seed=1))
    assert decode_png(response.images[0].data).shape == (24, 40)


def test_stream_edit_sends_progress_previews_then_the_same_result_as_edit(uncached_server, guide16):
    request = build_request(png(guide16), t0=0.5, steps=12, repeats=2, seed=8, num_samples=2, preview_every=5,
                            npy=True)  # float output: equal results, not only equal after rounding to uint8
    with Client(uncached_server.address) as client:
        events = list(client.stream_edit(request))
        unary = client.edit(request)
    assert computed(events[-1].result, unary)  # both computed: the unary edit is not the stream's cached result
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    steps = [e.progress if e.WhichOneof("event") == "progress" else e.preview.progress for e in events[:-1]]
    assert [p.network_calls for p in steps] == list(range(1, 25))
    assert all(p.total_network_calls == 24 and p.steps == 12 and p.repeats == 2 for p in steps)
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [(p.progress.repeat, p.progress.step) for p in previews] == [(1, 5), (1, 10), (1, 12), (2, 5), (2, 10), (2, 12)]
    assert all(len(p.images) == 2 and decode_png(p.images[0].data).shape == (16, 16) for p in previews)
    assert [i.data for i in events[-1].result.images] == [i.data for i in unary.images]


def test_previews_are_encoded_off_the_scheduler_threads_and_reach_the_reader_unchanged(make_server, monkeypatch):
    """A preview-heavy stream (a preview every step) next to a batch-mate without previews:
    no preview PNG is encoded on a batch scheduler's thread (the tick every edit of the call
    waits for), and the stream's events are the ones it gets alone, in order, bytes equal."""
    import service.pipeline.progress as progress

    encoded_on: list[str] = []
    real = progress.encode_png

    def recording(pixels):
        encoded_on.append(threading.current_thread().name)
        return real(pixels)

    monkeypatch.setattr(progress, "encode_png", recording)
    srv = make_server(cache="none")
    guide = png(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8))
    heavy = build_request(guide, t0=0.6, steps=30, seed=5, num_samples=2, preview_every=1)

    def content(events):
        return [(e.WhichOneof("event"), e.preview.progress.step, [i.data for i in e.preview.images]) for e in events]

    with Client(srv.address) as client:
        alone = list(client.stream_edit(heavy))
        mate = client.stream_edit(build_request(guide, t0=0.6, steps=200, seed=6))  # same shape: shares the calls
        next(iter(mate))
        together = list(client.stream_edit(heavy))
        mate.cancel()
    assert [e.WhichOneof("event") for e in together] == ["preview"] * 30 + ["result"]
    assert [e.preview.progress.step for e in together[:-1]] == list(range(1, 31))
    assert content(together) == content(alone) and together[-1].result.images == alone[-1].result.images
    assert len(encoded_on) >= 2 * 2 * 30  # two samples, every step, twice
    on_scheduler = [name for name in encoded_on if name.startswith(("sdedit-batch-", "sdedit-steps-"))]
    assert not on_scheduler, f"{len(on_scheduler)} of {len(encoded_on)} previews encoded on the scheduler's threads"


def test_health_and_reflection(server):
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server.address, "sdedit.v1.ImageEditor") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"sdedit.v1.ImageEditor", "grpc.health.v1.Health"} <= names


# --- bad requests -------------------------------------------------------------------------------

def _truncated_png() -> bytes:
    data = png(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8))
    return data[: len(data) // 2]


def _gif() -> bytes:
    return image_bytes(np.zeros((16, 16), dtype=np.uint8), "GIF")


def _jpeg_mask() -> bytes:
    return image_bytes(np.full((16, 16), 255, dtype=np.uint8), "JPEG")


G = png(np.zeros((16, 16), dtype=np.uint8))
WHITE = png(np.full((16, 16), 255, dtype=np.uint8))
BAD_REQUESTS = {
    "empty image": (dict(image=b""), "image"),
    "not an image": (dict(image=b"hello, world"), "image"),
    "truncated png": (dict(image=_truncated_png()), "image"),
    "gif": (dict(image=_gif()), "image"),
    "png header then garbage": (dict(image=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "image"),
    "size mismatch": (dict(image=png(np.zeros((20, 20), np.uint8)), model="gauss-ve"), "image"),
    "over the pixel limit": (dict(image=png(np.zeros((1100, 1000), np.uint8))), "image"),
    "mask size mismatch": (dict(mask=png(np.full((8, 8), 255, np.uint8))), "mask"),
    "jpeg mask": (dict(mask=_jpeg_mask()), "mask"),
    "corrupt mask": (dict(mask=b"\x89PNG\r\n\x1a\nnonsense"), "mask"),
    "bytes after the png's IEND": (dict(image=G + b"\x00" * 1024), "image"),
    "bytes after the mask's IEND": (dict(mask=WHITE + b"IEND"), "mask"),
    "mask selects nothing": (dict(mask=png(np.zeros((16, 16), np.uint8))), "mask"),
    "t0 missing (0)": (dict(t0=0.0), "t0"),
    "t0 negative": (dict(t0=-0.25), "t0"),
    "t0 above 1": (dict(t0=1.5), "t0"),
    "t0 nan": (dict(t0=float("nan")), "t0"),
    "steps above the levels at t0": (dict(t0=0.1, steps=101), "steps"),
    "repeats over the limit": (dict(repeats=11), "repeats"),
    "unknown model": (dict(model="no-such-model"), "model"),
    "unknown sampler value": (dict(sampler=42), "sampler"),
    "eta above 1": (dict(sampler=pb.SAMPLER_DDIM, eta=1.5), "eta"),
    "eta with ddpm": (dict(sampler=pb.SAMPLER_DDPM, eta=0.5), "eta"),
    "num_samples over the limit": (dict(num_samples=17), "num_samples"),
    "unknown output format": (dict(output_format=7), "output_format"),
    "request_id too long": (dict(request_id="x" * 129), "request_id"),
    "request_id not printable": (dict(request_id="a\nb"), "request_id"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_is_invalid_argument_naming_the_field(server, case):
    overrides, field = BAD_REQUESTS[case]
    fields = dict(image=G, mask=WHITE, t0=0.5, steps=5, seed=1) | overrides
    request = pb.EditRequest(**{k: v for k, v in fields.items() if k != "seed"}, seed=fields["seed"])
    for call in ("edit", "stream_edit"):
        with Client(server.address) as client, pytest.raises(grpc.RpcError) as raised:
            result = getattr(client, call)(request, timeout=30)
            if call == "stream_edit":
                list(result)
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, error.details())
        assert error.details().startswith(f"{field}: "), error.details()
        violations = bad_fields(error)
        assert violations == [field]


def test_server_keeps_serving_after_every_bad_request(server, guide16):
    with Client(server.address) as client:
        for overrides, _ in BAD_REQUESTS.values():
            fields = dict(image=G, mask=WHITE, t0=0.5, steps=5) | overrides
            with pytest.raises(grpc.RpcError):
                client.edit(pb.EditRequest(**fields), timeout=30)
        response = client.edit(build_request(png(guide16), t0=0.5, steps=5, seed=1))
    assert len(response.images) == 1
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING


# --- cancellation, deadlines, admission -----------------------------------------------------------

def test_client_cancel_stops_the_loop_within_one_step(make_server, guide16):
    wrap = counting(delay=0.05)
    srv = make_server(wrap_model=wrap)
    model = wrap.models["gauss"]
    with Client(srv.address) as client:
        call = client.stream_edit(build_request(png(guide16), t0=0.5, steps=200, seed=1))
        for event in call:
            if event.progress.network_calls >= 5:
                break
        cancelled_at = time.monotonic()
        call.cancel()
    wait_for(lambda: srv.service.admission.in_flight == 0, 5, what="slot freed")
    calls = model.calls
    time.sleep(0.3)
    assert model.calls == calls, "the loop kept calling the network after the cancel"
    started_after_cancel = sum(t > cancelled_at for t in model.call_times)
    assert started_after_cancel <= 1, f"{started_after_cancel} network calls started after the cancel"
    assert calls < 20


def test_deadline_stops_the_loop_and_frees_the_slot(make_server, guide16):
    wrap = counting(delay=0.05)
    srv = make_server(wrap_model=wrap)
    with Client(srv.address) as client, pytest.raises(grpc.RpcError) as raised:
        client.edit(build_request(png(guide16), t0=0.5, steps=200, seed=1), timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline_at = time.monotonic()
    wait_for(lambda: srv.service.admission.in_flight == 0, 5, what="slot freed")
    assert sum(t > deadline_at + 0.06 for t in wrap.models["gauss"].call_times) == 0
    assert wrap.models["gauss"].calls < 20


def test_each_network_call_is_bounded_by_the_earliest_deadline_of_its_edits(make_server, guide16):
    """The deadline of a served edit reaches the backend's predict_eps on every call it is in
    (a remote backend bounds its call by it), also when it shares the call with an edit that
    has none; an edit without a deadline alone calls with None."""
    wrap = counting(delay=0.01)
    srv = make_server(wrap_model=wrap)
    model = wrap.models["gauss"]
    with Client(srv.address) as client:
        endless = client.stream_edit(build_request(png(guide16), t0=0.5, steps=400, seed=1))  # no deadline
        for event in endless:
            if event.progress.network_calls >= 3:
                break
        sent = time.monotonic()
        response = client.edit(build_request(png(guide16), t0=0.5, steps=5, seed=2), timeout=20)
        answered = time.monotonic()
        endless.cancel()
    assert len(response.images) == 1
    wait_for(lambda: srv.service.admission.in_flight == 0, 5, what="both edits left")
    calls = list(zip(model.call_times, model.deadlines))
    assert all(deadline is None for at, deadline in calls if at < sent), "an edit without a deadline called with one"
    bounded = [deadline for at, deadline in calls if deadline is not None]
    assert len(bounded) >= 5, f"the edit with a deadline made {len(bounded)} calls with it (of its 5)"
    assert all(sent + 19 <= deadline <= answered + 21 for deadline in bounded), (sent, bounded)  # gRPC rounds up


def test_full_queue_answers_resource_exhausted(make_server, guide16):
    wrap = counting(delay=0.02)
    srv = make_server(wrap_model=wrap, max_active_edits=1, max_queue=1)
    results: list = [None] * 4

    def send(i: int) -> None:
        with Client(srv.address) as client:
            try:  # distinct seeds: identical requests would share one edit (single-flight)
                results[i] = client.edit(build_request(png(guide16), t0=0.5, steps=40, seed=i), timeout=30)
            except grpc.RpcError as exc:
                results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(refused) == 2 and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert all("retry later" in r.details() for r in refused)
    assert sum(isinstance(r, pb.EditResponse) for r in results) == 2


def _connection_states_during_an_edit(srv, request) -> tuple[list, pb.EditResponse]:
    """The client channel's connectivity states, from before the edit until its end."""
    states: list = []
    with grpc.insecure_channel(srv.address) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        response = sdedit_pb2_grpc.ImageEditorStub(channel).Edit(request, timeout=30)
        channel.unsubscribe(states.append)
    return states, response


def test_max_connection_age_recycles_connections_without_cutting_an_edit(make_server, guide16):
    """A client's long-lived HTTP/2 connection is closed (GOAWAY) after the age, so it reconnects
    and may land on another replica; the edit running on it, longer than the age, completes."""
    wrap = counting(delay=0.01)  # 100 calls: an edit of >= 1 s, twice the age
    aged = make_server(wrap_model=wrap, max_connection_age_seconds=0.5)
    assert ("grpc.max_connection_age_ms", 500) in server_options(aged.settings)
    request = build_request(png(guide16), t0=0.5, steps=100, seed=1)
    states, response = _connection_states_during_an_edit(aged, request)
    assert response.network_calls == 100
    ready = states.index(grpc.ChannelConnectivity.READY)
    assert grpc.ChannelConnectivity.IDLE in states[ready:], states  # the server closed the connection

    plain = make_server(wrap_model=counting(delay=0.01))  # default: connections live on
    states, _ = _connection_states_during_an_edit(plain, request)
    assert states[-1] == grpc.ChannelConnectivity.READY and states.count(grpc.ChannelConnectivity.READY) == 1, states


def test_draining_finishes_admitted_edits_and_refuses_new_ones(make_server, guide16):
    wrap = counting(delay=0.02)
    srv = make_server(wrap_model=wrap, grace_seconds=30)
    request = build_request(png(guide16), t0=0.5, steps=60, seed=1)
    outcome: dict = {}

    def long_edit() -> None:
        with Client(srv.address) as client:
            outcome["response"] = client.edit(request, timeout=30)

    thread = threading.Thread(target=long_edit)
    thread.start()
    wait_for(lambda: wrap.models["gauss"].calls > 3, 10, what="edit started")
    import asyncio

    drain = asyncio.run_coroutine_threadsafe(srv.running.drain_and_stop(30), srv.loop)
    wait_for(lambda: srv.service.admission.draining, 5, what="draining")
    assert health_status(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with Client(srv.address) as client, pytest.raises(grpc.RpcError) as raised:
        client.edit(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert drain.result(40) is True
    thread.join(10)
    assert outcome["response"].network_calls == 60
