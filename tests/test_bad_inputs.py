"""Bad input through the CLI (issue 7). Every kind in `BAD_INPUTS` must give exit code 2, exactly one
line on stderr that names the problem, nothing on stdout, and write nothing: every file and folder
under the test's directory (also the working directory) is the same before and after.

The table runs `policytrim.cli.main` in-process (fast); a few rows also run as real subprocesses to
show the process's exit status and that no traceback escapes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file

import policytrim
from fixtures.make_fixtures import random_demos
from policytrim.cli import main
from policytrim.config import EnvConfig, PolicyConfig, RunConfig
from policytrim.data.demos import save_demos
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.policies.tinyvla import TinyVLA
from policytrim.train.rundir import RunDir

TASK = "drawer-close-v3"
EPISODES, LENGTH = 3, 5
FRAMES = EPISODES * LENGTH


def make_checkpoint(path: Path, hidden_dim: int = 64) -> Path:
    policy_cfg = PolicyConfig(chunk_size=8, default_window=4, hidden_dim=hidden_dim, num_layers=2)
    TinyVLA.from_config(policy_cfg, 39, 4, [INSTRUCTIONS[TASK]]).save_pretrained(path)
    return path


def make_demos(path: Path) -> Path:
    save_demos(random_demos(EPISODES, LENGTH, TASK), path)
    return path


def _rehash(checkpoint: Path) -> None:
    """Make config.json pin the weights file now there (a consistent but bad checkpoint)."""
    config = json.loads((checkpoint / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    (checkpoint / "config.json").write_text(json.dumps(config))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_frames(dataset: Path, edit) -> None:
    frames = load_np(str(dataset / "frames.safetensors"))
    edit(frames)
    save_np(frames, str(dataset / "frames.safetensors"))


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """A directory of good and bad inputs (built without a simulator: well under a second)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = make_checkpoint(root / "ckpt")
    make_checkpoint(root / "ckpt_h32", hidden_dim=32)

    def bad_checkpoint(name: str) -> Path:
        return Path(shutil.copytree(good, root / name))

    weights = bad_checkpoint("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (bad_checkpoint("corrupt_config") / "config.json").write_text('{"kind": "chunk", "state_dim": ')
    other = bad_checkpoint("other_arch")
    shutil.copy(root / "ckpt_h32" / "model.safetensors", other / "model.safetensors")
    _rehash(other)
    nan = bad_checkpoint("nan_weights")
    tensors = load_file(str(nan / "model.safetensors"))
    tensors["head.log_std"] = torch.full_like(tensors["head.log_std"], float("nan"))
    save_file(tensors, str(nan / "model.safetensors"))
    _rehash(nan)
    _edit_json(bad_checkpoint("future_version") / "config.json", format_version=99)
    # a config.json whose sizes are absurd or disagree with its weights (the weights are intact)
    for name, changes in SPEC_EDITS.items():
        _edit_json(bad_checkpoint(name) / "config.json", **changes)

    demos = make_demos(root / "demos")

    def bad_demos(name: str) -> Path:
        return Path(shutil.copytree(demos, root / name))

    _edit_frames(bad_demos("demos_action_3d"), lambda f: f.update(action=np.zeros((FRAMES, 3), np.float32)))
    _edit_frames(bad_demos("demos_short_index"), lambda f: f.update(episode_index=f["episode_index"][:-1]))
    _edit_frames(bad_demos("demos_nan"), lambda f: f["observation.state"].__setitem__((3, 2), np.nan))
    _edit_frames(bad_demos("demos_inf"), lambda f: f["action"].__setitem__((4, 1), np.inf))
    _edit_frames(bad_demos("demos_float64"), lambda f: f.update(action=f["action"].astype(np.float64)))
    frames = bad_demos("demos_truncated") / "frames.safetensors"
    frames.write_bytes(frames.read_bytes()[:-64])
    _edit_json(bad_demos("demos_future_version") / "meta.json", version=7)

    files = {
        "unknown_key.yaml": "stage1:\n  lrr: 0.001\n",
        "wrong_type.yaml": "stage1:\n  lr: fast\n",
        "float_for_int.yaml": "rollout:\n  group_size: 2.5\n",
        "malformed.yaml": "stage1: [lr: 1\n",
        "python_tag.yaml": "seed: !!python/object/apply:os.system ['echo pwned']\n",
        "list.yaml": "- 1\n- 2\n",
        "bad_value.json": '{"rollout": {"group_size": 1}}',
        "malformed.json": '{"rollout": {"group_size": 4,}}',
        "a_file": "not a directory\n",
        "empty.yaml": "",
        "comments.yaml": "# all defaults, please\n",
        "bomb.yaml": alias_bomb(levels=9, width=9),
        "huge.yaml": "seed: 1\n" + "#" * (1 << 20) + "\n",
        "duplicate_key.yaml": "seed: 1\nstage1:\n  lr: 0.001\n  epochs: 3\n  lr: 0.1\n",
        "duplicate_key.json": '{"seed": 1, "seed": 2}',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    if os.geteuid() != 0:  # root writes anywhere: see UNWRITABLE
        (root / "readonly").mkdir(mode=0o500)

    existing = root / "existing_run"
    existing.mkdir()
    (existing / "notes.txt").write_text("precious\n")
    broken = root / "broken_run"
    broken.mkdir()
    (broken / "config.yaml").write_text("{}\n")
    (broken / "run.json").write_text('{"stage": "both", ')
    half_made = root / "config_only_run"  # a run whose creation stopped after config.yaml
    half_made.mkdir()
    (half_made / "config.yaml").write_text("seed: 0\n")
    tampered = root / "tampered_run"
    tampered.mkdir()
    (tampered / "config.yaml").write_text("stage1:\n  lrr: 1\n")
    (tampered / "run.json").write_text('{"stage": "both", "init": "x", "stages": ["extend", "trim"]}')

    # saved runs whose config.yaml was damaged after creation (with and without the SHA-256 that
    # run.json records since issue 12)
    made = RunDir.create(root / "made_run", RunConfig(), {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    lines = (made.path / "config.yaml").read_text().splitlines(keepends=True)
    damage = {"cut": "".join(lines[:40]), "empty": "", "edited": "".join(lines).replace("epochs: 40", "epochs: 2", 1)}
    for name, text in damage.items():
        for hashed in (True, False):
            run = Path(shutil.copytree(made.path, root / f"run_{name}{'' if hashed else '_old'}"))
            (run / "config.yaml").write_text(text)
            if not hashed:
                meta = json.loads((run / "run.json").read_text())
                del meta["config_sha256"]
                (run / "run.json").write_text(json.dumps(meta))

    # resumable runs of the tiny checkpoint whose LATEST pointer is not the stage's own (made by hand:
    # only trainer_state.json is read before the pointer is refused)
    arch = RunConfig(
        env=EnvConfig(tasks=(TASK,)), policy=PolicyConfig(chunk_size=8, default_window=4, hidden_dim=64, num_layers=2)
    )
    arch.rollout.num_workers = 0
    pointed = RunDir.create(
        root / "pointed_run", arch, {"stage": "both", "stages": ["extend", "trim"], "init": str(good)}
    )
    for stage, epoch in (("extend", 1), ("extend", 2), ("trim", 1)):
        (pointed.path / stage / f"epoch_{epoch:06d}").mkdir(parents=True)
        (pointed.path / stage / f"epoch_{epoch:06d}" / "trainer_state.json").write_text(
            json.dumps({"stage": stage, "epoch": epoch})
        )
    (pointed.path / "extend" / "LATEST").write_text("epoch_000002")
    (pointed.path / "trim" / "LATEST").write_text("epoch_000001")
    latest = {
        "other_stage": ("trim", "../extend/epoch_000002"),
        "absolute": ("trim", str(pointed.path / "extend" / "epoch_000002")),
        "missing": ("extend", "epoch_000007"),
        "garbage": ("extend", "\x00\xff" * 100),
    }
    for name, (stage, text) in latest.items():
        run = Path(shutil.copytree(pointed.path, root / f"latest_{name}"))
        (run / stage / "LATEST").write_bytes(text.encode("latin-1"))
    run = Path(shutil.copytree(pointed.path, root / "latest_copied"))  # extend's checkpoint copied into trim
    shutil.copytree(run / "extend" / "epoch_000002", run / "trim" / "epoch_000002")
    (run / "trim" / "LATEST").write_text("epoch_000002")
    run = Path(shutil.copytree(pointed.path, root / "latest_renamed"))  # epoch 1 renamed as epoch 5
    (run / "trim" / "epoch_000001").rename(run / "trim" / "epoch_000005")
    (run / "trim" / "LATEST").write_text("epoch_000005")

    report_run = root / "report_run"  # a train run whose metrics log has a corrupt line inside
    report_run.mkdir()
    (report_run / "run.json").write_text(
        '{"stage": "both", "init": "x", "stages": ["extend", "trim"], "status": "running"}'
    )
    (report_run / "metrics.jsonl").write_text(
        '{"stage": "extend", "epoch": 0}\n{"stage": "ext\n{"stage": "extend", "epoch": 1}\n'
    )
    # train runs whose metrics log is valid JSON with a wrong type in a field the figures read (line 3:
    # after a good record and a blank line)
    good = {"stage": "extend", "epoch": 1, "reward": 0.5, "success_rate": 0.5}
    for name, change in {
        "text_reward": {"reward": "high"},
        "list_epoch": {"epoch": [1]},
        "stage_number": {"stage": 3},
    }.items():
        run = Path(shutil.copytree(report_run, root / f"report_{name}"))
        (run / "metrics.jsonl").write_text(
            json.dumps(good) + "\n\n" + json.dumps({**good, "epoch": 2, **change}) + "\n"
        )
    return root


SPEC_EDITS = {
    "spec_hidden_negative": {"hidden_dim": -1},
    "spec_hidden_1e9": {"hidden_dim": 1e9},
    "spec_hidden_1e7": {"hidden_dim": 10_000_000},
    "spec_layers_1e6": {"num_layers": 1_000_000},
    "spec_wider_than_weights": {"hidden_dim": 128},
}


def alias_bomb(levels: int, width: int) -> str:
    """A few hundred bytes of YAML under a valid key (env.tasks) whose aliases expand to
    width**(levels + 1) values (the "billion laughs")."""
    value = "[" + ", ".join(["x"] * width) + "]"
    for i in range(levels):
        value = f"[&l{i} {value}" + f", *l{i}" * (width - 1) + "]"
    return f"env:\n  tasks: {value}\n"


# An output directory this process may not create: below a regular file, and either a directory
# without write permission or, for root (whom permissions do not stop), sysfs, where the kernel
# refuses mkdir with EPERM to everyone.
UNWRITABLE = "/sys/policytrim-test-run" if os.geteuid() == 0 else "{root}/readonly/run"
needs_sysfs = pytest.mark.skipif(
    os.geteuid() == 0 and not os.path.isdir("/sys/kernel"), reason="root without sysfs: no unwritable directory to try"
)
no_libero = pytest.mark.skipif(importlib.util.find_spec("libero") is not None, reason="LIBERO is installed here")
no_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")


# The tiny architecture of `make_checkpoint`, so that only the bad part of each row is bad.
ARCH = [
    "--tasks",
    TASK,
    "--policy.chunk-size",
    "8",
    "--policy.default-window",
    "4",
    "--policy.hidden-dim",
    "64",
    "--policy.num-layers",
    "2",
    "--rollout.num-workers",
    "0",
]


def TRAIN(*extra: str) -> list[str]:
    return ["train", "--init", "{root}/ckpt", *ARCH, "--out", "{root}/new_run", *extra]


def PRETRAIN(data: str, *extra: str) -> list[str]:
    return [
        "pretrain",
        *ARCH,
        "--data",
        f"{{root}}/{data}",
        "--pretrain.iterations",
        "1",
        "--pretrain.eval-episodes",
        "0",
        "--out",
        "{root}/new_baseline",
        *extra,
    ]


def EVAL(*extra: str) -> list[str]:
    return ["eval", "--checkpoint", "{root}/ckpt", *ARCH, "--episodes", "1", "--out", "{root}/new_eval", *extra]


# A subprocess runs the package under test (a relative PYTHONPATH=src would not survive cwd=tmp_path).
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(policytrim.__file__).parents[1]), os.environ.get("PYTHONPATH")])
    ),
}

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# (kind, argv with {root} for the fixture directory, text the one error line must contain)
BAD_INPUTS = [
    # values in the config
    ("unknown task", TRAIN("--tasks", "pushh"), "unknown task 'pushh'"),
    ("window > H", TRAIN("--stage1.windows", "4", "9"), "stage1.windows must all be <= policy.chunk_size=8"),
    ("windows unsorted", TRAIN("--stage1.windows", "8", "4"), "strictly increasing"),
    ("window 0", TRAIN("--stage1.windows", "0", "4"), "positive integers"),
    ("group size < 2", TRAIN("--rollout.group-size", "1"), "group_size must be an integer in [2, 1024]"),
    (
        "dropped-group fraction > 1",
        TRAIN("--rollout.max-dropped-fraction", "1.5"),
        "rollout.max_dropped_fraction must be a number in [0.0, 1.0]",
    ),
    ("negative lr", TRAIN("--stage1.lr", "-1e-3"), "stage1.lr must be in (0, 1]"),
    ("NaN lr", TRAIN("--stage1.lr", "nan"), "stage1.lr must be in (0, 1], got nan"),
    ("infinite lr", TRAIN("--stage2.lr", "inf"), "stage2.lr must be in (0, 1], got inf"),
    ("absurd lr", TRAIN("--stage1.lr", "10"), "stage1.lr must be in (0, 1]"),
    ("negative KL coefficient", TRAIN("--stage2.kl-coef", "-0.1"), "stage2.kl_coef must be a number in [0.0, 10.0]"),
    ("absurd step-saving coefficient", TRAIN("--stage2.step-coef", "1e9"), "stage2.step_coef"),
    ("stability coefficient > 1", TRAIN("--stage2.stability-coef", "5"), "stage2.stability_coef"),
    ("negative clip", TRAIN("--stage1.clip-low", "-0.2"), "stage1.clip_low"),
    ("budget multiplier < 1", TRAIN("--stage2.budget-multiplier", "0.5"), "stage2.budget_multiplier"),
    ("negative gradient clip", TRAIN("--stage1.max-grad-norm", "-1"), "max_grad_norm must be > 0"),
    (
        "negative budget",
        TRAIN("--stage2.budget", "-5"),
        "stage2.budget must be an integer in [0, 100000] (0 = calibrate)",
    ),
    ("negative epochs", TRAIN("--stage1.epochs", "-1"), "stage1.epochs must be an integer in [0, 1000000]"),
    ("horizon 0", TRAIN("--env.horizon", "0"), "env.horizon must be an integer in [1, 100000]"),
    ("overlapping seed splits", TRAIN("--env.val-seed", "0"), "must be disjoint"),
    ("stage 2 window > H", TRAIN("--stage2.window", "9"), "stage2.window must be <= policy.chunk_size=8"),
    (
        "Ray backend without workers",
        TRAIN("--rollout.backend", "ray"),
        "rollout.backend=ray needs rollout.num_workers >= 1",
    ),
    (
        "Ray: negative CPUs per worker",
        TRAIN("--ray.cpus-per-worker", "-1"),
        "ray.cpus_per_worker must be a number in (0, 256], got -1",
    ),
    (
        "Ray: max restarts below -1",
        TRAIN("--ray.max-restarts", "-2"),
        "ray.max_restarts must be an integer in [-1, 10000]",
    ),
    ("Ray: unknown placement strategy", TRAIN("--ray.placement-strategy", "RANDOM"), "invalid choice 'RANDOM'"),
    ("unknown stage", TRAIN("--stage", "foo"), "invalid choice 'foo' for argument '--stage'"),
    ("unknown device", TRAIN("--device", "tpu"), "invalid choice 'tpu' for argument '--device'"),
    pytest.param("cuda without a GPU", TRAIN("--device", "cuda"), "no CUDA device", marks=no_cuda),
    ("unknown flag", TRAIN("--bogus", "1"), "Unrecognized options: --bogus"),
    ("integer flag given text", TRAIN("--seed", "x"), "--seed"),
    # sizes: every size-like setting has an upper bound (policytrim.limits), checked before anything runs
    (
        "absurd group size",
        TRAIN("--rollout.group-size", "1000000000"),
        "rollout.group_size must be an integer in [2, 1024]",
    ),
    (
        "too many trajectories per epoch",
        TRAIN("--rollout.group-size", "1024", "--rollout.groups-per-epoch", "4096"),
        "must be <= 65536 trajectories per epoch",
    ),
    (
        "absurd hidden width",
        TRAIN("--policy.hidden-dim", "10000000"),
        "policy.hidden_dim must be an integer in [8, 4096]",
    ),
    ("absurd depth", TRAIN("--policy.num-layers", "1000000"), "policy.num_layers must be an integer in [1, 32]"),
    (
        "absurd worker count",
        TRAIN("--rollout.num-workers", "100000"),
        "rollout.num_workers must be an integer in [0, 256]",
    ),
    ("absurd epochs", TRAIN("--stage2.epochs", "1000000000"), "stage2.epochs must be an integer in [0, 1000000]"),
    (
        "absurd update epochs",
        TRAIN("--stage1.update-epochs", "100000"),
        "stage1.update_epochs must be an integer in [1, 100]",
    ),
    (
        "absurd validation episodes",
        TRAIN("--stage1.val-episodes", "1000000000"),
        "stage1.val_episodes must be an integer in [1, 100000]",
    ),
    ("absurd evaluation episodes", EVAL("--episodes", "1000000000"), "eval.episodes must be an integer in [1, 100000]"),
    (
        "absurd demonstrations",
        ["collect", *ARCH, "--data.episodes", "1000000000", "--out", "{root}/new_demos"],
        "data.episodes must be an integer in [1, 100000]",
    ),
    (
        "absurd BC batch",
        PRETRAIN("demos", "--pretrain.batch-size", "100000000"),
        "pretrain.batch_size must be an integer in [1, 65536]",
    ),
    ("absurd flow steps", TRAIN("--policy.flow-steps", "100000"), "policy.flow_steps must be an integer in [2, 1000]"),
    # things that were silently accepted
    ("duplicate task names", TRAIN("--tasks", TASK, TASK), f"task '{TASK}' is given twice"),
    (
        "LIBERO suite given twice",
        ["config", "--env.suite", "libero", "--tasks", "libero_object", "libero_object"],
        "LIBERO task 'libero_object' is given twice",
    ),
    ("negative seed", TRAIN("--seed", "-1"), "seed must be an integer in [0, 4294967295]"),
    ("seed above 2**32 - 1", TRAIN("--seed", str(2**32)), "seed must be an integer in [0, 4294967295]"),
    ("negative evaluation seed", EVAL("--eval.seed", "-1"), "eval.seed must be an integer in [0, 4294967295]"),
    (
        "negative demonstration seed",
        ["collect", *ARCH, "--data.seed", "-3", "--out", "{root}/new_demos"],
        "data.seed must be an integer",
    ),
    ("negative split seed", TRAIN("--env.train-seed", "-5"), "env.train_seed must be an integer in [0, 4294967295]"),
    (
        "--out of a run dir holding only config.yaml",
        TRAIN("--out", "{root}/config_only_run"),
        "holds config.yaml but no run.json: a run whose creation was cut short",
    ),
    (
        "--resume of a run dir holding only config.yaml",
        ["train", "--resume", "{root}/config_only_run"],
        "with nothing to resume; start it afresh with --out",
    ),
    ("--stage1.windows without values", TRAIN("--stage1.windows"), "--stage1.windows was given without values"),
    (
        "list flag without values before another flag",
        TRAIN("--stage1.windows", "--seed", "1"),
        "--stage1.windows was given without values",
    ),
    # config files and presets
    ("YAML with an unknown key", ["config", "--config", "{root}/unknown_key.yaml"], "unknown key(s) stage1.lrr"),
    (
        "YAML with a wrong type",
        ["config", "--config", "{root}/wrong_type.yaml"],
        "stage1.lr must be a number, got 'fast'",
    ),
    (
        "YAML float for an integer",
        ["config", "--config", "{root}/float_for_int.yaml"],
        "rollout.group_size must be an integer, got 2.5",
    ),
    ("malformed YAML", ["config", "--config", "{root}/malformed.yaml"], "is not valid YAML"),
    (
        "YAML python tag (safe loader)",
        ["config", "--config", "{root}/python_tag.yaml"],
        "could not determine a constructor",
    ),
    ("YAML that is not a mapping", ["config", "--config", "{root}/list.yaml"], "config must be a mapping, got list"),
    (
        "JSON config with a bad value",
        ["config", "--config", "{root}/bad_value.json"],
        "group_size must be an integer in [2, 1024]",
    ),
    ("malformed JSON config", ["config", "--config", "{root}/malformed.json"], "is not valid JSON"),
    ("missing config file", TRAIN("--config", "{root}/nope.yaml"), "config file '{root}/nope.yaml' does not exist"),
    ("unknown preset", TRAIN("--preset", "nope"), "unknown preset 'nope'"),
    (
        "preset given as a path out of configs/",
        ["config", "--preset", "../configs/demo"],
        "unknown preset '../configs/demo'",
    ),
    (
        "empty config file",
        TRAIN("--config", "{root}/empty.yaml"),
        "config file '{root}/empty.yaml' is empty (no settings)",
    ),
    ("config file of comments only", ["config", "--config", "{root}/comments.yaml"], "is empty (no settings)"),
    ("YAML alias bomb under a valid key", TRAIN("--config", "{root}/bomb.yaml"), "expands to more than 10000 values"),
    (
        "YAML with a key given twice",
        ["config", "--config", "{root}/duplicate_key.yaml"],
        "key 'lr' is given twice in one mapping (lines 3 and 5)",
    ),
    ("JSON with a key given twice", ["config", "--config", "{root}/duplicate_key.json"], "key(s) 'seed' given twice"),
    ("config file over 1 MiB", ["config", "--config", "{root}/huge.yaml"], "is larger than 1048576 bytes"),
    ("unknown subcommand", ["frobnicate", "--out", "{root}/x"], "unknown command 'frobnicate'"),
    # checkpoints
    ("missing checkpoint", TRAIN("--init", "{root}/nope"), "'{root}/nope' does not exist"),
    ("checkpoint that is a file", TRAIN("--init", "{root}/a_file"), "is not a directory"),
    ("truncated weights file", TRAIN("--init", "{root}/truncated"), "truncated"),
    ("corrupt config.json", TRAIN("--init", "{root}/corrupt_config"), "config.json is not valid JSON"),
    ("weights of another architecture", TRAIN("--init", "{root}/other_arch"), "weights do not match the architecture"),
    ("non-finite weights", TRAIN("--init", "{root}/nan_weights"), "non-finite values in head.log_std"),
    (
        "checkpoint format from the future",
        TRAIN("--init", "{root}/future_version"),
        "format version 99 is not supported",
    ),
    (
        "checkpoint architecture != config",
        TRAIN("--policy.hidden-dim", "128"),
        "policy.hidden_dim is 128 in the config but 64 in the checkpoint",
    ),
    (
        "checkpoint chunk size != config",
        TRAIN("--policy.chunk-size", "10"),
        "policy.chunk_size is 10 in the config but 8 in the checkpoint",
    ),
    ("train the scripted experts", TRAIN("--init", "expert"), "scripted experts have no weights"),
    (
        "checkpoint spec hidden_dim -1",
        TRAIN("--init", "{root}/spec_hidden_negative"),
        "policy spec hidden_dim must be an integer in [1, 4096], got -1",
    ),
    (
        "checkpoint spec hidden_dim 1e9",
        TRAIN("--init", "{root}/spec_hidden_1e9"),
        "policy spec hidden_dim must be an integer in [1, 4096], got 1000000000.0",
    ),
    (
        "checkpoint spec hidden_dim 1e7",
        TRAIN("--init", "{root}/spec_hidden_1e7"),
        "policy spec hidden_dim must be an integer in [1, 4096], got 10000000",
    ),
    (
        "checkpoint spec num_layers 1e6",
        TRAIN("--init", "{root}/spec_layers_1e6"),
        "policy spec num_layers must be an integer in [1, 32], got 1000000",
    ),
    (
        "checkpoint spec wider than its weights",
        EVAL("--checkpoint", "{root}/spec_wider_than_weights"),
        "(config.json: num_layers 2, hidden_dim 128; weights: 2 trunk layers of width 64)",
    ),
    ("train without --init", ["train", *ARCH, "--out", "{root}/new_run"], "--init is required"),
    # run directories
    (
        "existing run dir, no --resume/--overwrite",
        TRAIN("--out", "{root}/existing_run"),
        "already exists; pass --resume",
    ),
    ("run dir that is a file", TRAIN("--out", "{root}/a_file"), "is a file"),
    ("--resume of a non-run directory", ["train", "--resume", "{root}/demos"], "not a policytrim run directory"),
    ("--resume with a corrupt run.json", ["train", "--resume", "{root}/broken_run"], "run.json is not valid JSON"),
    (
        "--resume with a tampered config.yaml",
        ["train", "--resume", "{root}/tampered_run"],
        "config.yaml: unknown key(s) stage1.lrr",
    ),
    (
        "--resume, config.yaml cut at a line",
        ["train", "--resume", "{root}/run_cut"],
        "config.yaml is not the one this run was created with",
    ),
    (
        "--resume, config.yaml emptied",
        ["train", "--resume", "{root}/run_empty"],
        "config.yaml is not the one this run was created with",
    ),
    (
        "--resume, config.yaml edited",
        ["train", "--resume", "{root}/run_edited"],
        "config.yaml is not the one this run was created with",
    ),
    (
        "--resume, LATEST names another stage's checkpoint",
        ["train", "--resume", "{root}/latest_other_stage"],
        "not the name of a checkpoint of this stage",
    ),
    (
        "--resume, LATEST is an absolute path",
        ["train", "--resume", "{root}/latest_absolute"],
        "not the name of a checkpoint of this stage",
    ),
    (
        "--resume, LATEST names a missing checkpoint",
        ["train", "--resume", "{root}/latest_missing"],
        "names epoch_000007, which is not a complete checkpoint",
    ),
    (
        "--resume, LATEST of binary garbage",
        ["train", "--resume", "{root}/latest_garbage"],
        "not the name of a checkpoint",
    ),
    (
        "--resume, another stage's checkpoint copied in",
        ["train", "--resume", "{root}/latest_copied"],
        "is stage 'extend' epoch 2, not stage 'trim' epoch 2",
    ),
    (
        "--resume, a checkpoint renamed to another epoch",
        ["train", "--resume", "{root}/latest_renamed"],
        "is stage 'trim' epoch 1, not stage 'trim' epoch 5",
    ),
    (
        "--resume of a run without hash, config.yaml cut",
        ["train", "--resume", "{root}/run_cut_old"],
        "config.yaml: missing key(s) ",
    ),
    (
        "--resume of a run without hash, config.yaml empty",
        ["train", "--resume", "{root}/run_empty_old"],
        "config.yaml is empty (no settings)",
    ),
    # outputs that cannot be written (checked before anything is created)
    ("run dir below a regular file", TRAIN("--out", "{root}/a_file/run"), "'{root}/a_file' is a file, not a directory"),
    (
        "pretrain output below a regular file",
        PRETRAIN("demos", "--out", "{root}/a_file/baseline"),
        "is a file, not a directory",
    ),
    (
        "collect output below a regular file",
        ["collect", *ARCH, "--out", "{root}/a_file/demos"],
        "is a file, not a directory",
    ),
    ("eval output below a regular file", EVAL("--out", "{root}/a_file/eval"), "is a file, not a directory"),
    ("run dir name too long", TRAIN("--out", "{root}/" + "r" * 300), "is 300 bytes long; at most 223 are allowed"),
    ("eval output name too long", EVAL("--out", "{root}/" + "e" * 300), "is 300 bytes long; at most 223 are allowed"),
    ("run dir path too long", TRAIN("--out", "{root}/" + "/".join(["d" * 200] * 25)), "bytes: at most"),
    pytest.param("run dir without write permission", TRAIN("--out", UNWRITABLE), "permission", marks=needs_sysfs),
    pytest.param(
        "wandb asked for, not installed",
        TRAIN("--logging.wandb", "offline"),
        "logging.wandb=offline needs the wandb package",
        marks=no_wandb,
    ),
    # the simulator of env.suite not installed (LIBERO is not, in the main environment): a configuration error
    pytest.param(
        "eval on LIBERO without LIBERO",
        [
            "eval",
            "--preset",
            "libero",
            "--tasks",
            "libero_object",
            "--policy",
            "{root}/ckpt",
            "--out",
            "{root}/new_eval",
        ],
        "env.suite=libero needs the LIBERO simulator, which is not installed",
        marks=no_libero,
    ),
    pytest.param(
        "train on LIBERO without LIBERO",
        ["train", "--preset", "libero", "--tasks", "libero_object", "--init", "{root}/ckpt", "--out", "{root}/new_run"],
        "env.suite=libero needs the LIBERO simulator",
        marks=no_libero,
    ),
    pytest.param(
        "collect on LIBERO without LIBERO",
        ["collect", "--preset", "libero", "--out", "{root}/new_demos"],
        "env.suite=libero needs the LIBERO simulator",
        marks=no_libero,
    ),
    # report
    (
        "report --out that is a file",
        ["report", "{root}/report_run", "--out", "{root}/a_file"],
        "--out '{root}/a_file' is a file",
    ),
    (
        "report of a corrupt run.json",
        ["report", "{root}/broken_run", "--out", "{root}/new_report"],
        "broken_run/run.json is not valid JSON",
    ),
    (
        "report of a corrupt metrics.jsonl line",
        ["report", "{root}/report_run", "--out", "{root}/new_report"],
        "report_run/metrics.jsonl line 2 is not valid JSON",
    ),
    (
        "report, metrics.jsonl: a number given as text",
        ["report", "{root}/report_text_reward", "--out", "{root}/new_report"],
        "report_text_reward/metrics.jsonl line 3: field 'reward' must be a number or null, got 'high'",
    ),
    (
        "report, metrics.jsonl: an epoch given as a list",
        ["report", "{root}/report_list_epoch", "--out", "{root}/new_report"],
        "line 3: field 'epoch' must be an integer >= 0, got [1]",
    ),
    (
        "report, metrics.jsonl: a stage given as a number",
        ["report", "{root}/report_stage_number", "--out", "{root}/new_report"],
        "line 3: field 'stage' must be a string, got 3",
    ),
    # demonstration datasets
    ("pretrain without --data", ["pretrain", *ARCH, "--out", "{root}/new_baseline"], "--data is required"),
    ("missing dataset", PRETRAIN("nope"), "does not exist"),
    ("dataset with wrong action shape", PRETRAIN("demos_action_3d"), "action has shape [3]"),
    ("dataset arrays of different lengths", PRETRAIN("demos_short_index"), "episode_index has 14 rows, expected 15"),
    ("dataset with NaN", PRETRAIN("demos_nan"), "observation.state contains NaN or infinite values"),
    ("dataset with inf", PRETRAIN("demos_inf"), "action contains NaN or infinite values"),
    ("dataset with wrong dtype", PRETRAIN("demos_float64"), "action has dtype float64, expected float32"),
    (
        "truncated dataset file",
        PRETRAIN("demos_truncated"),
        "frames.safetensors cannot be read (truncated or corrupt?)",
    ),
    ("dataset format from the future", PRETRAIN("demos_future_version"), "format version 7 is not supported"),
    ("a checkpoint given as dataset", PRETRAIN("ckpt"), "meta.json is missing"),
    (
        "pretrain into an existing directory",
        PRETRAIN("demos", "--out", "{root}/ckpt_h32"),
        "already exists; pass --overwrite",
    ),
    ("collect to an existing dataset", ["collect", *ARCH, "--out", "{root}/demos"], "already exists; pass --overwrite"),
    # evaluation
    ("eval window > max window", EVAL("--window", "9"), "--window must be in [1, 8]"),
    (
        "expert with window > 1",
        EVAL("--checkpoint", "expert", "--window", "5"),
        "scripted experts act in closed loop with window 1",
    ),
    ("eval output that is a file", EVAL("--out", "{root}/a_file"), "is a file"),
    (
        "ensembling m NaN",
        EVAL("--temporal-ensembling", "--ensemble-m", "nan"),
        "--ensemble-m must be a finite number >= 0",
    ),
    (
        "ensembling m negative",
        EVAL("--temporal-ensembling", "--ensemble-m", "-1"),
        "--ensemble-m must be a finite number >= 0",
    ),
    ("ensembling m infinite", EVAL("--ensemble-m", "inf"), "--ensemble-m must be a finite number >= 0"),
    ("eval with 0 episodes", EVAL("--episodes", "0"), "eval.episodes must be an integer in [1, 100000]"),
]


