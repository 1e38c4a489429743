"""LeRobot policies behind the ChunkPolicy contract, with LeRobot's real classes at tiny size, offline.

Runs in .venv-lerobot (`bash scripts/run.sh test` runs it as its second step); skipped where lerobot
is not installed. Every policy is a random-weight LeRobot policy written by LeRobot's own
save_pretrained from a tiny config (`tests/lerobot_tiny.py`).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.policies.factory", "lerobot")  # fails instead where scripts/run.sh requires lerobot
pytestmark = pytest.mark.lerobot

from lerobot_tiny import (  # noqa: E402
    build_tiny_vlm,
    lerobot_chunk,
    load_with_lerobot,
    publish_to_hub_cache,
    tiny_config,
    write_tiny_policy,
)
from policytrim.policies import load_policy  # noqa: E402
from policytrim.policies.lerobot import LeRobotChunkPolicy, LeRobotOptions, dataset_stats, export_lerobot  # noqa: E402

STATE_DIM, ACTION_DIM, IMAGE = 39, 4, (64, 64, 3)
CAMERA = "observation.images.corner2"
INSTRUCTIONS = ["push the puck to the goal", "open the drawer", "push the puck", "close it"]
CHUNK = {"smolvla": 15, "diffusion": 16, "act": 15}


def _random_stats() -> dict:
    g = torch.Generator().manual_seed(0)
    state = torch.randn(200, STATE_DIM, generator=g)
    actions = torch.rand(200, ACTION_DIM, generator=g) * 2 - 1
    images = torch.randint(0, 256, (50, *IMAGE), generator=g, dtype=torch.uint8)
    return dataset_stats(state, actions, images, CAMERA)


@pytest.fixture(scope="module")
def policy_dirs(tmp_path_factory):
    """One LeRobot checkpoint directory per family (SmolVLA with its tiny VLM under vlm/)."""
    root = tmp_path_factory.mktemp("lerobot_policies")
    vlm = build_tiny_vlm(root / "vlm_build", IMAGE[0], INSTRUCTIONS)
    dirs = {}
    torch.manual_seed(0)
    for family, chunk in CHUNK.items():
        cfg = tiny_config(
            family, STATE_DIM, ACTION_DIM, chunk, 5, IMAGE, vlm_dir=vlm, flow_steps=5 if family == "diffusion" else 10
        )
        dirs[family] = write_tiny_policy(root / family, cfg, _random_stats())
    shutil.rmtree(vlm)  # the copy under smolvla/vlm is what travels with the checkpoint
    return dirs


def _obs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "state": torch.randn(batch, STATE_DIM, generator=g),
        "image": torch.randint(0, 256, (batch, *IMAGE), generator=g, dtype=torch.uint8),
    }


def _rows(d: dict, idx) -> dict:
    return {k: v[idx] for k, v in d.items()}


@pytest.mark.parametrize("family", list(CHUNK))
def test_logprob_recomputes_under_different_batching(policy_dirs, family):
    policy = load_policy(policy_dirs[family])
    assert isinstance(policy, LeRobotChunkPolicy) and policy.family == family
    B = 4
    obs = _obs(B)
    gens = [torch.Generator().manual_seed(10 + b) for b in range(B)]
    sample = policy.sample(obs, INSTRUCTIONS, "train", gens)
    H = policy.chunk_size
    assert sample.actions.shape == (B, H, ACTION_DIM) and sample.logp.shape == (B, H)
    assert bool((sample.actions.abs() <= 1.0).all()) and bool(torch.isfinite(sample.logp).all())
    mask = torch.ones(B, H, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 9:] = False
    with torch.no_grad():
        whole = policy.log_prob(obs, INSTRUCTIONS, sample.replay, mask)
        one_by_one = torch.cat(
            [
                policy.log_prob(
                    _rows(obs, slice(b, b + 1)),
                    INSTRUCTIONS[b : b + 1],
                    _rows(sample.replay, slice(b, b + 1)),
                    mask[b : b + 1],
                )
                for b in range(B)
            ]
        )
        order = torch.tensor([3, 1, 0, 2])
        shuffled = torch.empty_like(whole)
        shuffled[order] = policy.log_prob(
            _rows(obs, order), [INSTRUCTIONS[i] for i in order], _rows(sample.replay, order), mask[order]
        )
    for recomputed in (whole, one_by_one, shuffled):
        ratio = torch.exp(recomputed - sample.logp)[mask]
        assert float((ratio - 1).abs().max()) < 1e-4, (family, float((ratio - 1).abs().max()))
        assert bool((recomputed[~mask] == 0).all())
    # a row's random numbers come from its own generator: alone it samples the same chunk
    alone = policy.sample(_rows(obs, slice(2, 3)), INSTRUCTIONS[2:3], "train", [torch.Generator().manual_seed(12)])
    torch.testing.assert_close(alone.actions[0], sample.actions[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(CHUNK))
def test_deterministic_mode_is_reproducible_and_sampled_mode_varies(policy_dirs, family):
    policy = load_policy(policy_dirs[family])
    obs = _obs(2, seed=3)
    a = policy.sample(
        obs, INSTRUCTIONS[:2], "deterministic", [torch.Generator().manual_seed(s) for s in (1, 2)]
    ).actions
    b = policy.sample(
        obs, INSTRUCTIONS[:2], "deterministic", [torch.Generator().manual_seed(s) for s in (5, 6)]
    ).actions
    torch.testing.assert_close(a, b)
    s1 = policy.sample(obs, INSTRUCTIONS[:2], "sampled", [torch.Generator().manual_seed(s) for s in (1, 2)]).actions
    s2 = policy.sample(obs, INSTRUCTIONS[:2], "sampled", [torch.Generator().manual_seed(s) for s in (5, 6)]).actions
    if family == "act":  # deployed ACT is deterministic: its own output
        torch.testing.assert_close(s1, a)
    else:
        assert float((s1 - s2).abs().max()) > 1e-3


def test_smolvla_deterministic_equals_lerobots_own_sampler(policy_dirs):
    """Our prefix-cache + denoise_step path reproduces LeRobot's predict_action_chunk (zero noise)."""
    policy = load_policy(policy_dirs["smolvla"])
    obs = _obs(3, seed=4)
    ours = policy.sample(obs, INSTRUCTIONS[:3], "deterministic").actions
    batch = policy.lerobot_batch(obs, INSTRUCTIONS[:3])
    width = policy.policy.config.max_action_dim
    theirs = policy.policy.predict_action_chunk(batch, noise=torch.zeros(3, policy.chunk_size, width))
    torch.testing.assert_close(ours, policy.postprocessor(theirs).clamp(-1, 1), atol=1e-5, rtol=0)


