"""The LIBERO experts' planning and moves on hand-made states (no simulator: the main suite).

`policytrim.policies.libero_expert` reads a task's plan from the simulator once; what it does with a
state is plain geometry, tested here on states written by hand: the plan's env settings against the
config's defaults, the grasp width at the grasp height, the push (drag) of a flat object and the
knob turn. The episodes on the real simulator are measured by benchmarks/libero_experts.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from policytrim.config import EnvConfig
from policytrim.policies.libero_expert import (
    CLOSE,
    PUSH_SPEED,
    Drawer,
    LiberoExpert,
    Target,
    TaskPlan,
    _PlanEnvSettings,
)

SLOTS = 3
UPRIGHT = np.array([0.0, 0.0, 0.0, 1.0])  # x, y, z, w


def test_plan_env_settings_are_the_config_defaults():
    """The expert names the env settings of its planning env instead of importing the config; they
    must stay the config's defaults (but for the suite and the object-pose state, chosen on purpose)."""
    config = {f.name: f.default for f in dataclasses.fields(EnvConfig)}
    chosen = {"tasks", "suite", "libero_state"}
    for field in dataclasses.fields(_PlanEnvSettings):
        if field.name in chosen:
            continue
        assert field.name in config, field.name
        assert field.default == config[field.name], field.name
    assert set(config) - chosen <= {f.name for f in dataclasses.fields(_PlanEnvSettings)}
    settings = _PlanEnvSettings(tasks=("libero_goal/turn_on_the_stove",))
    assert settings.suite == "libero" and settings.libero_state == "objects"


def _state(hand, fingers, poses, hand_yaw=0.0):
    """A state: hand position, the hand pointing down at ``hand_yaw``, finger width, object poses."""
    from policytrim.policies.libero_expert import HAND_DOWN, _mat_to_axis_angle, _rot_z

    s = np.zeros(8 + 7 * SLOTS)
    s[:3] = hand
    s[3:6] = _mat_to_axis_angle(_rot_z(hand_yaw) @ HAND_DOWN)
    s[6], s[7] = fingers / 2, -fingers / 2
    for k, (p, q) in enumerate(poses):
        s[8 + 7 * k : 11 + 7 * k] = p
        s[11 + 7 * k : 15 + 7 * k] = q
    return s


def _bottle_parts():
    body = [[-0.02, -0.02, 0.0], [0.02, 0.02, 0.073]]
    neck = [[-0.008, -0.008, 0.05], [0.008, 0.008, 0.158]]
    return np.array([body, neck])


def test_grasp_width_is_the_width_at_the_grasp_height():
    """A bottle is grasped at its neck: the fingers stop at the neck's width, not the box's."""
    parts = _bottle_parts()
    plan = TaskPlan(
        "t", SLOTS, 0, parts[:, 0].min(0), parts[:, 1].max(0), Target("on", -1, np.zeros(3), np.ones(3), 0.0), parts
    )
    expert = LiberoExpert(plan)
    state = _state([0.0, 0.0, 1.2], 0.077, [([0.1, 0.1, 0.9], UPRIGHT)])
    point, _axis, width, rim = expert.grasp(state)
    assert not rim
    assert point[2] > 0.9 + 0.073  # above the body: on the neck
    assert abs(width - 0.016) < 1e-9
    tilted = _state([0.0, 0.0, 1.2], 0.077, [([0.1, 0.1, 0.9], [math.sin(0.4), 0.0, 0.0, math.cos(0.4)])])
    assert expert.grasp(tilted)[2] > 0.016  # not upright: the box's width (the neck's height is unknown)


def _plate_plan():
    lo, hi = np.array([-0.07, -0.07, -0.002]), np.array([0.07, 0.07, 0.016])
    target = Target("on", -1, np.array([-0.05, 0.21, 0.895]), np.array([0.04, 0.04, 0.007]), 0.0)
    return TaskPlan("t", SLOTS, 0, lo, hi, target, None, "push")


