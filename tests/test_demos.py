"""Demonstrations: collect -> save -> load round trip, suboptimality, and the loader's validation."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from policytrim.config import ConfigError, DataConfig, EnvConfig, RolloutConfig, RunConfig
from policytrim.data.collect import Suboptimality, collect_demos
from policytrim.data.demos import DemoDataset, load_demos, save_demos, summarize_demos
from policytrim.errors import InputError


def cfg_for(episodes=2, suboptimal=True, tasks=("reach-v3",), **data):
    return RunConfig(
        env=EnvConfig(tasks=tasks),
        data=DataConfig(episodes=episodes, suboptimal=suboptimal, **data),
        rollout=RolloutConfig(num_workers=0),
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "reach"
    ds = collect_demos(cfg_for(3), path)
    return path, ds


def test_collect_load_round_trip(collected):
    path, ds = collected
    assert sorted(p.name for p in path.iterdir()) == ["episodes.safetensors", "frames.safetensors", "meta.json"]
    loaded = load_demos(path)
    for name in (
        "state",
        "action",
        "episode_index",
        "frame_index",
        "task_index",
        "length",
        "success",
        "episode_task_index",
        "seed",
        "index",
        "start",
    ):
        assert np.array_equal(getattr(loaded, name), getattr(ds, name)), name
    assert loaded.num_episodes == 3 and loaded.success.all() and loaded.image is None
    assert loaded.tasks == ["reach-v3"] and loaded.instructions == ["reach the goal position"]
    meta = loaded.meta
    assert meta["format"] == "policytrim-demos" and meta["version"] == 1 and meta["horizon"] == 200
    assert meta["features"]["observation.state"] == {"shape": [39], "dtype": "float32"}
    assert meta["control_period_s"] == pytest.approx(0.0125)
    assert meta["collection"]["split"] == "train" and meta["collection"]["suboptimal"] is True
    assert loaded.seed.tolist() == [0, 0, 0] and loaded.index.tolist() == [0, 1, 2]  # training states
    assert (np.abs(loaded.action) <= 1).all()
    assert loaded.initial_state(1).index == 1 and loaded.episode(1) == slice(
        int(loaded.start[1]), int(loaded.start[1] + loaded.length[1])
    )


def test_collection_is_reproducible_and_suboptimal_is_slower(tmp_path, collected):
    _, ds = collected
    again = collect_demos(cfg_for(3), tmp_path / "again")
    assert np.array_equal(again.action, ds.action)
    clean = collect_demos(cfg_for(3, suboptimal=False), tmp_path / "clean")
    assert clean.meta["collection"]["suboptimal"] is False
    assert clean.length.sum() < ds.length.sum()
    summary = summarize_demos(clean)["reach-v3"]
    assert summary["episodes"] == 3 and summary["expert_success_rate"] == 1.0


def test_collect_with_worker_processes_matches_in_process(tmp_path, collected):
    _, ds = collected
    cfg = cfg_for(3)
    cfg.rollout = RolloutConfig(num_workers=2)
    assert np.array_equal(collect_demos(cfg, tmp_path / "pool").action, ds.action)


def test_suboptimality_knobs():
    data = DataConfig(
        speed_min=0.5, speed_max=0.5, pause_prob=1.0, pause_min=3, pause_max=3, detour_prob=0.0, jitter_std=0.0
    )
    sub = Suboptimality(data, np.random.default_rng(0))
    a = np.array([1.0, -0.5, 0.2, 0.7], np.float32)
    out = [sub(a, t)[0] for t in range(4)]
    assert all(np.allclose(o, [0, 0, 0, 0.7]) for o in out)  # hesitating: xyz 0, gripper kept
    no_pause = Suboptimality(replace(data, pause_prob=0.0), np.random.default_rng(0))
    assert np.allclose(no_pause(a, 0)[0], [0.5, -0.25, 0.1, 0.7])  # speed scale on xyz only
    detour = Suboptimality(
        replace(data, pause_prob=0.0, detour_prob=1.0, detour_min=5, detour_max=5), np.random.default_rng(1)
    )
    d0, d1, direction = detour.detour
    assert d1 - d0 == 5 and np.linalg.norm(direction) == pytest.approx(1.0)
    assert np.allclose(detour(a, d0)[0][:3], 0.5 * direction, atol=1e-6)
    jitter = Suboptimality(
        replace(data, pause_prob=0.0, speed_min=1.0, speed_max=1.0, jitter_std=2.0), np.random.default_rng(0)
    )
    pairs = [jitter(a, t) for t in range(50)]
    assert all((np.abs(executed) <= 1).all() for executed, _ in pairs)  # clipped
    assert all(np.allclose(intended, a) for _, intended in pairs)  # the same action before the jitter
    assert not any(np.allclose(executed, a) for executed, _ in pairs)


def test_intended_labels_record_the_action_before_the_jitter(tmp_path, collected):
    """data.labels intended: the same episodes run (the jitter still perturbs them), but each frame
    records the action before its jitter, so executed - recorded is the jitter itself."""
    _, ds = collected
    intended = collect_demos(cfg_for(3, labels="intended"), tmp_path / "intended")
    assert intended.meta["collection"]["settings"]["labels"] == "intended"
    assert ds.meta["collection"]["settings"]["labels"] == "executed"
    assert np.array_equal(intended.state, ds.state) and np.array_equal(intended.length, ds.length)
    jitter = (ds.action - intended.action)[np.abs(ds.action).max(axis=1) < 1]  # frames no clip touched
    assert len(jitter) > 100 and abs(float(jitter.std()) - 0.1) < 0.01 and abs(float(jitter.mean())) < 0.01


def copy_dataset(ds: DemoDataset, **changes) -> DemoDataset:
    return replace(ds, **changes)


def test_validation_errors(tmp_path, collected):
    path, ds = collected
    bad_cases = {
        "expected float32": copy_dataset(ds, state=ds.state.astype(np.float64)),
        "contains NaN": copy_dataset(
            ds, action=np.where(np.arange(len(ds.action))[:, None] == 5, np.nan, ds.action).astype(np.float32)
        ),
        "rows, expected": copy_dataset(ds, action=ds.action[:-1]),
        "lengths sum": copy_dataset(ds, length=ds.length + 1),
        "frame_index": copy_dataset(ds, frame_index=ds.frame_index[::-1].copy()),
        "instruction per task": copy_dataset(ds, instructions=[]),
    }
    for message, bad in bad_cases.items():
        with pytest.raises(InputError, match=message):
            save_demos(bad, tmp_path / "never")
        assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def write_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_loader_rejects_damaged_files(tmp_path, collected):
    path, _ = collected
    truncated = write_copy(path, tmp_path / "truncated")
    data = (truncated / "frames.safetensors").read_bytes()
    (truncated / "frames.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_demos(truncated)

    version = write_copy(path, tmp_path / "version")
    meta = json.loads((version / "meta.json").read_text())
    (version / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(InputError, match="version 2 is not supported"):
        load_demos(version)

    features = write_copy(path, tmp_path / "features")
    meta["features"]["observation.state"]["shape"] = [40]
    (features / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="observation.state has shape"):
        load_demos(features)

    missing = write_copy(path, tmp_path / "missing")
    (missing / "episodes.safetensors").unlink()
    with pytest.raises(InputError, match="episodes.safetensors is missing"):
        load_demos(missing)
    with pytest.raises(InputError, match="does not exist"):
        load_demos(tmp_path / "nope")


def test_refuses_to_overwrite_unless_asked(tmp_path, collected):
    _, ds = collected
    out = save_demos(ds, tmp_path / "d")
    with pytest.raises(InputError, match="already exists"):
        save_demos(ds, out)
    small = copy_dataset(ds)
    save_demos(small, out, overwrite=True)
    assert load_demos(out).num_frames == ds.num_frames


def test_collect_cli(tmp_path):
    out = tmp_path / "push"
    cmd = [
        sys.executable,
        "-m",
        "policytrim.cli",
        "collect",
        "--tasks",
        "reach-v3",
        "--data.episodes",
        "2",
        "--out",
        str(out),
        "--rollout.num-workers",
        "0",
        "--logging.no-progress",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reach-v3" in result.stdout and "steps (mean ± sd)" in result.stdout
    assert load_demos(out).num_episodes == 2
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_collect_with_images_round_trip(tmp_path):
    cfg = cfg_for(1, suboptimal=False)
    cfg.env = EnvConfig(tasks=("reach-v3",), image=True, image_size=32)
    ds = load_demos(collect_demos(cfg, tmp_path / "img") and tmp_path / "img")
    assert ds.image is not None and ds.image.shape == (ds.num_frames, 32, 32, 3) and ds.image.dtype == np.uint8
    assert ds.meta["features"]["observation.image"] == {"shape": [32, 32, 3], "dtype": "uint8"}


def test_two_cameras_round_trip(tmp_path, collected):
    """A second camera (LIBERO's wrist view, as read from a LeRobotDataset) is saved and loaded with
    its frames, and checked like the first."""
    _, ds = collected
    rng = np.random.default_rng(0)
    image, wrist = (rng.integers(0, 256, (ds.num_frames, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    loaded = load_demos(save_demos(copy_dataset(ds, image=image, wrist_image=wrist), tmp_path / "two"))
    assert np.array_equal(loaded.image, image) and np.array_equal(loaded.wrist_image, wrist)
    assert loaded.meta["features"]["observation.wrist_image"] == {"shape": [16, 16, 3], "dtype": "uint8"}
    with pytest.raises(InputError, match="observation.wrist_image has 1 rows"):
        save_demos(copy_dataset(ds, wrist_image=wrist[:1]), tmp_path / "never")


def test_a_shortfall_is_recorded_and_warned_or_refused(tmp_path, caplog):
    """push-v3's suboptimal expert fails on one of its first five training states, so with
    data.max_attempts = data.episodes = 5 the set really falls short."""
    cfg = cfg_for(5, tasks=("push-v3",), max_attempts=5)
    with caplog.at_level(logging.WARNING, logger="policytrim.data"):
        ds = collect_demos(cfg, tmp_path / "short")
    collection = load_demos(tmp_path / "short").meta["collection"]
    got = collection["expert_successes"]["push-v3"]
    assert collection["attempts"] == {"push-v3": 5} and collection["max_attempts"] == 5
    assert collection["on_shortfall"] == "warn"
    assert got < 5 and collection["collected"] == {"push-v3": got} == {"push-v3": ds.num_episodes}
    assert collection["short_of_requested"] == {"push-v3": got}
    assert "collected fewer demonstrations than requested" in caplog.text and f"push-v3: {got} of 5" in caplog.text

    cfg.data = replace(cfg.data, on_shortfall="error")
    refusal = f"fell short of data.episodes=5 within data.max_attempts=5 per task \\(push-v3: {got} of 5"
    with pytest.raises(InputError, match=refusal):
        collect_demos(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    # the default cap (3 x 5 + 10) tries further states and fills the set
    full = collect_demos(cfg_for(5, tasks=("push-v3",)), tmp_path / "full").meta["collection"]
    assert full["max_attempts"] == 25 and full["collected"] == {"push-v3": 5} and full["short_of_requested"] == {}
    assert full["attempts"]["push-v3"] > 5 and full["faults"] == {}


def test_attempt_cap_and_shortfall_settings_are_checked():
    with pytest.raises(ConfigError, match="data.max_attempts must be 0 \\(automatic\\) or >= data.episodes=5"):
        DataConfig(episodes=5, max_attempts=3)
    with pytest.raises(ConfigError, match="data.on_shortfall must be warn or error"):
        DataConfig(on_shortfall="ignore")


def test_collection_counts_simulator_faults_and_tries_another_state(tmp_path):
    """An episode whose simulator raises is an attempt without a demonstration (the engine's fault
    accounting), and the next training state replaces it."""
    from functools import partial

    from faults import faulty_env_factory

    ds = collect_demos(cfg_for(3), tmp_path / "faulty", env_factory=partial(faulty_env_factory, index=1, at_step=5))
    collection = ds.meta["collection"]
    assert collection["faults"] == {"InjectedFault": 1} and collection["attempts"] == {"reach-v3": 4}
    assert ds.index.tolist() == [0, 2, 3] and collection["collected"] == {"reach-v3": 3}


def test_the_report_states_the_demonstrations_collected(tmp_path):
    from policytrim.eval.report import Section, pipeline_section, to_markdown

    run = tmp_path / "run"
    run.mkdir()
    collected = {"push-v3": 186, "reach-v3": 200}
    demonstrations = {"episodes": 200, "max_attempts": 0, "on_shortfall": "warn", "collected": collected}
    summary = {"tasks": ["push-v3", "reach-v3"], "demonstrations": demonstrations}
    (run / "summary.json").write_text(json.dumps(summary))
    sec = Section(run, tmp_path / "plots", "p_")
    pipeline_section(sec)
    text = to_markdown(sec.blocks, tmp_path)
    expected = "push-v3 186, reach-v3 200 (**fewer than the 200 requested** for push-v3)"
    assert f"demonstrations collected per task: {expected}" in text
    assert "on_shortfall=warn" in text


def _env_that_cannot_start(env_cfg, task):
    raise RuntimeError("the simulator cannot start")


def test_collection_where_every_episode_faults_fails_with_one_error(tmp_path):
    cfg = cfg_for(2)
    with pytest.raises(InputError, match="no successful demonstration in 16 attempts"):  # 3 x 2 + 10
        collect_demos(cfg, tmp_path / "never", env_factory=_env_that_cannot_start)
    assert not (tmp_path / "never").exists()
