"""Token-decoding heads (policytrim.policies.tokens): bins, sampling, log-probs, causality, BC loss."""

import pytest
import torch
from tests.test_policies import A, B, H, gens, make_batch, make_policy
from torch.nn import functional as F

from policytrim.errors import InputError
from policytrim.policies.tokens import ActionBins, draw_uniforms, pick_tokens, token_log_prob


def test_bins_round_trip_openvla_scheme():
    bins = ActionBins.uniform(-1.0, 1.0, 256)
    assert bins.count == 256 and bins.edges.numel() == 257
    assert bins.edges[0] == -1.0 and bins.edges[-1] == 1.0
    every = torch.arange(256)
    assert torch.equal(bins.encode(bins.decode(every)), every)  # token -> centre -> same token
    a = torch.rand(1000, dtype=torch.float64) * 2 - 1
    assert (bins.decode(bins.encode(a)) - a).abs().max() <= 1.0 / 256 + 1e-12  # half a bin width
    # the bounds and beyond land in the end bins
    assert bins.encode(torch.tensor([-1.0, 1.0, -3.0, 3.0], dtype=torch.float64)).tolist() == [0, 255, 0, 255]
    # bin i holds [edge_i, edge_{i+1})
    assert bins.encode(bins.edges[1:2]).item() == 1 and bins.encode(bins.edges[1:2] - 1e-9).item() == 0


def test_bad_bin_edges_are_refused():
    with pytest.raises(InputError, match="strictly increasing"):
        ActionBins([0.0, 0.5, 0.5, 1.0])
    with pytest.raises(InputError, match="bins must be an integer >= 2"):
        ActionBins.uniform(-1, 1, 1)


def test_pick_tokens_inverse_cdf_matches_the_tempered_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]], dtype=torch.float64).expand(40000, -1)
    u = torch.rand(40000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 0.5, 2.0):
        tokens = pick_tokens(logits, u, temperature)
        freq = torch.bincount(tokens, minlength=4).double() / 40000
        want = torch.softmax(logits[0] / temperature, -1)
        assert (freq - want).abs().max() < 0.01, (temperature, freq, want)
    assert pick_tokens(logits[:3], None, 1.0).tolist() == [2, 2, 2]  # no uniforms: the argmax


def test_token_log_prob_is_the_tempered_categorical():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 7, (3, 5), generator=g)
    got = token_log_prob(logits, tokens, 0.7)
    for b in range(3):
        for i in range(5):
            want = torch.distributions.Categorical(logits=logits[b, i] / 0.7).log_prob(tokens[b, i])
            assert got[b, i].item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("head", ["token_parallel", "token_ar"])
def test_row_log_prob_is_the_sum_of_its_token_log_probs_and_deterministic_is_argmax(head):
    policy = make_policy(head, token_temperature=0.8).double()
    obs, ins = make_batch()
    context = policy.encode(obs, ins)
    det = policy.sample(obs, ins, "deterministic", gens(B))
    tokens = det.replay["tokens"].flatten(1)
    logits = policy.head.logits(context, tokens)
    assert torch.equal(tokens, logits.argmax(-1))  # every token the argmax given its prefix
    assert torch.equal(det.actions, policy.bins.decode(det.replay["tokens"], torch.float32))
    assert torch.equal(policy.sample(obs, ins, "deterministic", gens(B, base=9)).actions, det.actions)
    train = policy.sample(obs, ins, "train", gens(B))
    per_token = F.log_softmax(policy.head.logits(context, train.replay["tokens"].flatten(1)) / 0.8, -1)
    want = per_token.gather(-1, train.replay["tokens"].flatten(1).unsqueeze(-1)).reshape(B, H, A).sum(-1)
    assert torch.allclose(train.logp, want, atol=1e-12)
    assert torch.equal(train.actions, policy.sample(obs, ins, "sampled", gens(B)).actions)  # explores as it deploys
    assert not torch.equal(train.actions, policy.sample(obs, ins, "train", gens(B, base=9)).actions)


def test_autoregressive_head_is_causal_and_the_parallel_head_is_not():
    obs, ins = make_batch(2)
    tokens = torch.randint(0, 256, (2, H * A), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 17) % 256
    ar = make_policy("token_ar").double()
    ctx = ar.encode(obs, ins)
    a, b = ar.head.logits(ctx, tokens), ar.head.logits(ctx, changed)
    assert torch.allclose(a[:, :11], b[:, :11], atol=1e-12)  # position i sees tokens < i only
    assert not torch.allclose(a[:, 11:], b[:, 11:])
    par = make_policy("token_parallel").double()
    ctx = par.encode(obs, ins)
    logits = par.head.logits(ctx)
    assert logits.shape == (2, H * A, 256)
    # bidirectional: a query's output depends on the other queries
    with torch.no_grad():
        par.head.queries[-1].add_(torch.randn(par.head.queries.shape[1], dtype=torch.float64))
    assert not torch.allclose(par.head.logits(ctx)[:, 0], logits[:, 0])


def test_autoregressive_sampling_matches_a_plain_token_by_token_loop():
    policy = make_policy("token_ar").double()
    obs, ins = make_batch(3)
    out = policy.sample(obs, ins, "train", gens(3))
    u = draw_uniforms(gens(3), 3, H * A)
    ctx = policy.encode(obs, ins)
    for b in range(3):
        prefix: list[int] = []
        for i in range(H * A):
            full = torch.tensor([prefix + [0] * (H * A - len(prefix))])
            probs = torch.softmax(policy.head.logits(ctx[b : b + 1], full)[0, i], -1)
            prefix.append(int(torch.searchsorted(probs.cumsum(-1), u[b, i], right=True).clamp(max=255)))
        assert out.replay["tokens"][b].flatten().tolist() == prefix


def test_bc_loss_is_cross_entropy_on_bins():
    policy = make_policy("token_parallel").double()
    obs, ins = make_batch()
    actions = torch.rand(B, H, A, dtype=torch.float64) * 2 - 1
    mask = torch.ones(B, H, dtype=torch.bool)
    logits = policy.head.logits(policy.encode(obs, ins))
    ce = F.cross_entropy(logits.reshape(-1, 256), policy.bins.encode(actions).flatten(), reduction="none")
    assert policy.bc_loss(obs, ins, actions, mask).item() == pytest.approx(
        ce.reshape(B, H, A).sum(-1).mean().item(), rel=1e-12
    )


def test_bin_edges_are_in_the_spec_and_change_decoding(tmp_path):
    policy = make_policy("token_ar", token_bins=16)
    spec = policy.spec()
    assert spec["token_bins"] == 16 and len(spec["bin_edges"]) == 17 and spec["bin_edges"][0] == -1.0
    assert "bin_edges" not in make_policy("gaussian").spec()  # other heads' specs are unchanged
    with pytest.raises(InputError, match="bin_edges hold 16 bins but token_bins is 8"):
        type(policy).from_spec({**spec, "token_bins": 8})


def test_kv_cache_steps_give_the_teacher_forced_logits():
    policy = make_policy("token_ar").double()
    obs, ins = make_batch(3)
    ctx = policy.encode(obs, ins)
    tokens = torch.randint(0, 256, (3, H * A), generator=torch.Generator().manual_seed(2))
    full = policy.head.logits(ctx, tokens)
    caches = [[] for _ in policy.head.blocks]
    x = policy.head.context(ctx)
    for i in range(H * A):
        assert torch.allclose(policy.head.step(x, i, caches), full[:, i], atol=1e-10), i
        x = policy.head.embed(tokens[:, i])
