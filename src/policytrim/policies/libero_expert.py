"""Scripted experts for LIBERO's tasks, from privileged state (``--policy expert``): pick and place
(``In`` / ``On``, into a drawer opened first), pushing a flat object (``On`` of a plate), opening a
drawer (``Open``) and turning a knob on (``TurnOn``); a goal of several of these predicates (LIBERO-10)
is a sequence of them, the first whose predicate does not hold done next. Closing (``Close``: LIBERO-10's
drawer and microwave tasks) is not scripted (an `InputError` naming the task and the predicate).

An expert reads the adapter's object-pose state (``env.libero_state=objects``, the default without
images; layout in `policytrim.envs.libero`) and acts in closed loop, one 7-D OSC action per
observation, like Meta-World's scripted policies: it keeps no memory between calls, so every phase
is read off the state (a failed grasp, a dropped object or a perturbed action simply re-plans).

What it knows about a task comes from the simulator once per task and process (`task_plan`, a
state-only env built and reset once): the goal predicates, the collision geometry of the object to
move (the box around its collision geoms, in the object's own frame) and where the target region
sits on the body that carries it. Objects lower than ``FLAT_HEIGHT`` (plates) are pushed rather
than lifted; a knob's plan is its hinge and the handle above it, in the fixture's frame.

The phases, each recognised from the state:

- approach: gripper open, hand above the grasp point at the grasp yaw, then straight down. Boxes,
  cans and bottles are grasped across their narrowest horizontal width at the height of their upper
  part; bowls (wider than the open gripper) are pinched at the rim, on the side furthest from the
  other bodies;
- close: at the grasp point the gripper closes until the fingers stop on the object;
- held (fingers stopped at the object's width, object at the hand): lift to a carry height, carry
  steering on the object's own position over the target, lower, and open at the place height;
- a miss (fingers closed on nothing) opens and re-approaches; a placed object is left upwards;
- push: the closed fingertips go down into the flat object just behind its centre and drag it
  along the line to its region (by its floor and the inside of its rim), steering on its position;
- turn: the knob's handle is grasped across its width above the hinge, then the hand turns by
  ``TURN_ANGLE`` counter-clockwise (the knob's on direction) while holding it.

The grasp width the fingers must stop at is the object's width at the grasp height (the collision
geoms that reach it: a bottle's neck, not its body); under load the controller stops short of its
target, so an object is lowered past its place height (the surface stops it) and corrected
sideways at a low height rather than lifted again.

The controller is robosuite's OSC_POSE: an action of 1 moves the target 0.05 m / 0.5 rad; the hand
points down and only its yaw changes (the finger axis is the hand's y axis).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from policytrim.errors import InputError

GRIPPER_OPEN_WIDTH = 0.077  # finger-to-finger qpos width when fully open (2 x 0.0387)
MAX_GRASP_WIDTH = 0.072  # wider objects are pinched at the rim (bowls)
POS_UNIT = 0.05  # metres per unit of position action
ROT_UNIT = 0.5  # radians per unit of rotation action
CLOSE, OPEN = 1.0, -1.0
GRASP_DEPTH = 0.03  # grasp this far below an object's top: the palm stays clear of tall objects
RIM_INSET, RIM_DEPTH = 0.005, 0.025  # a bowl's wall: this far inside its box's outer edge, below its top
HOME_XY = np.array([-0.2, 0.0])  # where the hand starts in every LIBERO scene (in reach of both sides)
MAX_YAW = 0.8 * math.pi  # keep the hand's yaw within the wrist's range
FLAT_HEIGHT = 0.03  # objects lower than this (plates) are pushed to a table region, not lifted
HAND_HALF_LENGTH = 0.072  # the hand's collision box reaches this far along the finger axis (m)
HAND_BELOW_RIM = 0.032  # the hand's collision box starts this far above the grasp point (m)
LEAVE_HEIGHT = 0.08  # in a sequence, the hand leaves a placed object straight up to this far above its top (m)
KNOB_ON = (0.5, 2.1)  # LIBERO's stove is on between these knob angles (rad)
TURN_ANGLE = 1.3  # turn a knob this far (rad): on is 0.5 to 2.1 rad for LIBERO's stove
TURN_TILT = 0.35  # tilt the hand this far (rad), fingertips towards HOME_XY, when grasping a knob
FINGER_CLEARANCE = 0.01  # a grasp's fingers and hand stay this far from the fixtures where it can
PULL_STEP = 0.06  # while pulling a drawer, aim this far ahead (m)
PULL_SPEED = 0.6  # at this speed (action units)
RETREAT = 0.08  # back out this far from a drawer's handle before turning the hand down (m)
HANDLE_OPENING = 0.04  # finger opening going at a drawer's handle bar: clear of the handles above and below
HANDLE_TRAVEL = 0.08  # go to the front of a drawer's handle at least this far above it (m)
HANDLE_REACH = 0.0  # grip a drawer's handle bar this far in front of its centre (m)
OVERHANG_MARGIN = 0.01  # a held object leaves the space under a fixture (an open drawer) by this much (m)
PUSH_HEIGHT = 0.008  # push with the closed fingertips this far above the object's origin
PUSH_STEP = 0.07  # while pushing, aim this far ahead along the line (m)
PUSH_SPEED = 0.3  # and move at least this fast (action units)
ASIDE_MARGIN = 0.03  # an object in the way of a drawer is pushed this far clear of the opened drawer's footprint (m)
BLOCK_MARGIN = 0.01  # it is in the way when its footprint comes closer than this to the opened drawer's (m)
WALL_PUSH_HEIGHT = 0.025  # push a bowl aside by the inside of its wall this far above its bottom (m)
ASIDE_GRID = 0.02  # the spots it may be pushed to: a grid fixed in the world (a spot nearest to it stays nearest)


@dataclass(frozen=True)
class Drawer:
    """A drawer of a fixture: a slide joint, read from the state's joint block, and its handle."""

    slot: int  # state slot of the fixture (the cabinet)
    joint: int  # index of the slide joint in the state's joint block
    axis: np.ndarray  # float [3]: the slide axis in the fixture's frame (the joint grows along it)
    q0: float  # the joint's position when the plan was read
    handle: np.ndarray  # float [3]: the handle's centre in the fixture's frame at q0
    half: np.ndarray  # float [3]: the handle's half sizes in the fixture's frame
    open_at: float  # the joint position the drawer is pulled to (it opens towards lower positions)


@dataclass(frozen=True)
class Target:
    """Where a goal puts the object: a region on a body (offset in that body's frame) or fixed."""

    kind: str  # "in" | "on"
    slot: int  # state slot of the carrying body, -1 for a fixed world position
    offset: np.ndarray  # float [3]: the region centre in the body's frame (or the world, slot -1)
    half: np.ndarray  # float [3]: half sizes of the region (its box)
    top: float  # height of the surface to place on above the region centre (m)
    drawer: Drawer | None = None  # a region in a drawer moves with it