def test_act_mean_equals_lerobots_own_prediction(policy_dirs):
    policy = load_policy(policy_dirs["act"])
    obs = _obs(2, seed=5)
    ours = policy.sample(obs, INSTRUCTIONS[:2], "deterministic").actions
    theirs = policy.postprocessor(
        policy.policy.predict_action_chunk(policy.lerobot_batch(obs, INSTRUCTIONS[:2]))
    ).clamp(-1, 1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_ddpm_transition_matches_the_schedulers_own_step(policy_dirs):
    """The DDPM mean/std we score equal diffusers' DDPMScheduler.step driven by the same noise."""
    policy = load_policy(policy_dirs["diffusion"])
    batch = policy.lerobot_batch(_obs(2, seed=6), INSTRUCTIONS[:2])
    ops = policy.family_ops
    cond = ops.condition(policy, batch)
    scheduler = policy.policy.diffusion.noise_scheduler
    x = torch.randn(2, policy.chunk_size, ACTION_DIM, generator=torch.Generator().manual_seed(0))
    for t in ops.timesteps(policy)[:3] + ops.timesteps(policy)[-1:]:
        with torch.no_grad():
            mean, std = ops.moments(policy, x, t, cond)
            out = policy.policy.diffusion.unet(x, torch.full((2,), t, dtype=torch.long), global_cond=cond)
            step = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(99)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(99))
        expected = mean + std * z if std > 0 else mean
        torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)
        assert (std > 0) == (t > 0)