def test_push_drags_a_flat_object_towards_its_region():
    expert = LiberoExpert(_plate_plan())
    plate = np.array([0.05, -0.03, 0.902])
    d = np.array([-0.05 - 0.05, 0.21 + 0.03])
    d /= np.linalg.norm(d)
    # high above: go over the start point (just behind the centre), fingers closed
    a = expert.act(_state([-0.2, 0.0, 1.17], 0.0, [(plate, UPRIGHT)]))
    assert a[6] == CLOSE and a[0] > 0 and abs(a[2]) < 1e-9
    # over the start point: straight down
    start = plate[:2] - d * 0.01
    a = expert.act(_state([*start, 1.0], 0.0, [(plate, UPRIGHT)]))
    assert a[2] < -0.5 and np.linalg.norm(a[:2]) < 0.2
    # down in the plate: along the line to the region, at least PUSH_SPEED
    a = expert.act(_state([*start, plate[2] + 0.01], 0.0, [(plate, UPRIGHT)]))
    assert float(a[:2] @ d) >= PUSH_SPEED - 1e-6 and abs(float(a[:2] @ np.array([-d[1], d[0]]))) < 0.05
    # low beside it: rise before moving over
    a = expert.act(_state([plate[0] + 0.15, plate[1], plate[2] + 0.02], 0.0, [(plate, UPRIGHT)]))
    assert a[2] > 0.5 and np.linalg.norm(a[:2]) < 1e-6


def _knob_plan():
    # a knob 0.04 m above the fixture's origin, its handle across the fixture's y axis, 0.024 wide; its
    # angle is joint 0 of the state's joint block
    target = Target("turn", 0, np.zeros(3), np.zeros(3), 0.0)
    lo, hi = np.array([-0.035, -0.012, 0.0]), np.array([0.035, 0.012, 0.05])
    knob = np.array([0.0, 0.0, 0.04, math.pi / 2, 0.024, 0])
    return TaskPlan("t", SLOTS, 0, lo, hi, target, None, "turn", knob, joints=1)


def _knob_state(hand, fingers, stove, q, hand_R):
    from policytrim.policies.libero_expert import _mat_to_axis_angle

    s = np.zeros(8 + 7 * SLOTS + 1)
    s[:3] = hand
    s[3:6] = _mat_to_axis_angle(hand_R)
    s[6], s[7] = fingers / 2, -fingers / 2
    s[8:11], s[11:15] = stove, UPRIGHT
    s[-1] = q
    return s


def test_knob_turn_grasps_tilted_then_turns_by_what_the_knob_lacks():
    from policytrim.policies.libero_expert import HAND_DOWN, TURN_ANGLE, _rot_z

    expert = LiberoExpert(_knob_plan())
    stove = np.array([-0.4, 0.2, 0.9])
    point = stove + [0.0, 0.0, 0.04]
    # the fingertips tilt towards the hand's home (HOME_XY: towards +x, -y of this knob), a rotation about
    # the horizontal axis across that direction, (-1, -1, 0) / sqrt(2)
    a = expert.act(_knob_state([*point[:2], point[2] + 0.3], 0.077, stove, 0.0, HAND_DOWN))
    assert a[3] < -0.3 and abs(a[3] - a[4]) < 1e-6 and abs(a[5]) < 1e-6 and a[6] < 0
    # open, at the grasp point: close
    assert expert.act(_knob_state(point, 0.077, stove, 0.0, HAND_DOWN))[6] == CLOSE
    # holding the handle: turn the hand about +z (the knob's on direction), staying at the knob
    a = expert.act(_knob_state(point, 0.03, stove, 0.0, HAND_DOWN))
    assert a[6] == CLOSE and a[5] > 0.5 and np.linalg.norm(a[:3]) < 1e-6
    # the knob half way (its angle in the state) and the hand turned with it: keep turning
    turned = _rot_z(TURN_ANGLE / 2) @ HAND_DOWN
    assert expert.act(_knob_state(point, 0.03, stove, TURN_ANGLE / 2, turned))[5] > 0.3
    # the knob past the goal: turn back a little
    assert expert.act(_knob_state(point, 0.03, stove, TURN_ANGLE + 0.3, turned))[5] < 0
    # closed on nothing (a miss): open and back up
    a = expert.act(_knob_state(point, 0.001, stove, 0.0, HAND_DOWN))
    assert a[6] < 0 and a[2] > 0


def _drawer_plan():
    # a cabinet in slot 0 whose drawer joint grows along -y: opening (LIBERO's negative joint positions)
    # slides it towards +y; the handle bar 0.1 m in front of the cabinet's origin, 0.18 m up, 0.016 m tall
    drawer = Drawer(
        0, 1, np.array([0.0, -1.0, 0.0]), 0.0, np.array([0.0, 0.1, 0.18]), np.array([0.044, 0.008, 0.008]), -0.15
    )
    target = Target("open", 0, np.zeros(3), np.zeros(3), 0.0)
    box = (np.array([-0.1, -0.1, 0.0]), np.array([0.1, 0.1, 0.2]))
    return TaskPlan("t", SLOTS, 0, *box, target, move="pull", joints=4, drawer=drawer)