@dataclass(frozen=True)
class TaskPlan:
    """What the expert needs about one task, read once from the simulator."""

    task: str
    slots: int
    obj_slot: int
    lo: np.ndarray  # float [3]: collision box of the object in its own frame
    hi: np.ndarray
    target: Target
    parts: np.ndarray | None = None  # float [n, 2, 3]: each collision geom's box (lo, hi) in the object's frame
    move: str = "pick"  # "pick" (pick and place), "push" (flat objects: slid along the table), "turn" (a knob)
    knob: np.ndarray | None = None  # "turn": [x, y, z, yaw] of the knob's grasp point and handle axis, owner frame
    fixtures: np.ndarray | None = None  # float [n, 15]: the fixtures' collision boxes (centre 3, half 3, rotation 9)
    fixture_slots: tuple[int, ...] = ()  # state slots of the fixtures (their boxes stand for them)
    # float [n, 5] per fixture box: the state joint of the drawer it slides with (-1: none), the slide
    # axis in the world (3) and the joint's position when the boxes were read
    fixture_slides: np.ndarray | None = None
    joints: int = 0  # joint positions after the body slots in the state
    drawer: Drawer | None = None  # "pull": the drawer to open; "pick": one to open before placing into it
    steps: tuple[TaskPlan, ...] = ()  # "sequence": the single-goal plans, done in this order


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of an (x, y, z, w) quaternion."""
    x, y, z, w = q / max(np.linalg.norm(q), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _axis_angle_to_mat(v: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(v))
    if angle < 1e-9:
        return np.eye(3)
    k = v / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _mat_to_axis_angle(R: np.ndarray) -> np.ndarray:
    cos = float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))
    angle = math.acos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:  # 180 degrees: the axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(R) + 1) / 2, 0))
        i = int(np.argmax(axis))
        axis = R[:, i] + np.eye(3)[i]
        return angle * axis / np.linalg.norm(axis)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * math.sin(angle))
    return angle * axis


def _rot_z(phi: float) -> np.ndarray:
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


HAND_DOWN = np.diag([1.0, -1.0, -1.0])  # the hand pointing down, fingers closing along world y


def _level_hand(pull: np.ndarray) -> np.ndarray:
    """The hand level, pointing against the horizontal ``pull`` direction, its fingers one above the other."""
    z = np.array([-pull[0], -pull[1], 0.0])  # the hand's z: where it points
    y = np.array([0.0, 0.0, 1.0])  # the finger axis: vertical
    return np.column_stack([np.cross(y, z), y, z])


@dataclass(frozen=True)
class _PlanEnvSettings:
    """The env settings (`policytrim.envs.base.EnvSettings`) of the state-only env a plan is read
    from: the config's defaults for LIBERO with object poses. Policies sit below the config, so the
    expert names these values instead of building a `policytrim.config.EnvConfig`."""

    tasks: tuple[str, ...]
    suite: str = "libero"
    gym_id: str = ""
    horizon: int = 200
    image: bool = False
    image_size: int = 64
    camera: str = "corner2"
    train_seed: int = 0
    val_seed: int = 1
    test_seed: int = 2
    libero_max_steps: str = "openpi"
    libero_published_test: bool = False
    max_envs_per_worker: int = 0
    libero_state: str = "objects"
    libero_reset: str = "fast"
    libero_perturbation: str = "none"


@functools.cache
def task_plan(task: str) -> TaskPlan:
    """Read the plan of a LIBERO task from a state-only env (built once per task and process)."""
    from policytrim.envs import initial_states, make_env

    cfg = _PlanEnvSettings(tasks=(task,))
    env = make_env(cfg, task)
    try:
        env.reset(initial_states(task, cfg.train_seed, 1)[0])
        return _plan_from_env(env)
    finally:
        env.close()


def _plan_from_env(env, goal: list | None = None) -> TaskPlan:
    inner = env.unwrapped.env
    sim, model = inner.sim, inner.sim.model
    if goal is None:
        goal = inner.parsed_problem["goal_state"]
        if len(goal) > 1:
            return _sequence_plan(env, goal)
    if len(goal) == 1 and goal[0][0].lower() == "turnon":
        return _turn_plan(env, goal[0][1])
    if len(goal) == 1 and goal[0][0].lower() == "open":
        drawer = _drawer_of(env, goal[0][1])
        if drawer is None:
            raise InputError(f"{env.task}: the LIBERO experts open drawers (slide joints); {goal[0][1]} is not one")
        box = _collision_box(sim, inner.obj_body_id[list(env.state_bodies)[drawer.slot]])
        return TaskPlan(
            env.task,
            len(env.object_poses()),
            drawer.slot,
            *box,
            Target("open", drawer.slot, np.zeros(3), np.zeros(3), 0.0),
            move="pull",
            fixtures=_fixture_boxes(inner),
            fixture_slides=_fixture_slides(env),
            joints=len(env.joint_positions()),
            drawer=drawer,
        )
    pick = [p for p in goal if p[0].lower() in ("in", "on")]
    if len(goal) != 1 or not pick:
        raise InputError(
            f"{env.task}: the LIBERO experts script single pick-and-place goals (In / On), this goal is {goal}"
        )
    kind, obj, where = pick[0][0].lower(), pick[0][1], pick[0][2]
    bodies = list(env.state_bodies)
    obj_slot = bodies.index(obj)
    lo, hi = _collision_box(sim, inner.obj_body_id[obj])
    parts = _collision_parts(sim, inner.obj_body_id[obj])
    poses = env.object_poses()
    if where in bodies:  # on another object (a plate): the top of its collision box
        slot = bodies.index(where)
        blo, bhi = _collision_box(sim, inner.obj_body_id[where])
        centre = (blo + bhi) / 2
        half = (bhi - blo) / 2
        target = Target(kind, slot, centre, half, float(half[2]))
    else:  # a region site on a body (or on the table)
        site = model.site_name2id(where)
        owner = getattr(inner.object_sites_dict.get(where), "parent_name", None)
        world = np.array(sim.data.site_xpos[site])
        half = np.abs(np.array(model.site_size[site]))
        if owner in bodies:
            slot = bodies.index(owner)
            R = _quat_to_mat(poses[slot, 3:])
            offset = R.T @ (world - poses[slot, :3])
        else:
            slot, offset = -1, world
        top = -float(half[2]) if kind == "in" else 0.0
        target = Target(kind, slot, offset, half, top, _drawer_of(env, where))
    # a flat object (a plate) going to a region of the table slides there; into or onto anything else it is lifted
    move = "push" if hi[2] - lo[2] < FLAT_HEIGHT and kind == "on" and target.slot < 0 else "pick"
    fixed = tuple(k for k, b in enumerate(bodies) if b in getattr(inner, "fixtures_dict", {}))
    return TaskPlan(
        env.task,
        len(poses),
        obj_slot,
        lo,
        hi,
        target,
        parts,
        move,
        fixtures=_fixture_boxes(inner),
        fixture_slots=fixed,
        fixture_slides=_fixture_slides(env),
        joints=len(env.joint_positions()),
        drawer=target.drawer if kind == "in" else None,
    )


def _sequence_plan(env, goal: list) -> TaskPlan:
    """A goal of several predicates (LIBERO-10) as a sequence of single-goal moves: a knob turned on
    first (the objects put on the stove afterwards stand near it), then each pick and place in the
    goal's order. Closing a drawer or a door is not scripted (an `InputError` naming the task)."""
    unsupported = [p for p in goal if p[0].lower() not in ("in", "on", "turnon")]
    if unsupported:
        raise InputError(
            f"{env.task}: the LIBERO experts compose pick and place (In / On) and turning a knob on (TurnOn); "
            f"this goal also needs {', '.join(p[0] for p in unsupported)} ({goal})"
        )
    ordered = [p for p in goal if p[0].lower() == "turnon"] + [p for p in goal if p[0].lower() != "turnon"]
    steps = tuple(_plan_from_env(env, [p]) for p in ordered)
    first = steps[0]
    return TaskPlan(
        env.task,
        first.slots,
        first.obj_slot,
        first.lo,
        first.hi,
        first.target,
        move="sequence",
        joints=first.joints,
        steps=steps,
    )