@pytest.mark.parametrize(
    ("family", "parts", "frozen_prefix"),
    [
        ("smolvla", "expert", "policy.model.vlm_with_expert.vlm."),
        ("smolvla", "no_vision", "policy.model.vlm_with_expert.vlm.model.vision_model."),
        ("diffusion", "no_vision", "policy.diffusion.rgb_encoder."),
        ("act", "no_vision", "policy.model.backbone."),
    ],
)
def test_gradients_reach_trainable_parts_only(policy_dirs, family, parts, frozen_prefix):
    policy = LeRobotChunkPolicy.from_pretrained(policy_dirs[family], options=LeRobotOptions(train_parts=parts))
    obs = _obs(2, seed=7)
    sample = policy.sample(obs, INSTRUCTIONS[:2], "train", [torch.Generator().manual_seed(s) for s in (1, 2)])
    mask = torch.ones(2, policy.chunk_size, dtype=torch.bool)
    policy.train()
    policy.log_prob(obs, INSTRUCTIONS[:2], sample.replay, mask).sum().backward()
    params = dict(policy.named_parameters())
    frozen = [n for n in params if n.startswith(frozen_prefix)]
    assert frozen, f"no parameter under {frozen_prefix}"
    for name in frozen:
        assert not params[name].requires_grad and params[name].grad is None, name
    reached = [n for n, p in params.items() if p.grad is not None and float(p.grad.abs().sum()) > 0]
    assert reached and all(not n.startswith(frozen_prefix) for n in reached)
    if family == "smolvla" and parts == "expert":
        assert any(".lm_expert." in n for n in reached) and any("action_out_proj" in n for n in reached)
    if family == "act":
        assert "log_std" in reached  # the exploration std learns from the GRPO loss
    assert not policy.policy.training  # no dropout while the trainer trains


def _json_texts(directory) -> str:
    return "\n".join(p.read_text() for p in sorted(directory.rglob("*.json")))


