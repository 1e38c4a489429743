"""A tiny SmolVLA and a tiny Diffusion Policy (LeRobot's classes) through the whole pipeline on real
Meta-World from camera images: collect -> BC -> Stage 1 -> Stage 2 -> paired evaluation, then the
trained policy exported and loaded by LeRobot, and every policy the run wrote loaded by LeRobot and by
policytrim after the run is moved and the original deleted. Offline; runs in .venv-lerobot."""

from __future__ import annotations

import json

import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.policies.factory", "lerobot")  # fails instead where scripts/run.sh requires lerobot
pytestmark = [pytest.mark.lerobot, pytest.mark.slow]

from lerobot_tiny import build_tiny_vlm, tiny_config, write_tiny_policy  # noqa: E402
from policytrim.config import (  # noqa: E402
    EnvConfig,
    EvalConfig,
    PolicyConfig,
    PretrainConfig,
    RolloutConfig,
    RunConfig,
    Stage1Config,
    Stage2Config,
)
from policytrim.policies import load_policy  # noqa: E402
from policytrim.policies.lerobot import LeRobotChunkPolicy, export_lerobot  # noqa: E402
from policytrim.windows import WindowPlan  # noqa: E402

IMAGE = 64
CHUNK = {"smolvla": 15, "diffusion": 16}
STEPS = {"smolvla": 10, "diffusion": 5}  # denoising steps (CPU time in CI)


def run_config(out, family: str, lerobot_path) -> RunConfig:
    stage = dict(epochs=1, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-4, update_epochs=1)
    cfg = RunConfig(
        env=EnvConfig(tasks=("drawer-close-v3",), horizon=50, image=True, image_size=IMAGE),
        policy=PolicyConfig(
            kind="lerobot",
            chunk_size=CHUNK[family],
            default_window=5,
            lerobot_path=str(lerobot_path),
            train_parts="no_vision",
        ),
        rollout=RolloutConfig(group_size=2, groups_per_epoch=1, num_workers=0),
        stage1=Stage1Config(**stage),
        stage2=Stage2Config(
            **stage, budget=40
        ),  # a fixed budget: a 20-iteration BC policy may succeed nowhere to calibrate on
        pretrain=PretrainConfig(iterations=20, batch_size=8, eval_episodes=0, val_fraction=0.25, lr=1e-3),
        eval=EvalConfig(episodes=2),
    )
    cfg.data.episodes = 4
    cfg.data.suboptimal = False
    cfg.data.keep_failures = True  # a 50-step horizon cuts some expert episodes short: plumbing, not skill
    cfg.logging.progress = False
    cfg.logging.tensorboard = False
    cfg.logging.out = str(out)
    return cfg


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from policytrim.data.collect import collect_demos

    root = tmp_path_factory.mktemp("lerobot_demos")
    cfg = run_config(root / "unused", "smolvla", "")
    ds = collect_demos(cfg, root / "demos")
    assert ds.image is not None and ds.image.shape[1:] == (IMAGE, IMAGE, 3)
    return root / "demos", ds