def _drawer_of(env, site_name: str) -> Drawer | None:
    """The drawer a region site sits in (the slide joint of the site's body), or None."""
    inner = env.unwrapped.env
    model, data = inner.sim.model, inner.sim.data
    try:
        site = model.site_name2id(site_name)
    except (ValueError, KeyError):
        return None
    body = int(model.site_bodyid[site])
    slides = [j for j in range(model.njnt) if model.jnt_type[j] == 2 and int(model.jnt_bodyid[j]) == body]
    names = list(getattr(env, "state_joints", ()))
    if len(slides) != 1 or model.joint_id2name(slides[0]) not in names:
        return None
    joint = slides[0]
    bodies = list(env.state_bodies)
    owner = next((k for k, b in enumerate(bodies) if _in_subtree(model, body, inner.obj_body_id[b])), None)
    if owner is None:
        return None
    root = inner.obj_body_id[bodies[owner]]
    R0, p0 = data.body_xmat[root].reshape(3, 3), data.body_xpos[root]
    axis_world = data.body_xmat[body].reshape(3, 3) @ model.jnt_axis[joint]
    pull = -axis_world  # LIBERO's drawers open towards lower joint positions
    # the handle: the drawer's collision geom that stands out furthest in the pull direction
    best, best_reach = None, -math.inf
    for g in range(model.ngeom):
        if int(model.geom_bodyid[g]) != body or (model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0):
            continue
        R = data.geom_xmat[g].reshape(3, 3)
        centre = data.geom_xpos[g] + R @ model.geom_aabb[g][:3]
        half = np.abs(R0.T @ R) @ model.geom_aabb[g][3:]
        reach = float(centre @ pull) + float(np.abs(R0 @ half) @ np.abs(pull)) * 0.0
        if reach > best_reach:
            best, best_reach = (R0.T @ (centre - p0), half), reach
    if best is None:
        return None
    q0 = float(data.qpos[model.jnt_qposadr[joint]])
    lo_range = float(model.jnt_range[joint][0])
    return Drawer(
        owner, names.index(model.joint_id2name(joint)), R0.T @ axis_world, q0, best[0], best[1], lo_range + 0.01
    )


def _fixture_geoms(inner) -> list[int]:
    """The collision geoms of the scene's fixtures (not the table or floor), in model order."""
    model = inner.sim.model
    roots = [
        inner.obj_body_id[name]
        for name in getattr(inner, "fixtures_dict", {})
        if name in inner.obj_body_id and not (name.endswith("table") or name == "floor")
    ]
    return [
        g
        for g in range(model.ngeom)
        if (model.geom_contype[g] != 0 or model.geom_conaffinity[g] != 0)
        and any(_in_subtree(model, int(model.geom_bodyid[g]), r) for r in roots)
    ]


def _fixture_slides(env) -> np.ndarray:
    """float [n, 5] for the boxes of `_fixture_boxes`: the state joint (index in ``env.state_joints``) of
    the drawer a box slides with, -1 for none; the slide axis in the world; the joint's position now."""
    inner = env.unwrapped.env
    model, data = inner.sim.model, inner.sim.data
    names = list(getattr(env, "state_joints", ()))
    out = []
    for g in _fixture_geoms(inner):
        row = [-1.0, 0.0, 0.0, 0.0, 0.0]
        body = int(model.geom_bodyid[g])
        while body > 0:  # the nearest slide joint up the tree
            slides = [j for j in range(model.njnt) if model.jnt_type[j] == 2 and int(model.jnt_bodyid[j]) == body]
            if slides:
                j = slides[0]
                if model.joint_id2name(j) in names:
                    axis = data.body_xmat[body].reshape(3, 3) @ model.jnt_axis[j]
                    q = float(data.qpos[model.jnt_qposadr[j]])
                    row = [float(names.index(model.joint_id2name(j))), *axis, q]
                break
            body = int(model.body_parentid[body])
        out.append(row)
    return np.array(out).reshape(-1, 5)


def _fixture_boxes(inner) -> np.ndarray:
    """float [n, 15]: each collision geom of the scene's fixtures (not the table or floor) as an oriented
    box in the world: centre (3), half sizes (3), rotation (9, row-major), where it was when read (a
    drawer's boxes slide with its joint: `_fixture_slides`)."""
    sim = inner.sim
    model, data = sim.model, sim.data
    boxes = []
    for g in _fixture_geoms(inner):
        R = data.geom_xmat[g].reshape(3, 3)
        aabb = model.geom_aabb[g]
        boxes.append(np.concatenate([data.geom_xpos[g] + R @ aabb[:3], aabb[3:], R.ravel()]))
    return np.array(boxes).reshape(-1, 15)


def _wall_top(boxes: np.ndarray | None, xy: np.ndarray, radius: float, below: float) -> float:
    """The highest top of the fixture boxes that rise from under height ``below`` within ``radius``
    of ``xy`` (the walls of a drawer the object stands in; an overhang above it does not count)."""
    if boxes is None or not len(boxes):
        return -math.inf
    centre, half, R = boxes[:, :3], boxes[:, 3:6], boxes[:, 6:].reshape(-1, 3, 3)
    extent = np.einsum("bij,bj->bi", np.abs(R), half)  # world-axis half sizes
    near = np.all(np.abs(centre[:, :2] - xy[None]) < extent[:, :2] + radius, axis=1)
    rising = centre[:, 2] - extent[:, 2] < below
    tops = centre[:, 2] + extent[:, 2]
    sel = near & rising
    return float(tops[sel].max()) if sel.any() else -math.inf


def _overhang_escape(boxes: np.ndarray | None, corners: np.ndarray, carry: float) -> tuple[np.ndarray, float] | None:
    """(horizontal shift, lowest overhang bottom) that takes the object's footprint out from under the
    fixture boxes above it that a lift to ``carry`` (its bottom) would hit, the shortest way; None when
    nothing is above it. ``corners`` [8, 3]: the object's collision box in the world."""
    if boxes is None or not len(boxes):
        return None
    centre, half, R = boxes[:, :3], boxes[:, 3:6], boxes[:, 6:].reshape(-1, 3, 3)
    extent = np.einsum("bij,bj->bi", np.abs(R), half)  # world-axis half sizes
    lo, hi = corners.min(0), corners.max(0)
    bottom = centre[:, 2] - extent[:, 2]
    above = (bottom > hi[2] - 0.005) & (bottom < carry + (hi[2] - lo[2]))
    if not above.any():
        return None
    c, e = centre[above, :2], extent[above, :2] + OVERHANG_MARGIN

    def under(shift: np.ndarray) -> bool:
        return bool(np.any(np.all((lo[None, :2] + shift < c + e) & (hi[None, :2] + shift > c - e), axis=1)))

    if not under(np.zeros(2)):
        return None
    for dist in np.arange(0.02, 0.25, 0.02):
        for k in range(16):
            a = k * math.pi / 8
            shift = dist * np.array([math.cos(a), math.sin(a)])
            if not under(shift):
                return shift + OVERHANG_MARGIN * shift / dist, float(bottom[above].min())
    return None


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The distance of ``point`` from the segment ``a``-``b`` (2-D or 3-D)."""
    ab = b - a
    t = float(np.clip((point - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(point - (a + t * ab)))


def _box_clearance(points: np.ndarray, boxes: np.ndarray | None) -> float:
    """The least distance of ``points`` [n, 3] to the oriented ``boxes`` (negative inside one); 1 with none."""
    if boxes is None or not len(boxes):
        return 1.0
    centre, half, R = boxes[:, :3], boxes[:, 3:6], boxes[:, 6:].reshape(-1, 3, 3)
    local = np.einsum("bij,pbi->pbj", R, points[:, None, :] - centre[None])  # R^T (p - c)
    q = np.abs(local) - half[None]
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(-1), 0.0)
    return float((outside + inside).min())


def _turn_plan(env, fixture: str) -> TaskPlan:
    """The plan of turning a fixture's knob on (a hinge about the vertical, on at positive angles):
    grasp the knob's handle across its width above the hinge, then turn the hand."""
    inner = env.unwrapped.env
    sim, model, data = inner.sim, inner.sim.model, inner.sim.data
    root = inner.obj_body_id[fixture]
    hinges = [
        j for j in range(model.njnt) if model.jnt_type[j] == 3 and _in_subtree(model, int(model.jnt_bodyid[j]), root)
    ]
    if (
        len(hinges) != 1
        or abs(float((data.body_xmat[model.jnt_bodyid[hinges[0]]].reshape(3, 3) @ model.jnt_axis[hinges[0]])[2])) < 0.9
    ):
        raise InputError(f"{env.task}: the LIBERO experts turn one vertical knob; {fixture} has {len(hinges)} hinges")
    knob = int(model.jnt_bodyid[hinges[0]])
    parts = _collision_parts(sim, knob)  # in the knob's frame
    R0 = data.body_xmat[root].reshape(3, 3)
    Rk = data.body_xmat[knob].reshape(3, 3)
    # the handle: the tallest collision part; grasp across its narrower horizontal side, above the hinge
    handle = parts[int(np.argmax(parts[:, 1, 2]))]
    size = handle[1] - handle[0]
    across = 0 if size[0] < size[1] else 1
    axis_world = Rk[:, across]
    top_world = data.body_xpos[knob] + Rk @ np.array([0.0, 0.0, handle[1, 2] - 0.012])
    offset = R0.T @ (top_world - data.body_xpos[root])
    axis_local = R0.T @ axis_world
    yaw = math.atan2(axis_local[1], axis_local[0])
    poses = env.object_poses()
    bodies = list(env.state_bodies)
    width = float(size[across])
    target = Target("turn", bodies.index(fixture), np.zeros(3), np.zeros(3), 0.0)
    lo, hi = handle[0], handle[1]
    return TaskPlan(
        env.task,
        len(poses),
        bodies.index(fixture),
        lo,
        hi,
        target,
        None,
        "turn",
        np.array([*offset, yaw, width, list(env.state_joints).index(model.joint_id2name(hinges[0]))]),
        joints=len(env.joint_positions()),
    )