def _drawer_state(hand, fingers, q, hand_R):
    from policytrim.policies.libero_expert import _mat_to_axis_angle

    s = np.zeros(8 + 7 * SLOTS + 4)
    s[:3] = hand
    s[3:6] = _mat_to_axis_angle(hand_R)
    s[6], s[7] = fingers / 2, -fingers / 2
    s[8:11] = [0.0, -0.25, 0.9]
    s[11:15] = UPRIGHT
    s[8 + 7 * SLOTS + 1] = q
    return s


def test_drawer_pull_grips_the_handle_from_the_front_and_pulls():
    from policytrim.policies.libero_expert import HAND_DOWN, PULL_SPEED, _level_hand

    expert = LiberoExpert(_drawer_plan())
    assert expert.state_dim == 8 + 7 * SLOTS + 4
    handle = np.array([0.0, -0.25 + 0.1, 0.9 + 0.18])
    pull = np.array([0.0, 1.0])
    level = _level_hand(pull)
    assert np.allclose(level[:, 2], [0.0, -1.0, 0.0]) and np.allclose(level[:, 1], [0.0, 0.0, 1.0])
    # far off and pointing down: to the front of the handle, turning level
    a = expert.act(_drawer_state([-0.2, 0.0, 1.2], 0.077, 0.0, HAND_DOWN))
    assert a[0] > 0.5 and np.linalg.norm(a[3:6]) > 0.5
    # level, in the lane in front of the bar: straight in
    a = expert.act(_drawer_state(handle + [0.0, 0.08, 0.0], 0.04, 0.0, level))
    assert a[1] < -0.5 and abs(a[0]) < 0.05 and abs(a[2]) < 0.05 and np.linalg.norm(a[3:6]) < 1e-6
    # at the bar: close on it
    assert expert.act(_drawer_state(handle, 0.04, 0.0, level))[6] == CLOSE
    # closed on the bar: pull along the drawer's opening direction at PULL_SPEED
    a = expert.act(_drawer_state(handle, 0.017, 0.0, level))
    assert a[6] == CLOSE and abs(a[1] - PULL_SPEED) < 0.05 and abs(a[0]) < 0.05
    # the handle moved with the drawer (read from the joint block): still holding it there
    moved = handle + [0.0, 0.05, 0.0]
    a = expert.act(_drawer_state(moved, 0.017, -0.05, level))
    assert a[6] == CLOSE and a[1] > 0.3


def test_drawer_pull_travels_above_the_handle_to_its_front():
    """Far from the handle's front, the hand goes there above the handle's height and down only over it:
    at the handle's height the level hand swept a bowl on the table in front of the cabinet along, onto
    the plate and under the drawer, which then jammed (middle drawer, LIBERO-Goal init states 5, 7, 8, 9)."""
    from policytrim.policies.libero_expert import HANDLE_TRAVEL, _level_hand

    expert = LiberoExpert(_drawer_plan())
    handle = np.array([0.0, -0.25 + 0.1, 0.9 + 0.18])
    front = handle + [0.0, 0.10, 0.0]
    level = _level_hand(np.array([0.0, 1.0]))
    # beside the front at the handle's height: rise (before: straight across at this height)
    a = expert.act(_drawer_state([-0.2, front[1], handle[2]], 0.077, 0.0, level))
    assert a[2] > 0.3 and a[0] > 0.5
    # high above: stay above HANDLE_TRAVEL over the handle while crossing
    a = expert.act(_drawer_state([-0.2, front[1], handle[2] + HANDLE_TRAVEL], 0.077, 0.0, level))
    assert a[2] > -0.05 and a[0] > 0.5
    # over the front: straight down to it
    a = expert.act(_drawer_state(front + [0.0, 0.0, HANDLE_TRAVEL], 0.077, 0.0, level))
    assert a[2] < -0.5 and np.linalg.norm(a[:2]) < 0.2


def test_fixture_boxes_slide_with_their_drawer_joint():
    """A drawer's collision boxes move with its joint (read from the state), the others stay."""
    box = np.concatenate([[0.0, -0.2, 1.0], [0.1, 0.08, 0.03], np.eye(3).ravel()])
    fixtures = np.stack([box, box])
    slides = np.array([[1.0, 0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0, 0.0]])  # box 0 on joint 1 (axis -y)
    plan = dataclasses.replace(_drawer_plan(), fixtures=fixtures, fixture_slides=slides)
    expert = LiberoExpert(plan)
    now = expert._fixtures(_drawer_state([0.0, 0.0, 1.2], 0.077, -0.15, np.eye(3)))
    assert np.allclose(now[0, :3], [0.0, -0.2 + 0.15, 1.0]) and np.allclose(now[1], box)
    assert np.allclose(plan.fixtures[0], box)  # the plan's boxes are not changed


