"""Step-level batching (service/batching/): edits of one shape share one network call per
step, and a sample's output does not depend on the batch it ran in."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from service.backends.onnx import OnnxScoreModel
from service.batching import BatchScheduler, CallCosts, SplitState, TickStats, Waiting, decide_split, fair_share
from service.client import Client, build_request
from service.config import PROJECT_ROOT
from service.errors import DeadlineExceeded
from service.pipeline.imaging import decode_npy
from service.sde import EditCancelled, EditParams, EditTrajectory, build_schedule, run_sdedit
from tests.helpers import png
from tests.metrics_scrape import scrape, value

# Mixed requests in one batch: t0, steps, samplers, spacings, masks, repeats and sample counts.
MIXED = [
    (EditParams(t0=0.5, steps=7, sampler="ddpm"), False, 1),
    (EditParams(t0=0.3, steps=4, sampler="ddim"), True, 2),
    (EditParams(t0=0.8, steps=9, sampler="dpmpp_2m_sde", spacing="logsnr_uniform", repeats=2), True, 1),
    (EditParams(t0=0.6, steps=5, sampler="dpmpp_2m", spacing="karras"), False, 3),
    (EditParams(t0=0.4, steps=3, sampler="ddim", eta=0.5, repeats=3), False, 1),
    (EditParams(t0=1.0, steps=6, sampler="dpmpp_2m_sde"), True, 2),
]


def trajectories(model: OnnxScoreModel, seed: int = 0) -> list[EditTrajectory]:
    info = model.info
    rng = np.random.default_rng(seed)
    schedule = build_schedule(info.sde)
    built = []
    for index, (params, masked, samples) in enumerate(MIXED):
        guide = rng.uniform(-1, 1, (info.channels, info.height, info.width)).astype(np.float32)
        mask = (rng.random((info.height, info.width)) < 0.5).astype(np.float32) if masked else None
        rngs = [np.random.default_rng(1000 * index + k) for k in range(samples)]
        built.append(EditTrajectory(schedule, guide, mask, params, rngs))
    return built


def alone(model: OnnxScoreModel, trajectory: EditTrajectory) -> np.ndarray:
    while not trajectory.done:
        trajectory.advance(model.predict_eps(*trajectory.network_input()))
    return trajectory.result().samples


def batched(model: OnnxScoreModel, built: list[EditTrajectory], max_batch: int = 64,
            pipeline_depth: int = 1) -> tuple[list[np.ndarray], list[TickStats]]:
    ticks: list[TickStats] = []
    scheduler = BatchScheduler("test", model.predict_eps, max_batch, on_tick=ticks.append, pipeline_depth=pipeline_depth)
    try:
        futures = [scheduler.submit(t) for t in built]
        return [f.result(60).samples for f in futures], ticks
    finally:
        scheduler.close()


@pytest.fixture(scope="module")
def gauss(oracle_repository) -> OnnxScoreModel:
    return OnnxScoreModel(oracle_repository / "gauss")


@pytest.fixture(scope="module")
def digits() -> OnnxScoreModel:
    return OnnxScoreModel(PROJECT_ROOT / "model_repository" / "digits")


def test_the_trajectory_alone_is_run_sdedit(gauss):
    """The state machine the scheduler drives is the engine's own loop, bit for bit."""
    for index, trajectory in enumerate(trajectories(gauss)):
        params, masked, samples = MIXED[index]
        fresh = trajectories(gauss)[index]
        expected = run_sdedit(gauss.predict_eps, fresh.schedule, fresh.x0[0], None if not masked else fresh.regen[0, 0],
                              params, [np.random.default_rng(1000 * index + k) for k in range(samples)]).samples
        np.testing.assert_array_equal(alone(gauss, trajectory), expected)


def test_mixed_edits_batched_are_bit_identical_to_each_alone_on_an_exact_score_model(gauss):
    solo = [alone(gauss, t) for t in trajectories(gauss)]
    together, ticks = batched(gauss, trajectories(gauss))
    for a, b in zip(solo, together):
        np.testing.assert_array_equal(a, b)
    total_calls = sum(p.steps * p.repeats for p, _, _ in MIXED)
    assert len(ticks) < total_calls / 2  # calls were shared
    assert max(t.edits for t in ticks) == len(MIXED) and max(t.images for t in ticks) == sum(n for _, _, n in MIXED)