@pytest.mark.parametrize("family", list(CHUNK))
def test_export_loads_with_both_loaders_after_a_move_with_the_source_deleted(
    policy_dirs, family, tmp_path, monkeypatch
):
    """Ship an export as a user does: move it elsewhere, delete the checkpoint (and the run) it came
    from; LeRobot's own loader and ours read it and give the same chunks bit for bit."""
    source = tmp_path / "run" / "policy"
    shutil.copytree(policy_dirs[family], source)
    policy = load_policy(source)
    policy.default_window = 7  # the window PolicyTrim trained it to execute
    obs = _obs(2, seed=8)
    ours_before = policy.sample(obs, INSTRUCTIONS[:2], "deterministic").actions
    out = export_lerobot(policy, tmp_path / "run" / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["n_action_steps"] == 7 and config["type"] == family
    if family == "smolvla":  # the local VLM travels inside, named relative to the checkpoint
        assert config["vlm_model_name"] == "vlm" and (out / "vlm" / "config.json").is_file()
        steps = json.loads((out / "policy_preprocessor.json").read_text())["steps"]
        assert [s["config"]["tokenizer_name"] for s in steps if "tokenizer_name" in s.get("config", {})] == ["vlm"]
    # LeRobot resolves a local VLM name against the working directory (the checkpoint module's docstring)
    monkeypatch.chdir(out if family == "smolvla" else tmp_path)
    theirs_before = lerobot_chunk(load_with_lerobot(out), obs["state"], {CAMERA: obs["image"]}, INSTRUCTIONS[:2])

    shipped = tmp_path / "robot" / "policies" / "shipped"
    shipped.parent.mkdir(parents=True)
    shutil.move(str(out), shipped)
    del policy
    shutil.rmtree(tmp_path / "run")  # the source checkpoint and the run are gone
    assert str(tmp_path) not in _json_texts(shipped), "a file of the export points outside it"

    monkeypatch.chdir(shipped if family == "smolvla" else tmp_path)
    loaded = load_with_lerobot(shipped)
    assert loaded[0].config.n_action_steps == 7
    theirs = lerobot_chunk(loaded, obs["state"], {CAMERA: obs["image"]}, INSTRUCTIONS[:2])
    assert torch.equal(theirs, theirs_before)
    monkeypatch.chdir(tmp_path)
    ours = load_policy(shipped)  # ours from anywhere
    assert ours.default_window == 7
    assert torch.equal(ours.sample(obs, INSTRUCTIONS[:2], "deterministic").actions, ours_before)
    for k, v in loaded[0].state_dict().items():
        assert torch.equal(v, ours.policy.state_dict()[k]), k
    if family != "diffusion":  # LeRobot's own sampler equals our deterministic mode (diffusion draws its noise)
        torch.testing.assert_close(
            theirs.clamp(-1, 1)[:, : ours_before.shape[1]], ours_before[:, : theirs.shape[1]], atol=1e-5, rtol=0
        )


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache of this test's own, offline (as a robot's cache holds SmolVLA's VLM)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_smolvla_with_a_hub_vlm_loads_from_anywhere_with_lerobots_loader(hub_cache, tmp_path, monkeypatch):
    """SmolVLA's VLM named by a hub id (its real one: HuggingFaceTB/SmolVLM2-500M-Video-Instruct;
    here a tiny VLM in the test's cache): nothing is copied, and LeRobot's own loader reads the
    moved export from any working directory, with its source deleted."""
    vlm = build_tiny_vlm(tmp_path / "vlm_build", IMAGE[0], INSTRUCTIONS)
    repo = publish_to_hub_cache(vlm, "policytrim-tests/tiny-smolvlm", hub_cache)
    shutil.rmtree(vlm)
    torch.manual_seed(0)
    cfg = tiny_config("smolvla", STATE_DIM, ACTION_DIM, CHUNK["smolvla"], 5, IMAGE, vlm_dir=repo)
    source = write_tiny_policy(tmp_path / "source", cfg, _random_stats())
    policy = load_policy(source)
    obs = _obs(2, seed=10)
    ours_before = policy.sample(obs, INSTRUCTIONS[:2], "deterministic").actions
    out = export_lerobot(policy, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["vlm_model_name"] == repo and not (out / "vlm").exists()
    theirs_before = lerobot_chunk(load_with_lerobot(out), obs["state"], {CAMERA: obs["image"]}, INSTRUCTIONS[:2])
    shipped = tmp_path / "elsewhere" / "shipped"
    shipped.parent.mkdir()
    shutil.move(str(out), shipped)
    shutil.rmtree(source)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert torch.equal(
        lerobot_chunk(load_with_lerobot(shipped), obs["state"], {CAMERA: obs["image"]}, INSTRUCTIONS[:2]), theirs_before
    )
    assert torch.equal(load_policy(shipped).sample(obs, INSTRUCTIONS[:2], "deterministic").actions, ours_before)


def test_bad_inputs_are_one_clear_error(policy_dirs, tmp_path):
    from policytrim.errors import InputError

    policy = load_policy(policy_dirs["smolvla"])
    with pytest.raises(InputError, match="camera image"):
        policy.sample({"state": torch.zeros(1, STATE_DIM)}, ["x"], "sampled")
    with pytest.raises(InputError, match=r"obs\['state'\] must be"):
        policy.sample(
            {"state": torch.zeros(1, 7), "image": torch.zeros(1, *IMAGE, dtype=torch.uint8)}, ["x"], "sampled"
        )
    with pytest.raises(InputError, match="train_parts must be one of"):
        LeRobotOptions(train_parts="head")
    with pytest.raises(InputError, match="already exists"):
        export_lerobot(policy, policy_dirs["act"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"type": "no_such_policy"}))
    with pytest.raises(InputError, match="not a readable LeRobot checkpoint"):
        load_policy(tmp_path / "bad")


def test_flow_logprob_ignores_padded_action_dims(policy_dirs):
    """SmolVLA pads actions to max_action_dim; the padded dims carry no noise and no density."""
    policy = load_policy(policy_dirs["smolvla"])
    obs = _obs(2, seed=9)
    sample = policy.sample(obs, INSTRUCTIONS[:2], "train", [torch.Generator().manual_seed(s) for s in (3, 4)])
    x_t, x_next = sample.replay["x_t"], sample.replay["x_next"]
    assert x_t.shape[-1] == policy.policy.config.max_action_dim > ACTION_DIM
    tampered = dict(sample.replay, x_next=torch.cat([x_next[..., :ACTION_DIM], x_next[..., ACTION_DIM:] + 5.0], dim=-1))
    mask = torch.ones(2, policy.chunk_size, dtype=torch.bool)
    torch.testing.assert_close(
        policy.log_prob(obs, INSTRUCTIONS[:2], tampered, mask),
        policy.log_prob(obs, INSTRUCTIONS[:2], sample.replay, mask),
    )
    # the real dims do count: one Gaussian transition per row over ACTION_DIM dims
    assert math.isfinite(float(sample.logp.sum()))


def test_flow_chain_dtype_follows_the_action_projection_not_the_backbone(policy_dirs):
    """π0 / π0.5 in bfloat16 keep their action projections in float32 and LeRobot samples float32 noise;
    the adapter's chain (noise, x_t) must follow the projection, not the first (backbone) parameter —
    seen as a dtype crash in benchmarks/lerobot_pi05_latency.py. Here: SmolVLA with its backbone cast."""
    policy = load_policy(policy_dirs["smolvla"])
    policy.policy.model.vlm_with_expert.to(torch.bfloat16)
    assert next(policy.policy.parameters()).dtype == torch.bfloat16
    assert policy.dtype == torch.float32 == policy.policy.model.action_in_proj.weight.dtype
    assert load_policy(policy_dirs["diffusion"]).dtype == torch.float32
