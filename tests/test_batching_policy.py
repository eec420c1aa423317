"""The batch scheduler's decisions called directly: the fair share (service/batching/policy.py)
and the split decision (service/batching/costmodel.py) are pure functions of plain state."""

from __future__ import annotations

import pytest

from service.batching import CallCosts, SplitDecision, SplitState, Waiting, call_room, decide_split, fair_share


def orders(share) -> list[int]:
    return [edit.order for edit in share.chosen]


def test_everything_that_fits_runs_and_the_counts_keep_only_their_differences():
    edits = [Waiting(0, 2, "a"), Waiting(1, 1, "b", weight=2.0), Waiting(2, 1, "a")]
    share = fair_share(edits, {}, 8)
    assert orders(share) == [0, 1, 2]
    assert share.served == {"a": 2.5, "b": 0.0}  # a: 3 images, b: 1 image / weight 2; less the least


def test_one_tenant_is_oldest_first_with_whole_edits_that_fit():
    edits = [Waiting(0, 2), Waiting(1, 3), Waiting(2, 1)]
    share = fair_share(edits, {}, 4)
    assert orders(share) == [0, 2]  # 0 first; 1 does not fit what is left, 2 does


def test_a_light_tenant_gets_its_share_of_the_first_call_behind_a_heavy_backlog():
    edits = [Waiting(i, 1, "heavy") for i in range(12)] + [Waiting(12, 1, "light")]
    share = fair_share(edits, {}, 4)
    assert orders(share) == [0, 1, 2, 12]


def test_weights_share_a_full_call():
    edits = [Waiting(i, 1, "a", weight=3) for i in range(8)] + [Waiting(8 + i, 1, "b") for i in range(8)]
    served: dict[str, float] = {}
    tenants = []
    for _ in range(8):  # nobody finishes: the same backlog call after call
        share = fair_share(edits, served, 4)
        served = share.served
        tenants.append(sorted(e.tenant for e in share.chosen))
    assert tenants == [["a", "a", "a", "b"]] * 8


def test_a_newly_active_tenant_starts_level_with_the_least_served_and_edits_in_flight_keep_theirs_active():
    edits = [Waiting(0, 1, "b", in_flight=True), Waiting(1, 1, "c", in_flight=True)]
    share = fair_share(edits, {"a": 5.0, "b": 2.0}, 4)
    assert share.chosen == []  # both in a call already
    assert share.served == {"b": 0.0, "c": 0.0}  # a left; c starts level with b


def test_the_inputs_are_left_unchanged():
    edits = [Waiting(i, 1, "t" + str(i % 2)) for i in range(6)]
    served = {"t0": 1.0, "t1": 0.0}
    fair_share(edits, served, 3)
    assert served == {"t0": 1.0, "t1": 0.0}


def test_an_edit_larger_than_the_room_goes_alone():
    share = fair_share([Waiting(0, 3), Waiting(1, 3)], {}, 2)  # two groups of a 3-image call each
    assert orders(share) == [0]


def test_with_two_groups_one_call_takes_about_half_of_the_active_images():
    assert call_room(32, 1, 20) == 32
    assert call_room(32, 2, 20) == 10
    assert call_room(32, 2, 21) == 11
    assert call_room(8, 2, 40) == 8


def test_depth_one_or_one_image_never_splits_and_keeps_the_hysteresis_state():
    costs = CallCosts()
    costs.add(8, 0.01)
    costs.add(16, 0.012)
    busy = SplitState(serial_per_image=1.0, split=True)
    assert decide_split(1, 32, busy, costs) == SplitDecision(1, True)
    assert decide_split(2, 1, busy, costs) == SplitDecision(1, True)
    assert decide_split(2, 32, busy, costs) == SplitDecision(2, True)


def test_nothing_seen_never_splits():
    assert decide_split(2, 32, SplitState(serial_per_image=1.0), CallCosts()) == SplitDecision(1, False)


def test_the_decision_is_a_query():
    costs = CallCosts()
    costs.add(8, 0.0096 + 0.006)
    costs.add(16, 0.0192 + 0.006)  # a = 6 ms
    state = SplitState(serial_per_image=0.00016, split=False)  # 5.1 ms at 32 images: below a
    first = decide_split(2, 32, state, costs)
    assert first == decide_split(2, 32, state, costs) == SplitDecision(1, False)
    assert state == SplitState(serial_per_image=0.00016, split=False)
    state.split = True  # as if split at the tick before: above 3/4 a, it stays split
    assert decide_split(2, 32, state, costs) == SplitDecision(2, True)


def test_the_serial_work_is_a_moving_average_per_image():
    state = SplitState()
    state.observe(0.032, 32)
    assert state.serial_per_image == pytest.approx(0.0001)
    state.observe(0.0, 16)
    assert state.serial_per_image == pytest.approx(0.00009)