def test_mixed_edits_batched_match_each_alone_on_the_unet_within_1e_4(digits):
    solo = [alone(digits, t) for t in trajectories(digits)]
    together, _ = batched(digits, trajectories(digits))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(solo, together))
    assert worst <= 1e-4, worst


def test_edits_beyond_the_batch_wait_oldest_first_and_all_finish(gauss):
    """max_batch_images 3: six single-sample edits of 2, 6, 3, 5, 4 and 1 calls. Oldest first:
    0, 1, 2 run; 0 leaves after tick 2 and 3 joins; 2 leaves after tick 3 and 4 joins; 1 leaves
    after tick 6 and 5, the newest, joins: 21 calls in 7 full ticks, none starves."""
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)
    lengths = [2, 6, 3, 5, 4, 1]
    built = [EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=n, sampler="ddim"), [np.random.default_rng(i)])
             for i, n in enumerate(lengths)]
    ticks: list[TickStats] = []
    finished: list[int] = []
    scheduler = BatchScheduler("fair", gauss.predict_eps, 3, on_tick=ticks.append)
    try:
        with scheduler._wake:  # every edit is queued before the first tick chooses
            futures = [scheduler.submit(t) for t in built]
            for i, f in enumerate(futures):
                f.add_done_callback(lambda _, i=i: finished.append(i))
        assert [f.result(30).network_calls for f in futures] == lengths
    finally:
        scheduler.close()
    assert [t.images for t in ticks] == [3] * 7
    assert finished[:3] == [0, 2, 1] and sorted(finished[3:]) == [3, 4, 5]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_cancelled_edit_leaves_before_the_next_call_and_the_others_go_on(gauss, depth):
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)
    long = EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=50, sampler="ddpm"), [np.random.default_rng(1)])
    other = EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=20, sampler="ddpm"), [np.random.default_rng(2)])
    stop = threading.Event()

    def slow(x, t, deadline=None):
        time.sleep(0.01)
        return gauss.predict_eps(x, t)

    scheduler = BatchScheduler("cancel", slow, 8, pipeline_depth=depth)
    scheduler.costs = FixedCosts(0.0)  # depth 2: always two groups, so `long` is alone in its calls
    try:
        cancelled = scheduler.submit(long, should_stop=stop.is_set)
        kept = scheduler.submit(other)
        while long.network_calls < 3:
            time.sleep(0.001)
        stop.set()
        with pytest.raises(EditCancelled):
            cancelled.result(10)
        calls_when_stopped = long.network_calls
        assert kept.result(10).network_calls == 20
        assert long.network_calls == calls_when_stopped <= 5  # it made no call after it left
    finally:
        scheduler.close()


class FixedCosts:
    """Stands in for CallCosts where a test needs the split decision fixed (CallCosts' own fit
    is tested apart): fixed_seconds 0 means two groups whenever two images are active."""

    sizes = 2  # as if two batch sizes had been seen: the fit is trusted

    def __init__(self, fixed: float):
        self.fixed = fixed

    def add(self, images: int, seconds: float) -> None:
        pass

    def fixed_seconds(self) -> float:
        return self.fixed


def test_call_costs_fit_the_fixed_cost_and_bound_it_before_two_sizes_are_seen():
    costs = CallCosts()
    assert costs.fixed_seconds() == float("inf")  # nothing seen: never split
    costs.add(32, 0.0444)
    assert costs.fixed_seconds() == pytest.approx(0.0444)  # a <= a + 32 b: an upper bound
    for images in (1, 8, 32):
        costs.add(images, 0.006 + 0.0012 * images)
    assert costs.fixed_seconds() == pytest.approx(0.006, abs=1e-4)


