"""Config tree: defaults, validation messages, strict file loading, presets."""

import json

import pytest

from policytrim.config import (
    ConfigError,
    EnvConfig,
    PolicyConfig,
    RolloutConfig,
    RunConfig,
    Stage1Config,
    Stage2Config,
    from_dict,
    load_config,
    preset_path,
    to_dict,
)
from policytrim.envs.tasks import ALL_TASKS, TASK_SETS, resolve_tasks
from policytrim.windows import default_windows


def test_defaults_follow_spec():
    cfg = RunConfig()
    assert cfg.rollout.group_size == 8
    assert cfg.stage1.horizon_coef == 1.0
    assert (cfg.stage2.step_coef, cfg.stage2.stability_coef) == (0.8, 0.2)
    assert cfg.stage2.budget_multiplier == 1.3
    assert cfg.stage2.sigma_floor == 5.0
    assert (cfg.stage1.clip_low, cfg.stage1.clip_high) == (0.2, 0.2)
    assert default_windows(cfg.policy.default_window, cfg.policy.chunk_size) == (5, 10, 15)  # default window 5, H = 15


def test_stage1_windows_from_default_window():
    assert default_windows(5, 10) == (5, 8, 10)
    assert default_windows(10, 10) == (10,)


def test_task_sets_and_names():
    assert len(ALL_TASKS) == 50
    assert len(TASK_SETS["MW8"]) == 8 and len(TASK_SETS["MT10"]) == 10
    assert resolve_tasks("reach-v3,push-v3") == ("reach-v3", "push-v3")
    assert resolve_tasks(["mw8", "reach-v3"]) == TASK_SETS["MW8"]
    with pytest.raises(ValueError, match="unknown task 'reach'.*reach-v3"):
        resolve_tasks("reach")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RolloutConfig(group_size=1), r"group_size must be an integer in \[2, 1024\]"),
        (lambda: Stage1Config(windows=(10, 5)), "strictly increasing"),
        (lambda: Stage1Config(windows=(5, 5)), "strictly increasing"),
        (lambda: RunConfig(stage1=Stage1Config(windows=(5, 20))), "<= policy.chunk_size=15"),
        (lambda: RunConfig(stage2=Stage2Config(window=16)), "stage2.window must be <= policy.chunk_size=15"),
        (lambda: PolicyConfig(default_window=16), "default_window must be in"),
        (lambda: Stage2Config(stability_coef=-0.1), "stage2.stability_coef must be a number in"),
        (lambda: Stage2Config(floor_mode="soft"), "floor_mode must be clamp or gate"),
        (lambda: Stage2Config(budget_multiplier=0.5), "budget_multiplier"),
        (lambda: Stage1Config(lr=0.0), r"stage1.lr must be in \(0, 1\]"),
        (lambda: Stage1Config(lr=float("nan")), r"stage1.lr"),
        (lambda: EnvConfig(tasks=("nope-v3",)), "unknown task"),
        (lambda: EnvConfig(train_seed=1, val_seed=1), "disjoint"),
        (lambda: EnvConfig(suite="gym"), "gym_id is required"),
        (lambda: PolicyConfig(flow_steps=1), r"flow_steps must be an integer in \[2, 1000\]"),
        (lambda: RunConfig(policy=PolicyConfig(kind="expert", default_window=5)), "expert acts in closed loop"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_dict_round_trip_and_strictness(tmp_path):
    cfg = RunConfig(stage1=Stage1Config(lr=1e-4, windows=(5, 10)), env=EnvConfig(tasks=("MW8",)))
    data = to_dict(cfg)
    assert from_dict(RunConfig, json.loads(json.dumps(data))) == cfg
    with pytest.raises(ConfigError, match="unknown key.*stage1.lrr"):
        from_dict(RunConfig, {"stage1": {"lrr": 1}})
    with pytest.raises(ConfigError, match="stage1.epochs must be an integer"):
        from_dict(RunConfig, {"stage1": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="env.image must be true or false"):
        from_dict(RunConfig, {"env": {"image": "yes"}})


def test_yaml_file_and_presets(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("stage2:\n  stability_coef: 0.15\nenv:\n  tasks: [reach-v3]\n")
    cfg = load_config(path)
    assert cfg.stage2.stability_coef == 0.15 and cfg.env.tasks == ("reach-v3",)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage2: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(preset_path("demo")).env.tasks
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available presets: .*demo"):
        preset_path("nope")


def test_common_noise_is_for_the_adaptor_only_mode():
    from policytrim.config import AdaptConfig
    from policytrim.errors import InputError

    assert AdaptConfig(common_noise=True).common_noise is True
    with pytest.raises(InputError, match="adapt.common_noise needs adapt.train_policy false"):
        AdaptConfig(common_noise=True, train_policy=True)
    with pytest.raises(InputError, match="adapt.initial_window"):
        AdaptConfig(initial_window=-1)