def test_expert_benchmark_starts_no_episode_past_its_deadline(tmp_path, monkeypatch):
    """benchmarks/libero_experts.py --max-minutes: past the deadline a task is left as its work file
    has it (no env built, nothing written), so the next run goes on from the first missing init state."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import libero_experts as bench

    address = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
    record = {"task": address, "expert_version": bench.expert_version(), "episodes": {"0": {"success": True}}}
    path = bench.task_file(tmp_path, address)
    path.write_text(json.dumps(record))

    def no_env(*_args, **_kwargs):
        raise AssertionError("an env was built past the deadline")

    monkeypatch.setattr(bench, "make_env", no_env)
    assert bench.run_task(address, 50, tmp_path, deadline=0.0) == record
    assert json.loads(path.read_text()) == record


def test_held_object_under_an_open_drawer_leaves_from_under_it_before_lifting():
    """A bowl standing partly under an opened drawer hit the drawer's floor when lifted straight up and
    tilted out of the rim pinch (LIBERO-Goal "open the top drawer and put the bowl inside"): the
    escape shifts it out from under the drawer's boxes the shortest way first."""
    from policytrim.policies.libero_expert import _overhang_escape

    drawer = np.concatenate([[0.02, -0.09, 1.06], [0.11, 0.085, 0.005], np.eye(3).ravel()])  # floor at 1.055
    lo, hi = np.array([-0.134, -0.04, 0.9]), np.array([-0.026, 0.068, 0.951])  # the bowl's box in the world
    signs = np.array([[sx, sy, sz] for sx in (0, 1) for sy in (0, 1) for sz in (0, 1)])
    corners = lo + signs * (hi - lo)
    shift, ceiling = _overhang_escape(drawer[None], corners, carry=1.15)
    assert abs(ceiling - 1.055) < 1e-9
    moved_lo, moved_hi = lo[:2] + shift, hi[:2] + shift
    d_lo, d_hi = drawer[:2] - drawer[3:5], drawer[:2] + drawer[3:5]
    assert np.any((moved_hi < d_lo) | (moved_lo > d_hi))  # clear of the drawer's footprint
    assert np.linalg.norm(shift) < 0.1  # the short way (out to the side or the front), not across it
    # nothing above it, or the drawer above the carry height: no escape
    assert _overhang_escape(drawer[None], corners - [0.3, 0.0, 0.0], carry=1.15) is None
    assert _overhang_escape(drawer[None], corners, carry=0.95) is None


def test_sequence_does_the_first_step_whose_predicate_does_not_hold():
    """A goal of several predicates (LIBERO-10) is a sequence of single-goal plans: the knob is turned
    until it is on, then the object is picked; once placed and let go, the hand leaves it straight up."""
    from policytrim.policies.libero_expert import HAND_DOWN, TURN_ANGLE

    turn = _knob_plan()
    lo, hi = np.array([-0.02, -0.02, 0.0]), np.array([0.02, 0.02, 0.1])
    region = np.array([0.1, 0.2, 0.9])
    pick = TaskPlan("t", SLOTS, 1, lo, hi, Target("on", -1, region, np.array([0.05, 0.05, 0.01]), 0.0), joints=1)
    seq = LiberoExpert(dataclasses.replace(turn, move="sequence", steps=(turn, pick)))
    stove = np.array([-0.4, 0.2, 0.9])

    def state(hand, fingers, q, obj):
        s = _knob_state(hand, fingers, stove, q, HAND_DOWN)
        s[15:18], s[18:22] = obj, UPRIGHT
        return s

    far = np.array([0.2, -0.2, 0.9])
    off = state([0.0, 0.0, 1.2], 0.077, 0.0, far)  # knob off: turn it (the turn step's action)
    assert np.allclose(seq.act(off), seq.steps[0].act(off)) and not seq.steps[0].done(off)
    on = state([0.0, 0.0, 1.2], 0.077, TURN_ANGLE, far)  # knob on: go for the object
    assert seq.steps[0].done(on) and not seq.steps[1].done(on)
    assert np.allclose(seq.act(on), seq.steps[1].act(on))
    # the object placed and let go, the hand just above it: the sequence ends leaving it straight up
    placed = state([*region[:2], region[2] + 0.12], 0.077, TURN_ANGLE, region + [0.0, 0.0, 0.005])
    assert seq.steps[1].done(placed)
    a = seq.act(placed)
    assert a[2] > 0.5 and np.linalg.norm(a[:2]) < 1e-6 and a[6] < 0