def test_the_split_is_probed_with_one_batch_size_known_and_kept_without_flapping():
    """decide_split reads only: the hysteresis state changes where the caller keeps its answer."""
    costs, state = CallCosts(), SplitState()

    def decide(images: int = 32) -> int:
        before = SplitState(state.serial_per_image, state.split)
        decision = decide_split(2, images, state, costs)
        assert state == before  # a query: nothing changed
        state.split = decision.split  # the update, as the scheduler's tick does
        return decision.groups

    costs.add(32, 0.0444)  # edits in lockstep: only full calls seen, a <= 44.4 ms
    state.serial_per_image = 0.0005  # 16 ms of serial work per tick
    assert decide() == 2  # >= a tenth of the call: try a split once
    costs.add(16, 0.0252)  # now the fit: a = 6 ms < 16 ms
    assert decide() == 2
    state.serial_per_image = 0.00016  # 5.1 ms: below a, above 3/4 a: stays split
    assert decide() == 2
    state.serial_per_image = 0.0001  # 3.2 ms < 4.5 ms: one group again
    assert decide() == 1
    state.serial_per_image = 0.00016  # 5.1 ms < a: stays one group
    assert decide() == 1
    assert decide(images=1) == 1  # one image: nothing to split


class Device:
    """One accelerator: calls run one at a time (a lock), sleeping 2 ms per image, then the real
    network; it records how many calls were outstanding at once (sent and not answered)."""

    def __init__(self, model: OnnxScoreModel):
        self.model = model
        self.lock = threading.Lock()
        self.outstanding = self.most_outstanding = 0
        self.count = threading.Lock()

    def __call__(self, x, t, deadline=None):
        with self.count:
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
        try:
            with self.lock:
                time.sleep(0.002 * len(x))
                return self.model.predict_eps(x, t)
        finally:
            with self.count:
                self.outstanding -= 1


def test_two_groups_in_flight_overlap_and_stay_bit_identical_to_each_edit_alone(gauss):
    solo = [alone(gauss, t) for t in trajectories(gauss)]
    device = Device(gauss)
    ticks: list[TickStats] = []
    scheduler = BatchScheduler("two", device, 64, on_tick=ticks.append, pipeline_depth=2)
    scheduler.costs = FixedCosts(0.0)
    try:
        with scheduler._wake:  # every edit is queued before the first call
            futures = [scheduler.submit(t) for t in trajectories(gauss)]
        together = [f.result(60).samples for f in futures]
    finally:
        scheduler.close()
    for a, b in zip(solo, together):
        np.testing.assert_array_equal(a, b)
    assert device.most_outstanding == 2  # a second call was sent while the first ran
    total = sum(n for _, _, n in MIXED)
    assert max(t.images for t in ticks) <= -(-total // 2) + max(n for _, _, n in MIXED)  # about half the images each


@pytest.mark.parametrize("depth", [1, 2])
def test_a_call_cut_at_its_earliest_deadline_fails_only_the_edits_past_theirs(gauss, depth):
    """Each call gets the earliest deadline of its edits; a backend that stops the call at that
    deadline (DeadlineExceeded, as Triton does) fails the edit whose deadline passed, and its
    batch-mate without one takes no step from that call and goes on, its output unchanged."""
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)

    def mate() -> EditTrajectory:
        return EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=30, sampler="ddpm"), [np.random.default_rng(2)])

    seen: list[float | None] = []

    def remote(x, t, deadline=None):
        seen.append(deadline)
        if deadline is not None and time.monotonic() + 0.01 >= deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise DeadlineExceeded("deadline exceeded during inference")
        time.sleep(0.01)
        return gauss.predict_eps(x, t)

    scheduler = BatchScheduler("deadline", remote, 8, pipeline_depth=depth)
    scheduler.costs = FixedCosts(1.0)  # one call carries both edits
    try:
        with scheduler._wake:  # both queued before the first call
            doomed_deadline = time.monotonic() + 0.1
            doomed = scheduler.submit(EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=500, sampler="ddpm"),
                                                     [np.random.default_rng(1)]), deadline=doomed_deadline)
            other = scheduler.submit(mate())
        with pytest.raises(DeadlineExceeded):
            doomed.result(10)
        samples = other.result(10).samples
    finally:
        scheduler.close()
    assert doomed_deadline in seen and seen[-1] is None  # shared calls carried its deadline; the mate's alone, none
    np.testing.assert_array_equal(samples, alone(gauss, mate()))