def snapshot(root: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


@pytest.mark.parametrize(
    "kind, argv, message", BAD_INPUTS, ids=[c.values[0] if hasattr(c, "values") else c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(fx, kind, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(fx)  # a relative default output would land here, inside the snapshot
    argv = [a.format(root=fx) for a in argv]
    before = snapshot(fx)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.format(root=fx) in lines[0]
    assert out == ""
    assert snapshot(fx) == before, "bad input must not create or change any file"


def test_the_table_covers_at_least_30_kinds():
    assert len({c.values[0] if hasattr(c, "values") else c[0] for c in BAD_INPUTS}) >= 30


@pytest.mark.parametrize(
    "kind",
    [
        "truncated weights file",
        "dataset with NaN",
        "--resume with a corrupt run.json",
        "YAML alias bomb under a valid key",
        "checkpoint spec hidden_dim 1e7",
        "--resume, config.yaml cut at a line",
        "report of a corrupt metrics.jsonl line",
        pytest.param("eval on LIBERO without LIBERO", marks=no_libero),
        "report, metrics.jsonl: a number given as text",
        "eval output name too long",
    ],
)
def test_real_process_exit_status_and_no_traceback(fx, kind, tmp_path):
    _, argv, message = next(row for row in (getattr(c, "values", c) for c in BAD_INPUTS) if row[0] == kind)
    before = snapshot(fx)
    result = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", *(a.format(root=fx) for a in argv)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert snapshot(fx) == before and list(tmp_path.iterdir()) == []