def _in_subtree(model, body: int, root: int) -> bool:
    while body > 0 and body != root:
        body = int(model.body_parentid[body])
    return body == root


def _collision_box(sim, root: int) -> tuple[np.ndarray, np.ndarray]:
    """The box around the collision geoms of body ``root``'s subtree, in ``root``'s frame."""
    parts = _collision_parts(sim, root)
    return parts[:, 0].min(0), parts[:, 1].max(0)


def _collision_parts(sim, root: int) -> np.ndarray:
    """float [n, 2, 3]: the box (lo, hi) of each collision geom of body ``root``'s subtree, in ``root``'s frame."""
    model, data = sim.model, sim.data
    in_tree = {b for b in range(model.nbody) if _in_subtree(model, b, root)}
    R0 = data.body_xmat[root].reshape(3, 3)
    p0 = data.body_xpos[root]
    pts = []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in in_tree or (model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0):
            continue
        aabb = model.geom_aabb[g]
        corners = aabb[:3] + signs * aabb[3:]
        world = data.geom_xpos[g] + corners @ data.geom_xmat[g].reshape(3, 3).T
        local = (world - p0) @ R0
        pts.append([local.min(0), local.max(0)])
    if not pts:
        raise InputError("a LIBERO object without collision geoms cannot be grasped by the scripted expert")
    return np.array(pts)