def test_an_edit_whose_handed_out_work_lags_waits_for_it_alone(gauss):
    """on_step hands work out of the step (the service's preview encoding): while two pieces
    of an edit's are not done, that edit takes no call, and its batch-mate goes on meanwhile;
    once they are done it goes on, its output unchanged."""
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)

    def trajectory(seed: int, steps: int) -> EditTrajectory:
        return EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=steps, sampler="ddpm"), [np.random.default_rng(seed)])

    handed: list[Future] = []
    release = threading.Event()

    def slow_previews(event) -> Future:
        handed.append(Future())  # done at once after release, else only when the test says so
        if release.is_set():
            handed[-1].set_result(None)
        return handed[-1]

    scheduler = BatchScheduler("held", gauss.predict_eps, 8)
    try:
        held = scheduler.submit(trajectory(1, 10), on_step=slow_previews)
        mate = scheduler.submit(trajectory(2, 40))
        samples = mate.result(10).samples  # runs to its end while `held` waits for its work
        assert len(handed) == 2 and not held.done()  # two steps' work outstanding: no third call
        release.set()
        for future in handed:
            future.set_result(None)  # wakes the scheduler: `held` goes on
        result = held.result(10)
    finally:
        scheduler.close()
    assert result.network_calls == 10 and len(handed) == 10
    np.testing.assert_array_equal(samples, alone(gauss, trajectory(2, 40)))
    np.testing.assert_array_equal(result.samples, alone(gauss, trajectory(1, 10)))


def test_a_failing_network_call_fails_every_edit_in_it(gauss):
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)

    def broken(x, t, deadline=None):
        raise RuntimeError("the network is gone")

    scheduler = BatchScheduler("broken", broken, 8)
    try:
        futures = [scheduler.submit(EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=3), [np.random.default_rng(i)]))
                   for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="gone"):
                f.result(10)
    finally:
        scheduler.close()


def npy_edit(address: str, request) -> np.ndarray:
    with Client(address) as client:
        response = client.edit(request, timeout=120)
    assert not response.cached
    return np.stack([decode_npy(image.data) for image in response.images])


def concurrent_requests(guide: np.ndarray) -> list:
    return [build_request(png(guide), t0=0.3 + 0.05 * i, steps=8 + i, seed=100 + i, num_samples=1 + i % 3, npy=True,
                          sampler=("ddpm", "ddim", "dpmpp_2m_sde", "dpmpp_2m")[i % 4]) for i in range(12)]


def solo_then_together(server, requests) -> tuple[float, float]:
    """Runs each request alone, then all at once; asserts equal outputs. Returns the concurrent
    run's (network calls, images) from the server's own metrics."""
    solo = [npy_edit(server.address, r) for r in requests]
    before = scrape(server.running.metrics_port)
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: npy_edit(server.address, r), requests))
    for a, b in zip(solo, together):
        np.testing.assert_array_equal(a, b)
    after = scrape(server.running.metrics_port)

    def delta(name: str) -> float:
        return value(after, name, model="gauss") - value(before, name, model="gauss")

    return delta("sdedit_network_batch_size_count"), delta("sdedit_network_batch_size_sum")


def test_concurrent_edits_through_the_service_share_calls_and_equal_their_solo_runs(make_server, guide16):
    server = make_server(cache="none", metrics_port=0, max_active_edits=16)
    requests = concurrent_requests(guide16)
    calls, images = solo_then_together(server, requests)
    assert images == sum(r.num_samples * r.steps for r in requests)
    assert images / calls > 2.0, (images, calls)  # shared calls (12 edits started together)


def test_num_samples_beyond_the_batch_is_invalid_argument(make_server, guide16):
    server = make_server(cache="none", max_batch_images=4)
    with Client(server.address) as client, pytest.raises(grpc.RpcError) as error:
        client.edit(build_request(png(guide16), t0=0.3, steps=2, seed=1, num_samples=5))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_images" in error.value.details()


def test_batched_edits_on_triton_equal_their_solo_runs(parity_repository, triton, make_server, guide16):
    server = make_server.triton(triton.url, shm=True, repository=parity_repository, metrics_port=0, max_active_edits=16)
    requests = concurrent_requests(guide16)[:8]
    calls, _ = solo_then_together(server, requests)
    assert calls < sum(r.steps for r in requests)  # one infer call per tick carried several edits
    pool = server.service.registry.get("gauss").backend.connection.shm
    # one set (x, t, eps) per call in flight, each sized for a full batch, reused by every
    # call: with Triton the scheduler keeps up to two calls in flight (pipeline_depth 0 -> 2)
    assert len(pool.region_names()) in (3, 6), pool.region_names()


