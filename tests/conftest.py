"""Shared fixtures. `tiny_baseline` is a real BC checkpoint trained on real Meta-World expert
demonstrations (drawer-close-v3, clean experts), small enough to build in a few seconds; tests that need a
trained policy share it."""

from __future__ import annotations

from pathlib import Path

import pytest

from policytrim.config import EnvConfig, PolicyConfig, PretrainConfig, RolloutConfig, RunConfig

# The files that took longest in 2-worker runs here (2-core AMD EPYC, 2026-12-07: ~70-330 s each of
# ~1,000 s), started first: `scripts/run.sh test` hands whole files to pytest-xdist workers in
# collection order (--dist loadfile), and one of these collected late can leave one worker running it
# alone at the end. Only the order of files changes; a name not found changes nothing.
START_FIRST = (
    "test_resume.py",
    "test_train_adapt.py",
    "test_input_checks.py",
    "test_bad_inputs.py",
    "test_rollout.py",
    "test_distributed.py",
    "test_ray.py",
    # the optional environments' suites (each run on its own): their longest files
    "test_lerobot_pipeline.py",
    "test_lerobot_libero_collect.py",
    "test_maniskill_collect.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(START_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(START_FIRST)))  # stable: the rest keep their order


def tiny_config(**overrides) -> RunConfig:
    """A RunConfig at test size on drawer-close-v3 (in-process env stepping, no progress bars)."""
    cfg = RunConfig(
        env=EnvConfig(tasks=("drawer-close-v3",), horizon=120),
        policy=PolicyConfig(chunk_size=8, default_window=4, hidden_dim=64, num_layers=2),
        rollout=RolloutConfig(group_size=4, groups_per_epoch=2, num_workers=0),
        pretrain=PretrainConfig(iterations=1000, batch_size=128, eval_episodes=0, val_fraction=0.2),
    )
    cfg.data.episodes = 24
    cfg.data.suboptimal = False
    cfg.logging.progress = False
    cfg.logging.tensorboard = False
    for section, values in overrides.items():
        target = getattr(cfg, section)
        for key, value in values.items():
            setattr(target, key, value)
    return cfg


def run_windows(cfg: RunConfig) -> tuple[int, ...]:
    """Stage 1's windows of a run with ``cfg`` from a behaviour-cloned policy built from it."""
    from types import SimpleNamespace

    from policytrim.windows import WindowPlan

    h, k = cfg.policy.chunk_size, cfg.policy.default_window
    policy = SimpleNamespace(chunk_size=h, max_window=h, default_window=k)
    return WindowPlan.for_run(policy, cfg).stage1


@pytest.fixture(scope="session")
def tiny_baseline(tmp_path_factory) -> Path:
    """Path of a BC checkpoint (H = 8, default window 4) for drawer-close-v3 (sampled SR ~0.7-0.8)."""
    from policytrim.data.collect import collect_demos
    from policytrim.train.bc import pretrain

    root = tmp_path_factory.mktemp("tiny_baseline")
    cfg = tiny_config()
    collect_demos(cfg, root / "demos")
    pretrain(cfg, root / "demos", root / "baseline")
    return root / "baseline"