class LiberoExpert:
    """The closed-loop expert of one LIBERO pick-and-place task: ``act(state) -> action [7]``."""

    def __init__(self, plan: TaskPlan) -> None:
        self.plan = plan
        self.state_dim = 8 + 7 * plan.slots + plan.joints
        self.steps = tuple(LiberoExpert(step) for step in plan.steps)

    def done(self, state: np.ndarray) -> bool:
        """Whether this (single-goal) plan's predicate holds in ``state`` and the hand has let go: a knob
        turned into its on range, an object standing in or on its region, not held."""
        state = np.asarray(state, dtype=np.float64)
        if self.plan.move == "turn":
            q = float(state[8 + 7 * self.plan.slots + int(self.plan.knob[5])])
            return KNOB_ON[0] + 0.05 < q < KNOB_ON[1] - 0.05
        if self.plan.move not in ("pick", "push"):
            raise InputError(f"{self.plan.task}: a step of a LIBERO sequence is a pick, push or turn")
        p, R = self._pose(state, self.plan.obj_slot)
        corners = self._object_box(p, R)
        centre = corners.mean(0)
        region, surface = self._place_spot(state)
        t = self.plan.target
        place_bottom = surface + (0.01 if t.kind == "on" else 0.02)
        placed = (
            np.linalg.norm(centre[:2] - region[:2]) < max(0.02, min(t.half[0], t.half[1]) * 0.6)
            and corners[:, 2].min() < place_bottom + 0.02
        )
        hand, fingers = state[:3], state[6] - state[7]
        let_go = fingers > GRIPPER_OPEN_WIDTH - 0.015 or float(np.linalg.norm(hand - centre)) > 0.1
        return bool(placed and let_go)

    # -- geometry read off the state ----------------------------------------------------------

    def _pose(self, state: np.ndarray, slot: int) -> tuple[np.ndarray, np.ndarray]:
        s = state[8 + 7 * slot : 15 + 7 * slot]
        return s[:3].astype(np.float64), _quat_to_mat(s[3:].astype(np.float64))

    def _object_box(self, p: np.ndarray, R: np.ndarray) -> np.ndarray:
        lo, hi = self.plan.lo, self.plan.hi
        signs = np.array([[sx, sy, sz] for sx in (0, 1) for sy in (0, 1) for sz in (0, 1)])
        local = lo + signs * (hi - lo)
        return p + local @ R.T

    def _target(self, state: np.ndarray) -> tuple[np.ndarray, float]:
        """(region centre, surface height) in the world."""
        t = self.plan.target
        if t.slot < 0:
            return t.offset.copy(), float(t.offset[2] + t.top)
        p, R = self._pose(state, t.slot)
        centre = p + R @ t.offset
        if t.drawer is not None:  # moved with its drawer
            centre = centre + R @ t.drawer.axis * (self._joint(state, t.drawer) - t.drawer.q0)
        return centre, float(centre[2] + t.top)

    def _fixtures(self, state: np.ndarray) -> np.ndarray | None:
        """The fixtures' collision boxes now: a drawer's boxes moved along its slide by its joint."""
        boxes, slides = self.plan.fixtures, self.plan.fixture_slides
        if boxes is None or slides is None or not len(slides) or not np.any(slides[:, 0] >= 0):
            return boxes
        boxes = boxes.copy()
        moving = slides[:, 0] >= 0
        q = state[8 + 7 * self.plan.slots + slides[moving, 0].astype(int)]
        boxes[moving, :3] += slides[moving, 1:4] * (q - slides[moving, 4])[:, None]
        return boxes

    def _drawer_boxes(self, state: np.ndarray) -> np.ndarray | None:
        """The boxes of the fixtures' parts that slide with a drawer joint, where they are now."""
        boxes, slides = self._fixtures(state), self.plan.fixture_slides
        if boxes is None or slides is None or len(slides) != len(boxes):
            return None
        return boxes[slides[:, 0] >= 0]

    def _joint(self, state: np.ndarray, drawer: Drawer) -> float:
        return float(state[8 + 7 * self.plan.slots + drawer.joint])

    def _handle(self, state: np.ndarray, drawer: Drawer) -> tuple[np.ndarray, np.ndarray, float]:
        """(handle centre in the world now, pull direction (horizontal unit), handle width along it)."""
        p, R = self._pose(state, drawer.slot)
        axis = R @ drawer.axis
        centre = p + R @ drawer.handle + axis * (self._joint(state, drawer) - drawer.q0)
        pull = -axis[:2] / max(float(np.linalg.norm(axis[:2])), 1e-9)
        width = 2.0 * float(np.abs(R @ drawer.half)[:2] @ np.abs(pull))
        return centre, pull, width

    def _pull(self, state: np.ndarray, drawer: Drawer) -> np.ndarray:
        """Open a drawer: the hand turned level, pointing into the drawer with the fingers one above the
        other, comes at the handle bar from the front, closes on it and pulls until the joint reaches
        ``open_at``. (From above, the fingers do not fit between the bar and the drawer's front.)"""
        hand, hand_R, fingers = state[:3], _axis_angle_to_mat(state[3:6]), state[6] - state[7]
        handle, pull, _width = self._handle(state, drawer)
        pull3 = np.array([pull[0], pull[1], 0.0])
        point = handle + pull3 * HANDLE_REACH
        rel = hand - point
        along = float(rel @ pull3)
        off_lane = float(np.linalg.norm(rel - along * pull3))
        level = _level_hand(pull)
        turned = float(np.linalg.norm(_mat_to_axis_angle(level @ hand_R.T)))
        at = off_lane < 0.015 and abs(along) < 0.015
        gripper = OPEN
        bar = 2.0 * float(np.abs(_quat_to_mat(state[11 + 7 * drawer.slot : 15 + 7 * drawer.slot]) @ drawer.half)[2])
        if at and 0.004 < fingers < bar + 0.01:  # closed on the bar: pull
            goal, gripper = point + pull3 * PULL_STEP, CLOSE
        elif at and fingers > 0.004 and (fingers < HANDLE_OPENING - 0.012 or max(abs(along), off_lane) < 0.012):
            goal, gripper = point.copy(), CLOSE  # at the bar: close on it
        elif fingers < HANDLE_OPENING - 0.01 and not at:  # closed on nothing: back out, opening
            goal = hand + pull3 * 0.03
        elif turned < 0.2 and off_lane < 0.015 and 0.0 < along < 0.15:  # in the lane in front: go in
            goal = point.copy()
        else:  # to the front of the handle, turning level on the way
            goal = point + pull3 * 0.10
            if along < 0.02 and off_lane > 0.01:  # beside or behind the handle: back out first
                goal = hand + pull3 * 0.05 + np.array([0.0, 0.0, 0.02])
            elif float(np.linalg.norm((goal - hand)[:2])) > 0.03:
                # far from the front: travel above it and go down there (at the handle's height the
                # level hand sweeps the objects on the table in front of the drawers along)
                goal[2] = max(goal[2] + HANDLE_TRAVEL, min(hand[2], goal[2] + 2 * HANDLE_TRAVEL))
        if gripper == OPEN and fingers > HANDLE_OPENING - 0.006:  # hold the fingers about HANDLE_OPENING
            gripper = CLOSE if fingers > HANDLE_OPENING + 0.006 else 0.0
        action = np.zeros(7)
        err = goal - hand
        # a level hand sags under the controller's steady error: push on towards the goal
        action[:3] = np.clip(err * 12.0 + 0.2 * err / max(float(np.linalg.norm(err)), 0.005), -1.0, 1.0)
        if gripper == CLOSE and at and fingers < bar + 0.01:  # pull steadily: a fast pull slips off the bar
            step = goal - hand
            action[:3] = np.clip(step / max(float(np.linalg.norm(step)), 1e-6) * PULL_SPEED, -1.0, 1.0)
        action[3:6] = np.clip(_mat_to_axis_angle(level @ hand_R.T) / ROT_UNIT, -1.0, 1.0)
        action[6] = gripper
        return action

    def grasp(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """(grasp point, finger axis (horizontal unit), expected finger width, rim pinch?)."""
        p, R = self._pose(state, self.plan.obj_slot)
        corners = self._object_box(p, R)
        centre = corners.mean(0)
        zmin, zmax = corners[:, 2].min(), corners[:, 2].max()
        size = self.plan.hi - self.plan.lo
        best = None
        for axis in range(3):
            d = R[:, axis]
            if abs(d[2]) > 0.5:
                continue
            width = float(size[axis])
            if best is None or width < best[1]:
                best = (d[:2] / np.linalg.norm(d[:2]), width, axis)
        if best is not None and best[1] <= MAX_GRASP_WIDTH:
            axis2, width, k = best
            z = max(zmin + 0.015, zmax - GRASP_DEPTH)
            return np.array([centre[0], centre[1], z]), axis2, self._width_at(R, k, z - p[2], width), False
        # a bowl: pinch its wall at the rim, on the side furthest from the other bodies
        radius = 0.5 * float(min(size[0], size[1])) - RIM_INSET
        others = [
            self._pose(state, s)[0]
            for s in range(self.plan.slots)
            if s != self.plan.obj_slot and s not in self.plan.fixture_slots and np.any(state[11 + 7 * s : 15 + 7 * s])
        ]
        home = HOME_XY - centre[:2]
        home = home / max(float(np.linalg.norm(home)), 1e-6)
        best_dir, best_score = None, -math.inf
        z = zmax - RIM_DEPTH
        fixtures = self._fixtures(state)
        for k in range(8):
            a = k * math.pi / 4
            u = np.array([math.cos(a), math.sin(a)])
            point = centre[:2] + radius * u
            score = min((float(np.linalg.norm(point - o[:2])) for o in others), default=1.0)
            # clear of neighbours first; then the side facing the hand's home (reachable) and an unturned hand
            score = min(score, 0.10) - 0.015 * (1.0 - float(u @ home)) - 0.01 * abs(math.sin(a))
            # the open fingers must go down clear of the fixtures (a drawer's walls, a cabinet's top)
            clear = _box_clearance(self._finger_points(np.array([*point, z]), u), fixtures)
            score -= 10.0 * max(0.0, FINGER_CLEARANCE - clear)
            if score > best_score:
                best_dir, best_score = u, score
        point = np.array([*(centre[:2] + radius * best_dir), z])
        return point, best_dir, 0.008, True

    @staticmethod
    def _finger_points(point: np.ndarray, axis: np.ndarray) -> np.ndarray:
        """Points on the two open fingers (and the hand above them) grasping at ``point`` across ``axis``."""
        side = np.array([-axis[1], axis[0]])
        out = []
        for along in (-GRIPPER_OPEN_WIDTH / 2 - 0.005, GRIPPER_OPEN_WIDTH / 2 + 0.005):
            for across in (-0.01, 0.0, 0.01):
                for up in (0.0, 0.02, 0.04, 0.06):
                    out.append([*(point[:2] + along * axis + across * side), point[2] + up])
        for along in np.linspace(-0.09, 0.09, 7):  # the hand, above the fingers
            for across in (-0.03, 0.03):
                out.append([*(point[:2] + along * axis + across * side), point[2] + 0.08])
        return np.array(out)

    def _retreat(self, state: np.ndarray, drawer: Drawer) -> np.ndarray | None:
        """After opening a drawer: back the level hand out from its handle (and open) before it turns
        down; None once clear of it or already pointing down."""
        hand, hand_R = state[:3], _axis_angle_to_mat(state[3:6])
        if float(hand_R[2, 2]) < -0.98:  # pointing down
            return None
        handle, pull, _width = self._handle(state, drawer)
        pull3 = np.array([pull[0], pull[1], 0.0])
        action = np.zeros(7)
        action[6] = OPEN
        clear = float((hand - handle) @ pull3) > RETREAT or float(np.linalg.norm((hand - handle)[:2])) > 2 * RETREAT
        if clear or float(hand_R[2, 2]) < -0.3:  # (or turning down already: going home may come nearer it again)
            # clear of it: turn down where it is, the fingers across the pull (a pitch back, no roll)
            # and come back towards the hand's home (the arm stretched far out loses its reach)
            down = _rot_z(math.atan2(pull[0], -pull[1]) + math.pi / 2) @ HAND_DOWN
            action[3:6] = np.clip(_mat_to_axis_angle(down @ hand_R.T) / ROT_UNIT, -0.4, 0.4)
            action[:2] = np.clip((HOME_XY - hand[:2]) * 12.0, -0.5, 0.5)
            return action
        action[:3] = np.clip((pull3 * 0.08 + np.array([0.0, 0.0, 0.025])) * 12.0, -1.0, 1.0)
        return action

    def _inner_radius(self) -> float:
        """How far from its centre the closed fingertips may push an object from inside (a bowl's wall)."""
        size = self.plan.hi - self.plan.lo
        return max(0.04, 0.5 * float(min(size[0], size[1])) - 0.012)

    def _aside(self, state: np.ndarray, drawer: Drawer) -> np.ndarray | None:
        """Where to push the object to before opening ``drawer``, or None when it is not in the way.

        Standing partly under the opened drawer, a bowl cannot be grasped from above (the hand comes
        down through the drawer) nor lifted (its rim hits the drawer's floor): LIBERO-Goal "open the top
        drawer and put the bowl inside". It is in the way when its footprint comes within BLOCK_MARGIN
        of the opened drawer's footprint; it goes to the nearest spot of a world-fixed grid that is
        ASIDE_MARGIN clear of that footprint and clear of the other objects and the fixtures."""
        slides = self.plan.fixture_slides
        if self.plan.fixtures is None or slides is None or not np.any(slides[:, 0] == drawer.joint):
            return None
        opened = state.copy()
        opened[8 + 7 * self.plan.slots + drawer.joint] = drawer.open_at
        boxes = self._fixtures(opened)
        moving = boxes[slides[:, 0] == drawer.joint]
        extent = np.einsum("bij,bj->bi", np.abs(moving[:, 6:].reshape(-1, 3, 3)), moving[:, 3:6])
        d_lo, d_hi = (moving[:, :2] - extent[:, :2]).min(0), (moving[:, :2] + extent[:, :2]).max(0)
        p, R = self._pose(state, self.plan.obj_slot)
        corners = self._object_box(p, R)
        if float(corners[:, 2].max()) > float((moving[:, 2] - extent[:, 2]).min()):
            return None  # not under it
        # its footprint: a square around its centre, whatever its yaw or tilt (a pushed bowl turns and tips)
        centre = corners[:, :2].mean(0)
        radius = 0.5 * float(max(self.plan.hi[0] - self.plan.lo[0], self.plan.hi[1] - self.plan.lo[1]))
        half = np.array([radius, radius])
        if np.any(centre - half > d_hi + BLOCK_MARGIN) or np.any(centre + half < d_lo - BLOCK_MARGIN):
            return None
        others = [
            self._pose(state, s)[0][:2]
            for s in range(self.plan.slots)
            if s != self.plan.obj_slot and s not in self.plan.fixture_slots and np.any(state[11 + 7 * s : 15 + 7 * s])
        ]
        low_fixtures = boxes[slides[:, 0] != drawer.joint]
        ring = np.array([[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)])
        base = np.round(centre / ASIDE_GRID) * ASIDE_GRID
        best, best_d = None, math.inf
        for i in range(-12, 13):
            for j in range(-12, 13):
                spot = base + ASIDE_GRID * np.array([i, j])
                dist = float(np.linalg.norm(spot - centre))
                if dist >= best_d:
                    continue
                gap = np.maximum(np.maximum(d_lo - (spot + half), (spot - half) - d_hi), 0.0)
                if float(np.linalg.norm(gap)) < ASIDE_MARGIN:
                    continue
                # clear of the other objects, there and on the way (it would shove them along)
                # (no closer than it is already: it may start next to one)
                if any(
                    _segment_distance(o, centre, spot) < min(radius + 0.04, float(np.linalg.norm(o - centre)) - 0.005)
                    for o in others
                ):
                    continue
                # (at its rim's height: flat fixtures, a stove's plate, it may stand on)
                points = np.column_stack([spot + radius * ring, np.full(8, float(corners[:, 2].max()) - 0.01)])
                if _box_clearance(points, low_fixtures) < 0.01:
                    continue
                best, best_d = spot, dist
        if best is None:
            return None
        return np.array([best[0], best[1], float(corners[:, 2].min())])

    def _rise_for_pull(self, state: np.ndarray, drawer: Drawer) -> np.ndarray | None:
        """After pushing an object aside, low on the table: straight up, pointing down, clear of it before
        turning level for the handle (turned level down there, the arm ran into its limits)."""
        hand, hand_R = state[:3], _axis_angle_to_mat(state[3:6])
        handle, _pull, _width = self._handle(state, drawer)
        height = float(handle[2]) + HANDLE_TRAVEL
        p, R = self._pose(state, self.plan.obj_slot)
        top = float(self._object_box(p, R)[:, 2].max())
        if float(hand_R[2, 2]) > -0.9 or hand[2] > min(height - 0.02, top + 0.08):
            return None
        goal = np.array([hand[0], hand[1], height])
        action = np.zeros(7)
        action[:3] = np.clip((goal - hand) * 12.0, -1.0, 1.0)
        action[3:6] = self._rotation_action(hand_R, None)
        action[6] = OPEN
        return action

    def _place_spot(self, state: np.ndarray) -> tuple[np.ndarray, float]:
        """(where to place, surface height): the target region's centre, or, where other objects already
        stand in an In region (a basket holding the first of two), the spot of a 3 x 3 grid over it
        furthest from them (on top of the first, the second stood too high to let go inside)."""
        region, surface = self._target(state)
        t = self.plan.target
        if t.kind != "in":
            return region, surface
        inside = []
        for k in range(self.plan.slots):
            if (
                k in (self.plan.obj_slot, t.slot)
                or k in self.plan.fixture_slots
                or not np.any(state[11 + 7 * k : 15 + 7 * k])
            ):
                continue
            q = self._pose(state, k)[0]
            if np.all(np.abs(q[:2] - region[:2]) < t.half[:2]) and abs(q[2] - region[2]) < t.half[2]:
                inside.append(q[:2])
        if not inside:
            return region, surface
        reach = np.maximum(t.half[:2] - 0.5 * float(np.min((self.plan.hi - self.plan.lo)[:2])), 0.0)
        best, best_d = region, -math.inf
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                spot = region.copy()
                spot[:2] += reach * np.array([i, j])
                d = min(float(np.linalg.norm(spot[:2] - q)) for q in inside)
                if d > best_d + 1e-9:
                    best, best_d = spot, d
        return best, surface

    def _leave(self, state: np.ndarray) -> np.ndarray | None:
        """Straight up, open, from the object just placed until the hand is LEAVE_HEIGHT above its top
        (then the next step of a sequence starts): going sideways low, the hand dragged the basket it
        had just let go in along. None once clear of it."""
        hand, hand_R = state[:3], _axis_angle_to_mat(state[3:6])
        p, R = self._pose(state, self.plan.obj_slot)
        corners = self._object_box(p, R)
        near = float(np.linalg.norm(hand[:2] - corners.mean(0)[:2])) < 0.15
        if not near or hand[2] > float(corners[:, 2].max()) + LEAVE_HEIGHT:
            return None
        action = np.zeros(7)
        action[2] = 1.0
        action[3:6] = self._rotation_action(hand_R, None)
        action[6] = OPEN
        return action

    def _over_rim(self, hand: np.ndarray, region: np.ndarray, obj_bottom: float) -> bool:
        """Whether the hand, too long to go into the container (a basket), is down on its walls with the
        object's bottom below the region's top (it drops in): lower it cannot go. (A goal of one In ends
        before this: In holds while the object is still held; in a sequence the next step waits for the
        release.)"""
        t = self.plan.target
        if t.drawer is not None or HAND_HALF_LENGTH <= min(t.half[0], t.half[1]) + 0.005:
            return False  # a drawer (its region reaches far above its floor) or a container the hand fits in
        top = float(region[2] + t.half[2])
        return hand[2] < top - HAND_BELOW_RIM + 0.012 and float(obj_bottom) < top

    def _holding_object(self, state: np.ndarray) -> bool:
        """Whether the object to move is lifted off where it stood (then a drawer is left as it is)."""
        hand, fingers = state[:3], state[6] - state[7]
        p, _R = self._pose(state, self.plan.obj_slot)
        return 0.004 < fingers < GRIPPER_OPEN_WIDTH - 0.01 and float(np.linalg.norm(hand - p)) < 0.12

    def _width_at(self, R: np.ndarray, axis: int, height: float, box_width: float) -> float:
        """The object's width along its own ``axis`` at ``height`` above its origin (a bottle's neck is
        thinner than its box): the span of the collision geoms that reach that height; the box's
        width when the object is not upright."""
        parts = self.plan.parts
        if parts is None or R[2, 2] < 0.95:
            return box_width
        at = parts[(parts[:, 0, 2] <= height) & (parts[:, 1, 2] >= height)]
        if not len(at):
            return box_width
        return float(at[:, 1, axis].max() - at[:, 0, axis].min())

    # -- the controller -------------------------------------------------------------------------

    def act(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if self.plan.move == "sequence":  # the first step whose predicate does not hold (the last when all do)
            k = next((i for i, e in enumerate(self.steps) if not e.done(state)), len(self.steps) - 1)
            if k > 0 and self.steps[k - 1].plan.move == "pick":
                leave = self.steps[k - 1]._leave(state)
                if leave is not None:
                    return leave
            return self.steps[k].act(state)
        if self.plan.move == "turn":
            return self._turn(state)
        if self.plan.move == "push":
            return self._push(state)
        drawer = self.plan.drawer
        if self.plan.move == "pull" or (drawer is not None and self._joint(state, drawer) > drawer.open_at + 0.02):
            if drawer is not None and (self.plan.move == "pull" or not self._holding_object(state)):
                if self.plan.move == "pick":  # the object under the opened drawer: push it clear first
                    aside = self._aside(state, drawer)
                    if aside is not None:
                        return self._push(state, aside, inside=self._inner_radius(), wall=True)
                    rise = self._rise_for_pull(state, drawer)
                    if rise is not None:
                        return rise
                return self._pull(state, drawer)
        if drawer is not None and self.plan.move == "pick":
            retreat = self._retreat(state, drawer)
            if retreat is not None:
                return retreat
        hand, hand_R, fingers = state[:3], _axis_angle_to_mat(state[3:6]), state[6] - state[7]
        obj_p, obj_R = self._pose(state, self.plan.obj_slot)
        corners = self._object_box(obj_p, obj_R)
        obj_centre = corners.mean(0)
        obj_bottom = corners[:, 2].min()
        point, axis, width, rim = self.grasp(state)
        region, surface = self._place_spot(state)
        t = self.plan.target

        near = np.linalg.norm(hand[:2] - point[:2]) < 0.02 and abs(hand[2] - point[2]) < 0.025
        if rim:  # any point of the rim: the side chosen to grasp may change once the bowl moves
            radius = float(np.linalg.norm(point[:2] - obj_centre[:2]))
            slack = 0.045 if 0.001 < fingers < 0.03 else 0.025  # a pinched bowl swings and tilts when lifted
            at_rim = (
                abs(float(np.linalg.norm(hand[:2] - obj_centre[:2])) - radius) < slack
                and abs(hand[2] - point[2]) < slack + 0.005
            )
            held = 0.001 < fingers < 0.03 and at_rim
        else:
            held = (
                0.004 < fingers < width + 0.006 and near
            )  # stopped by the object (a neck may be thinner than its box)

        # where the object should go: centre over the region, bottom on the surface
        place_bottom = surface + (0.01 if t.kind == "on" else 0.02)
        lift_bottom = surface + 0.12  # clear of the other objects on the way
        if t.kind == "in":
            lift_bottom = max(lift_bottom, region[2] + t.half[2] + 0.04)
        placed = (
            np.linalg.norm(obj_centre[:2] - region[:2]) < max(0.02, min(t.half[0], t.half[1]) * 0.6)
            and obj_bottom < place_bottom + 0.02
        )

        gripper = OPEN
        yaw_axis = axis
        if held:
            gripper, yaw_axis = CLOSE, None  # keep the yaw it was grasped at
            err_xy = region[:2] - obj_centre[:2]
            if fingers > width + (0.005 if rim else 0.002):  # still closing on it
                goal = hand.copy()
            elif np.linalg.norm(err_xy) > (0.04 if obj_bottom < place_bottom + 0.04 else 0.015):
                reach = 0.5 * float(np.linalg.norm(corners[:, :2].max(0) - corners[:, :2].min(0)))
                walls = _wall_top(self._fixtures(state), obj_centre[:2], reach + 0.02, obj_bottom + 0.02)
                carry = max(lift_bottom, place_bottom + 0.05, walls + 0.03)  # out over a drawer's walls
                goal = hand + np.array([0.0, 0.0, max(0.0, carry - obj_bottom)])  # carried high: stay high
                if obj_bottom > carry - 0.03:
                    goal[:2] = hand[:2] + err_xy
                else:  # under an open drawer: out from under it low first (its floor tilts the object)
                    foot = corners
                    if rim:  # a bowl is round: its turned box's corners stand out past it
                        foot = corners.copy()
                        r = 0.5 * float(max(self.plan.hi[0] - self.plan.lo[0], self.plan.hi[1] - self.plan.lo[1]))
                        foot[:, :2] = obj_centre[:2] + np.sign(corners[:, :2] - obj_centre[:2]) * r
                    escape = _overhang_escape(self._drawer_boxes(state), foot, carry)
                    if escape is not None:
                        shift, ceiling = escape
                        up = min(0.02, ceiling - float(corners[:, 2].max()) - 0.015)
                        goal = hand + np.array([*shift, up])
            elif t.kind == "in" and self._over_rim(hand, region, obj_bottom):
                goal, gripper = hand.copy(), OPEN  # the hand rests on the container's walls: let go inside it
            elif obj_bottom > place_bottom + 0.01:
                # lower past the place height: under load the controller stops short of its target
                goal = hand + np.array([*err_xy, place_bottom - obj_bottom - 0.03])
            elif np.linalg.norm(err_xy) > 0.015:  # low but off: correct at this height
                goal = hand + np.array([*err_xy, 0.0])
            else:
                goal, gripper = hand.copy(), OPEN
        elif placed and np.linalg.norm(hand[:2] - obj_centre[:2]) < 0.15:
            goal = hand + np.array([0.0, 0.0, 0.1])  # leave it: straight up, open
            yaw_axis = None
        else:
            aligned_xy = np.linalg.norm(hand[:2] - point[:2]) < 0.012
            yaw_err = self._yaw_error(hand_R, axis)
            if near and abs(hand[2] - point[2]) < 0.012 and fingers > 0.004:
                goal, gripper = point.copy(), CLOSE  # at the grasp point: close
            elif fingers < GRIPPER_OPEN_WIDTH - 0.01:
                goal = hand + np.array([0.0, 0.0, 0.03])  # opening (after a miss): back up
            else:
                above = point + np.array([0.0, 0.0, 0.08])
                if aligned_xy and abs(yaw_err) < 0.15:
                    goal = point.copy()
                else:
                    goal = np.array([point[0], point[1], max(above[2], min(hand[2], above[2] + 0.1))])
                    if hand[2] < point[2] + 0.04 and not aligned_xy:  # low beside it: rise first
                        goal[:2] = hand[:2]
        action = np.zeros(7)
        action[:3] = np.clip((goal - hand) * 12.0, -1.0, 1.0)
        action[3:6] = self._rotation_action(hand_R, yaw_axis)
        action[6] = gripper
        return action

    def _turn(self, state: np.ndarray) -> np.ndarray:
        """Grasp the knob's handle above its hinge, then turn the hand by TURN_ANGLE (the knob follows)."""
        hand, hand_R, fingers = state[:3], _axis_angle_to_mat(state[3:6]), state[6] - state[7]
        p, R = self._pose(state, self.plan.obj_slot)
        ox, oy, oz, yaw, width, joint = self.plan.knob
        point = p + R @ np.array([ox, oy, oz])
        q = float(state[8 + 7 * self.plan.slots + int(joint)])  # the knob's angle: its handle turned with it
        a = math.atan2(R[1, 0], R[0, 0]) + yaw + q
        axis = np.array([math.cos(a), math.sin(a)])
        at_knob = np.linalg.norm(hand[:2] - point[:2]) < 0.02 and abs(hand[2] - point[2]) < 0.02
        gripper, yaw_axis = OPEN, axis
        # pointing straight down, the hand reaches LIBERO's stove knob (near the robot's base) only with
        # the elbow at its limit and often not at all: tilt the fingertips towards the hand's home
        home = np.array([*(HOME_XY - point[:2]), 0.0])
        home /= max(float(np.linalg.norm(home)), 1e-9)
        tilt = _axis_angle_to_mat(np.cross(home, [0.0, 0.0, 1.0]) * TURN_TILT)
        if at_knob and 0.004 < fingers < width + 0.015:  # holding the handle (tilted fingers catch it aslant)
            # turn the hand by what the knob (its angle in the state's joint block) still lacks
            f = hand_R[:2, 1]
            phi = math.atan2(f[0], -f[1]) + float(np.clip(TURN_ANGLE - q, -1.0, 1.0))
            goal, gripper = point.copy(), CLOSE
            action = np.zeros(7)
            action[:3] = np.clip((goal - hand) * 12.0, -1.0, 1.0)
            desired = tilt @ _rot_z(phi) @ HAND_DOWN
            action[3:6] = np.clip(_mat_to_axis_angle(desired @ hand_R.T) / ROT_UNIT, -1.0, 1.0)
            action[6] = gripper
            return action
        goal, gripper = self._approach(hand, hand_R, fingers, point, axis)
        action = np.zeros(7)
        action[:3] = np.clip((goal - hand) * 12.0, -1.0, 1.0)
        action[3:6] = self._rotation_action(hand_R, yaw_axis, tilt=tilt)
        action[6] = gripper
        return action

    def _approach(self, hand, hand_R, fingers, point, axis) -> tuple[np.ndarray, float]:
        """(goal, gripper) of going to a grasp point open, at the finger axis, from above, and closing there."""
        near = np.linalg.norm(hand[:2] - point[:2]) < 0.02 and abs(hand[2] - point[2]) < 0.025
        aligned_xy = np.linalg.norm(hand[:2] - point[:2]) < 0.012
        yaw_err = self._yaw_error(hand_R, axis)
        if near and abs(hand[2] - point[2]) < 0.012 and fingers > 0.004:
            return point.copy(), CLOSE
        if fingers < GRIPPER_OPEN_WIDTH - 0.01:
            return hand + np.array([0.0, 0.0, 0.03]), OPEN  # opening (after a miss): back up
        above = point + np.array([0.0, 0.0, 0.08])
        if aligned_xy and abs(yaw_err) < 0.15:
            return point.copy(), OPEN
        goal = np.array([point[0], point[1], max(above[2], min(hand[2], above[2] + 0.1))])
        if hand[2] < point[2] + 0.04 and not aligned_xy:  # low beside it: rise first
            goal[:2] = hand[:2]
        return goal, OPEN

    def _push(
        self, state: np.ndarray, region: np.ndarray | None = None, inside: float = 0.04, wall: bool = False
    ) -> np.ndarray:
        """Slide a flat object (a plate) over the table to its region (or to ``region``): the closed
        fingertips lowered into it just behind its centre, then moved along the line from the object to
        the region, so that they drag it by its floor and the inside of its rim (the hand stays over the
        object, within ``inside`` of its centre: clear of the fixtures around it). ``wall``: push a bowl
        by the inside of its wall at WALL_PUSH_HEIGHT above its bottom, not pressing on its floor (pressed
        on one side, a bowl tips)."""
        hand, hand_R = state[:3], _axis_angle_to_mat(state[3:6])
        p, R = self._pose(state, self.plan.obj_slot)
        centre = self._object_box(p, R).mean(0)
        if region is None:
            region, _surface = self._target(state)
        err = region[:2] - centre[:2]
        dist = float(np.linalg.norm(err))
        d = err / max(dist, 1e-6)
        low = p[2] + PUSH_HEIGHT
        press = 0.005
        if wall:
            low, press = float(self._object_box(p, R)[:, 2].min()) + WALL_PUSH_HEIGHT, 0.0
        start = np.array([*(centre[:2] - d * 0.01), low])
        pushing = hand[2] < low + 0.03 and float(np.linalg.norm(hand[:2] - centre[:2])) < inside + (
            0.01 if wall else 0.0
        )
        if pushing:  # in it: drag it along the line (firmly: it may shove a neighbour)
            reach = inside if wall else 0.0  # the wall it pushes on is this far ahead of the centre
            goal = np.array([*(start[:2] + d * min(PUSH_STEP + reach, dist + reach + 0.005)), low - press])
        elif np.linalg.norm(hand[:2] - start[:2]) < 0.012:
            goal = start.copy()
        elif hand[2] < low + 0.05:
            goal = np.array([hand[0], hand[1], low + 0.08])  # low elsewhere: rise first
        else:
            goal = np.array([start[0], start[1], max(hand[2], low + 0.08)])
        action = np.zeros(7)
        action[:3] = np.clip((goal - hand) * 12.0, -1.0, 1.0)
        if pushing:  # at least PUSH_SPEED towards the goal: the controller stalls on the drag otherwise
            step = goal[:2] - hand[:2]
            action[:2] = (
                step / max(float(np.linalg.norm(step)), 1e-6) * max(PUSH_SPEED, float(np.linalg.norm(action[:2])))
            )
            action[:2] = np.clip(action[:2], -1.0, 1.0)
        action[3:6] = self._rotation_action(hand_R, np.array([-d[1], d[0]]))
        action[6] = CLOSE
        return action

    @staticmethod
    def _yaw_error(hand_R: np.ndarray, axis: np.ndarray) -> float:
        f = hand_R[:2, 1]
        ang = math.atan2(axis[1], axis[0]) - math.atan2(f[1], f[0])
        return (ang + math.pi / 2) % math.pi - math.pi / 2

    @staticmethod
    def _rotation_action(hand_R: np.ndarray, axis: np.ndarray | None, tilt: np.ndarray | None = None) -> np.ndarray:
        """Turn towards the hand pointing down with its fingers along ``axis`` (None: keep the yaw),
        tilted by the world rotation ``tilt`` if given."""
        f = hand_R[:2, 1]
        phi_now = math.atan2(f[0], -f[1])  # HAND_DOWN's finger axis is -y: rotated by phi -> (sin, -cos)
        if axis is None:
            phi = phi_now
        else:
            phi = math.atan2(axis[0], -axis[1])
            # the fingers are symmetric: of phi + k pi (within the wrist's range) the nearest to now
            options = [phi + k * math.pi for k in (-2, -1, 0, 1, 2) if abs(phi + k * math.pi) <= MAX_YAW]
            phi = min(options, key=lambda c: abs(c - phi_now))
        desired = _rot_z(phi) @ HAND_DOWN
        if tilt is not None:  # the hand tilted off the vertical (a rotation applied in the world)
            desired = tilt @ desired
        err = _mat_to_axis_angle(desired @ hand_R.T)
        return np.clip(err / ROT_UNIT, -1.0, 1.0)