def _edits(gauss, count: int, steps: int, seed: int = 0) -> list[EditTrajectory]:
    schedule = build_schedule(gauss.info.sde)
    guide = np.zeros((1, 16, 16), np.float32)
    return [EditTrajectory(schedule, guide, None, EditParams(t0=0.5, steps=steps, sampler="ddim"),
                           [np.random.default_rng(seed + i)]) for i in range(count)]


def test_a_light_tenant_gets_its_share_of_a_full_call_at_once_behind_a_heavy_backlog(gauss):
    """max_batch_images 4: a heavy tenant's 12 edits of 40 calls came first, then a light
    tenant's edit of 5 calls. Oldest first would run it after 120 ticks; the fair share runs it
    in every call from the first, beside 3 of the heavy tenant's."""
    ticks: list[TickStats] = []
    scheduler = BatchScheduler("fair", gauss.predict_eps, 4, on_tick=ticks.append)
    try:
        with scheduler._wake:  # all queued before the first tick chooses
            heavy = [scheduler.submit(t, tenant="heavy") for t in _edits(gauss, 12, 40)]
            (light,) = [scheduler.submit(t, tenant="light") for t in _edits(gauss, 1, 5, seed=100)]
            done_after: list[int] = []
            light.add_done_callback(lambda _: done_after.append(len(ticks)))  # ticks reported before its own
        assert light.result(30).network_calls == 5
        assert done_after == [4]  # it left in the 5th call
        assert all(f.result(60).network_calls == 40 for f in heavy)
    finally:
        scheduler.close()
    assert [t.images for t in ticks[:5]] == [4] * 5


def simulate(edits: list[Waiting], calls: int, room: int) -> list[list[Waiting]]:
    """The fair share alone, tick after tick, as the scheduler runs it at depth 1 when every
    edit (`calls` calls each) was queued before the first tick: each tick's chosen edits."""
    remaining = {edit.order: calls for edit in edits}
    served: dict[str, float] = {}
    ticks = []
    while edits:
        share = fair_share(edits, served, room)
        served = share.served
        ticks.append(share.chosen)
        for edit in share.chosen:
            remaining[edit.order] -= 1
        edits = [edit for edit in edits if remaining[edit.order]]
    return ticks


def test_tenants_share_full_calls_by_weight_and_one_tenant_alone_is_oldest_first():
    """Weights 3 and 1, both with a backlog: calls of 4 images go 3 to 1. A tenant alone with
    its backlog gets every image (the share is of the call, never an idle place)."""
    edits = ([Waiting(order=i, images=1, tenant="a", weight=3) for i in range(8)]
             + [Waiting(order=8 + i, images=1, tenant="b", weight=1) for i in range(8)])
    chosen = [[e.tenant for e in batch] for batch in simulate(edits, 20, 4)]
    shared = [c for c in chosen if len(set(c)) == 2]
    assert len(shared) >= 20
    assert all(sorted(c) == ["a", "a", "a", "b"] for c in shared[:20])
    assert all(len(c) == 4 for c in chosen[:60])
    assert sum(map(len, chosen)) == 16 * 20


def test_the_scheduler_runs_the_fair_share_tick_by_tick(gauss):
    """The same backlog through a BatchScheduler: every edit leaves after the tick where the
    policy alone, simulated, gives it its last call."""
    edits = ([Waiting(order=i, images=1, tenant="a", weight=3) for i in range(8)]
             + [Waiting(order=8 + i, images=1, tenant="b", weight=1) for i in range(8)])
    expected = {}
    for tick, batch in enumerate(simulate(edits, 20, 4)):
        for edit in batch:
            expected[edit.order] = tick  # the last tick that has it
    ticks: list[TickStats] = []
    left: dict[int, int] = {}
    scheduler = BatchScheduler("weights", gauss.predict_eps, 4, on_tick=ticks.append)
    try:
        with scheduler._wake:  # all queued before the first tick chooses
            futures = ([scheduler.submit(t, tenant="a", weight=3) for t in _edits(gauss, 8, 20)]
                       + [scheduler.submit(t, tenant="b", weight=1) for t in _edits(gauss, 8, 20, seed=50)])
            for order, future in enumerate(futures):  # ticks are reported after their edits leave
                future.add_done_callback(lambda _, order=order: left.__setitem__(order, len(ticks)))
        assert all(f.result(60).network_calls == 20 for f in futures)
    finally:
        scheduler.close()
    assert left == expected