@pytest.mark.parametrize("family", list(CHUNK))
def test_collect_bc_stage1_stage2_eval_export(demos, family, tmp_path, tmp_path_factory, monkeypatch):
    from lerobot.policies.factory import get_policy_class

    from policytrim.experiments.demo import evaluate_pipeline
    from policytrim.policies.lerobot import dataset_stats
    from policytrim.train.bc import pretrain
    from policytrim.train.grpo import train

    demo_dir, ds = demos
    vlm = build_tiny_vlm(tmp_path / "vlm", IMAGE, ds.instructions) if family == "smolvla" else None
    config = tiny_config(
        family,
        ds.state.shape[1],
        ds.action.shape[1],
        CHUNK[family],
        5,
        (IMAGE, IMAGE, 3),
        vlm_dir=vlm,
        flow_steps=STEPS[family],
    )
    stats = dataset_stats(
        torch.as_tensor(ds.state), torch.as_tensor(ds.action), torch.as_tensor(ds.image), "observation.images.corner2"
    )
    untrained = write_tiny_policy(tmp_path / "untrained", config, stats)

    cfg = run_config(tmp_path / "train", family, untrained)
    metrics = pretrain(cfg, demo_dir, tmp_path / "baseline")
    assert (
        metrics["final_train_loss"] < metrics["history"][1]["train_loss"] * 1.5
        and metrics["final_val_loss"] == metrics["final_val_loss"]
    )
    baseline = load_policy(tmp_path / "baseline")
    assert isinstance(baseline, LeRobotChunkPolicy) and baseline.default_window == 5
    assert json.loads((tmp_path / "baseline" / "config.json").read_text())["n_action_steps"] == 5

    summary = train(cfg, "both", str(tmp_path / "baseline"))
    window = summary.window
    assert window in WindowPlan.for_run(baseline, cfg).stage1 and summary.trim.budget == 40
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "logp_gap" in r]
    assert updates and all(r["logp_gap"] < 1e-3 for r in updates), "rollout and learner disagree on log-probs"

    result = evaluate_pipeline(cfg, tmp_path / "baseline", tmp_path / "train", tmp_path)
    assert result["policytrim"]["episodes"] == 2 and result["baseline"]["window"] == 5
    lo, hi = result["success_rate_drop_ci95"]
    assert lo <= result["success_rate_drop"] <= hi

    # the trimmed policy in LeRobot's format: LeRobot loads it and deploys the trained window
    final = load_policy(tmp_path / "train" / "final" / "policy")
    assert final.default_window == window and final.spec()["trained_stage"] == "trim"  # mark_trained: Stage 1's choice
    assert json.loads((tmp_path / "train" / "final" / "policy" / "config.json").read_text())["n_action_steps"] == window
    exported = export_lerobot(final, tmp_path / "export")
    monkeypatch.chdir(exported)  # LeRobot resolves a local VLM's name ("vlm") against the working directory
    theirs = get_policy_class(family).from_pretrained(str(exported))
    assert theirs.config.n_action_steps == final.default_window
    frozen = [n for n, p in final.named_parameters() if not p.requires_grad]
    assert frozen and all(".rgb_encoder." in n or ".vision_model." in n for n in frozen)
    _every_checkpoint_survives_a_move(tmp_path, tmp_path_factory.mktemp("elsewhere"), ds, monkeypatch)


def _every_checkpoint_survives_a_move(root, elsewhere, ds, monkeypatch) -> None:
    """Every policy the run wrote (baseline, each stage's epoch / best / final, the export) loads
    with LeRobot's loader and ours after the run is moved and the original (and the VLM it was
    built from) deleted, with the same chunks bit for bit."""
    import shutil

    from lerobot_tiny import lerobot_chunk, load_with_lerobot
    from policytrim.policies.lerobot import is_lerobot_checkpoint

    dirs = sorted(p.parent.relative_to(root) for p in root.rglob("config.json") if is_lerobot_checkpoint(p.parent))
    assert {"baseline", "train/final/policy", "export"} <= {str(d) for d in dirs} and len(dirs) >= 6, dirs
    obs = {"state": torch.as_tensor(ds.state[:2]), "image": torch.as_tensor(ds.image[:2])}
    instructions = [ds.instructions[0]] * 2
    before = {d: load_policy(root / d).sample(obs, instructions, "deterministic").actions for d in dirs}
    monkeypatch.chdir(elsewhere)
    for name in ("untrained", "baseline", "train", "export"):
        shutil.move(str(root / name), elsewhere / name)
    shutil.rmtree(root)  # the run, its demos and the VLM it was built from
    for d in dirs:
        moved = elsewhere / d
        policy_files = [*moved.glob("policy*.json"), moved / "config.json", *moved.glob("vlm/*.json")]
        texts = "\n".join(p.read_text() for p in policy_files)  # not the run's records (e.g. the BC config)
        assert str(root) not in texts, f"{d} points at the deleted run"
        monkeypatch.chdir(moved)  # as above: the local VLM's name resolves against the working directory
        loaded = load_with_lerobot(moved)
        lerobot_chunk(loaded, obs["state"], {"observation.images.corner2": obs["image"]}, instructions)
        monkeypatch.chdir(elsewhere)
        ours = load_policy(moved)
        assert torch.equal(ours.sample(obs, instructions, "deterministic").actions, before[d]), d
        for k, v in loaded[0].state_dict().items():
            assert torch.equal(v, ours.policy.state_dict()[k]), (d, k)
