"""Behaviour cloning: chunking of demonstrations, the split, the CLI, and a tiny real run."""

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policytrim.config import EnvConfig, PolicyConfig, PretrainConfig, RunConfig
from policytrim.errors import InputError
from policytrim.policies import load_policy
from policytrim.train.bc import chunk_data, pretrain, split_episodes


def fake_demos(lengths=(3, 5, 4, 6), tasks=(0, 1, 0, 1), shuffle=True, seed=0):
    """Episodes whose action at frame f of episode e is (e, f, 0, 0), frames stored shuffled."""
    rng = np.random.default_rng(seed)
    rows = [(e, f, t) for e, (n, t) in enumerate(zip(lengths, tasks, strict=True)) for f in range(n)]
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    ep = np.array([r[0] for r in rows])
    fr = np.array([r[1] for r in rows])
    state = rng.normal(size=(len(rows), 39)).astype(np.float32)
    action = np.stack([ep, fr, np.zeros_like(ep), np.zeros_like(ep)], 1).astype(np.float32)
    return SimpleNamespace(
        state=state,
        action=action,
        episode_index=ep,
        frame_index=fr,
        task_index=np.array([r[2] for r in rows]),
        tasks=["reach-v3", "push-v3"],
        instructions=["reach the goal position", "push the puck to the goal"],
    )


def test_chunks_pad_with_the_last_action_and_mask_it():
    data = chunk_data(fake_demos(), chunk_size=4)
    for s in range(data.state.shape[0]):
        _, _, actions, mask = data.batch(torch.tensor([s]))
        e, f = int(actions[0, 0, 0]), int(actions[0, 0, 1])
        length = (3, 5, 4, 6)[e]
        for r in range(4):
            assert bool(mask[0, r]) == (f + r < length)
            assert actions[0, r, 0] == e  # never crosses into another episode
            assert actions[0, r, 1] == min(f + r, length - 1)


def test_bad_frame_indices_are_refused():
    demos = fake_demos(shuffle=False)
    demos.frame_index = demos.frame_index.copy()
    demos.frame_index[1] = 7
    with pytest.raises(InputError, match="frame_index"):
        chunk_data(demos, 4)


def test_split_holds_out_whole_episodes_of_every_task():
    demos = fake_demos(lengths=(3,) * 20, tasks=(0, 1) * 10)
    data = chunk_data(demos, 4)
    train, val = split_episodes(data.episode, data.instruction, 0.2, seed=0)
    assert train.numel() + val.numel() == data.state.shape[0]
    val_eps, train_eps = set(data.episode[val].tolist()), set(data.episode[train].tolist())
    assert not val_eps & train_eps and len(val_eps) == 4
    assert set(data.instruction[val].tolist()) == {0, 1}


def test_pretrain_refuses_bad_input_and_writes_nothing(tmp_path):
    cfg = RunConfig(pretrain=PretrainConfig(iterations=2, eval_episodes=0))
    with pytest.raises(InputError, match="does not exist"):
        pretrain(cfg, tmp_path / "nope", tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="--overwrite"):
        pretrain(cfg, fake_demos(), tmp_path / "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    assert not any((tmp_path / "exists").iterdir())


@pytest.mark.parametrize("head", ["gaussian", "flow", "token_parallel", "token_ar"])
def test_pretrain_writes_a_loadable_checkpoint_and_metrics(tmp_path, head):
    cfg = RunConfig(
        policy=PolicyConfig(
            head=head,
            chunk_size=4,
            default_window=2,
            hidden_dim=16,
            num_layers=1,
            flow_steps=3,
            token_dim=16,
            token_layers=1,
        ),
        pretrain=PretrainConfig(iterations=20, batch_size=8, eval_episodes=0),
    )
    cfg.logging.progress = False
    metrics = pretrain(cfg, fake_demos(lengths=(5,) * 8, tasks=(0, 1) * 4), tmp_path / "run")
    policy = load_policy(tmp_path / "run")
    assert policy.chunk_size == 4 and policy.default_window == 2 and policy.head_kind == head
    saved = json.loads((tmp_path / "run" / "pretrain_metrics.json").read_text())
    assert saved["frames"] == metrics["frames"] and len(saved["history"]) >= 2
    assert saved["config"]["policy"]["head"] == head


def test_cli_pretrain_bad_input_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "policytrim.cli",
            "pretrain",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "o").exists()


needs_collect = pytest.mark.skipif(
    importlib.util.find_spec("policytrim.data.demos") is None, reason="policytrim.data.demos not available"
)


@pytest.mark.slow
@needs_collect
def test_tiny_bc_on_real_metaworld_demos_lowers_validation_loss(tmp_path):
    from policytrim.data.collect import collect_demos

    cfg = RunConfig(
        env=EnvConfig(tasks=("reach-v3",), horizon=150),
        policy=PolicyConfig(chunk_size=8, default_window=4, hidden_dim=64, num_layers=2),
        pretrain=PretrainConfig(iterations=300, batch_size=64, eval_episodes=0, val_fraction=0.25),
    )
    cfg.data.episodes = 30
    cfg.rollout.num_workers = 0
    cfg.logging.progress = False
    collect_demos(cfg, tmp_path / "demos")
    metrics = pretrain(cfg, tmp_path / "demos", tmp_path / "run")
    assert metrics["final_val_loss"] < metrics["initial_val_loss"] - 1.0, metrics["history"]
    assert metrics["episodes"] == {"train": 22, "val": 8}
