"""The whole pipeline on LIBERO from the CLI, at a tiny size: collect scripted suboptimal demonstrations
of one LIBERO-Object task -> behaviour cloning -> both stages -> paired evaluation, state observations
(``env.libero_state=objects``), one env worker. What benchmarks/libero.py runs at the full size.

Skipped where LIBERO is not installed (failed instead where POLICYTRIM_REQUIRE=libero, as
scripts/run.sh sets in .venv-libero: `tests/optional_env.py`). About 2 minutes on one core.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip(
    "libero.libero.benchmark", "libero", reason="LIBERO is not installed (pip install 'policytrim[libero]')"
)

from policytrim.io import read_jsonl  # noqa: E402

TASK = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
STATE = ["--env.suite", "libero", "--tasks", TASK, "--env.libero-state", "objects"]
SHORT = [*STATE, "--env.libero-max-steps", "env", "--env.horizon", "60"]  # rollouts of the untrained policy
ONE_EPOCH = ["--epochs", "1", "--eval-every", "1", "--val-episodes", "1", "--update-epochs", "1"]


def cli(*args: str) -> str:
    """`python -m policytrim.cli ARGS` as a user runs it; its stdout (fails on a non-zero exit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def stage_flags(stage: str) -> list[str]:
    return [f"--{stage}.{flag[2:]}" if flag.startswith("--") else flag for flag in ONE_EPOCH]


def test_collect_pretrain_train_eval_on_libero_from_the_cli(tmp_path):
    demos, bc, run, ev = (tmp_path / name for name in ("demos", "bc", "run", "eval"))

    # collect: the scripted expert with the suboptimality model, through the rollout engine
    out = cli("collect", *STATE, "--data.episodes", "2", "--rollout.num-workers", "1", "--out", str(demos))
    meta = json.loads((demos / "meta.json").read_text())
    collection = meta["collection"]
    assert collection["collected"] == {TASK: 2} and "libero_expert" in collection["expert"], collection
    assert (demos / "frames.safetensors").is_file() and "2 suboptimal expert demonstrations" in out

    # pretrain: a TinyVLA with H = 15 and window 5 on the 57-D object-pose state
    cli(
        "pretrain", *STATE, "--data", str(demos), "--pretrain.iterations", "20", "--pretrain.batch-size", "32",
        "--pretrain.eval-episodes", "0", "--policy.chunk-size", "15", "--policy.default-window", "5",
        "--out", str(bc),
    )  # fmt: skip
    spec = json.loads((bc / "config.json").read_text())
    assert (spec["chunk_size"], spec["default_window"]) == (15, 5) and (bc / "model.safetensors").is_file()

    # train: Stage 1 over windows 5 and 10, then Stage 2, one epoch each of one group of 2
    cli(
        "train", *SHORT, "--init", str(bc), "--stage", "both", "--rollout.group-size", "2",
        "--rollout.groups-per-epoch", "1", "--rollout.num-workers", "1", "--stage1.windows", "5", "10",
        "--stage1.min-epochs", "1", *stage_flags("stage1"), *stage_flags("stage2"), "--stage2.budget", "60",
        "--logging.no-progress", "--logging.no-tensorboard", "--out", str(run),
    )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == ["run_dir", "init", "stages", "logging", "extend", "trim", "window"]
    assert summary["window"] in (5, 10) and summary["trim"]["budget"]["budget"] == 60
    final = json.loads((run / "final" / "policy" / "config.json").read_text())
    assert final["default_window"] == summary["window"] and final["trained_stage"] == "trim"
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("extend", 0), ("extend", 1), ("trim", 0), ("trim", 1)]
    s1, s2 = records[1], records[3]
    assert s1["mean_window"] == 7.5  # a group of 2 runs windows 5 and 10
    assert s2["mean_window"] == summary["window"]
    for r in (s1, s2):  # every trajectory ran to the horizon or succeeded; where the epoch's time went
        assert 0 < r["env_steps"] <= 2 * 60 and r["rollout_env_s"] > 0 and r["rollout_reset_s"] > 0
        assert r["update_s"] > 0 and r["rollout_policy_s"] > 0

    # eval: the trained policy at its window vs the BC baseline at 5, paired on the same 2 test init states
    cli(
        "eval", *SHORT, "--policy", str(run / "final" / "policy"), "--baseline", str(bc), "--eval.episodes", "2",
        "--rollout.num-workers", "1", "--logging.no-progress", "--out", str(ev),
    )  # fmt: skip
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["episodes_per_task"] == 2 and metrics["split"] == "test" and metrics["window"] == summary["window"]
    assert metrics["tasks"][TASK]["episodes"] == 2 and metrics["overall"]["episodes"] == 2
    comparison = json.loads((ev / "comparison.json").read_text())
    assert comparison["windows"] == {"baseline": 5, "policy": summary["window"]}
    paired = comparison["modes"]["sampled"]["vs_baseline"]["policy"]["overall"]
    assert paired["paired_episodes"] == 2 and {"calls_speedup", "steps_reduction", "success_rate_drop"} <= set(paired)
    outcomes = json.loads((ev / "outcomes.json").read_text())["modes"]["sampled"]
    for name, window in (("baseline", 5), ("policy", summary["window"])):
        row = outcomes[name]
        assert row["index"] == [0, 1] and len(row["steps"]) == 2
        # the executed window: one policy call per `window` env steps, the last chunk cut at the end
        assert row["calls"] == [math.ceil(steps / window) for steps in row["steps"]], (name, row)
        assert all(0 < steps <= 60 for steps in row["steps"])
