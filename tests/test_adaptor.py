"""The window adaptor (`policytrim.policies.adaptor`): its starting distribution, sampling modes,
log-probs, and the save -> move -> load round trip beside a policy."""

from __future__ import annotations

import shutil

import pytest
import torch

from policytrim.errors import InputError
from policytrim.policies.adaptor import ADAPTOR_DIR, WindowAdaptor, has_adaptor

H, A, D = 30, 4, 39
WINDOWS = (5, 10, 15, 20, 25, 30)


def _adaptor(**kw):
    torch.manual_seed(0)
    args = dict(state_dim=D, action_dim=A, chunk_size=H, windows=WINDOWS, initial_window=15, hidden_dim=32)
    args.update(kw)
    return WindowAdaptor(**args)


def _inputs(batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D, generator=g), torch.rand(batch, H, A, generator=g) * 2 - 1


def test_starts_as_the_fixed_window_with_the_initial_mass():
    adaptor = _adaptor(initial_mass=0.9)
    state, chunk = _inputs()
    probs = torch.softmax(adaptor.logits(state, chunk), dim=-1)
    torch.testing.assert_close(probs[:, WINDOWS.index(15)], torch.full((6,), 0.9))
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    windows, _ = adaptor.sample(state, chunk, "deterministic")
    assert windows.tolist() == [15] * 6


def test_sampling_is_reproducible_per_row_and_log_probs_agree():
    adaptor = _adaptor(initial_mass=0.4)
    state, chunk = _inputs(batch=64)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(64)]  # noqa: E731
    w1, lp1 = adaptor.sample(state, chunk, "sampled", gens())
    w2, lp2 = adaptor.sample(state, chunk, "sampled", gens())
    assert torch.equal(w1, w2) and torch.equal(lp1, lp2)
    alone, _ = adaptor.sample(state[3:4], chunk[3:4], "sampled", [torch.Generator().manual_seed(103)])
    assert alone.item() == w1[3].item()  # a row's draw does not depend on the batch around it
    assert len(set(w1.tolist())) > 1  # with 0.4 on one window, 64 rows do not all agree
    assert set(w1.tolist()) <= set(WINDOWS)
    torch.testing.assert_close(adaptor.log_prob(state, chunk, w1), lp1)


def test_log_prob_is_differentiable_and_moves_the_choice():
    adaptor = _adaptor()
    state, chunk = _inputs()
    target = torch.full((6,), 30)
    before = adaptor.log_prob(state, chunk, target).mean().item()
    opt = torch.optim.SGD(adaptor.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        (-adaptor.log_prob(state, chunk, target).mean()).backward()
        opt.step()
    assert adaptor.log_prob(state, chunk, target).mean().item() > before + 1.0


def test_save_move_delete_load_round_trip(tmp_path):
    adaptor = _adaptor(initial_mass=0.5)
    with torch.no_grad():
        adaptor.net[0].weight.add_(0.1)
        adaptor.net[-1].weight.normal_()
        adaptor.state_mean.fill_(0.3)
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    assert not has_adaptor(policy_dir)
    adaptor.save_pretrained(policy_dir)
    assert has_adaptor(policy_dir)
    moved = tmp_path / "elsewhere" / "policy"
    shutil.copytree(policy_dir, moved)
    shutil.rmtree(policy_dir)
    loaded = WindowAdaptor.from_pretrained(moved)
    state, chunk = _inputs()
    torch.testing.assert_close(loaded.logits(state, chunk), adaptor.logits(state, chunk), rtol=0, atol=0)
    assert loaded.windows == WINDOWS and loaded.initial_window == 15


def test_corrupt_or_foreign_adaptor_files_are_refused(tmp_path):
    _adaptor().save_pretrained(tmp_path)
    weights = tmp_path / ADAPTOR_DIR / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(InputError, match="SHA-256 differs"):
        WindowAdaptor.from_pretrained(tmp_path)
    config = tmp_path / ADAPTOR_DIR / "config.json"
    config.write_text('{"kind": "tinyvla", "format_version": 1}')
    with pytest.raises(InputError, match="expected kind 'window_adaptor'"):
        WindowAdaptor.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        WindowAdaptor.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"windows": (10, 5)}, "distinct increasing integers"),
        ({"windows": (5, 40)}, r"must lie in \[1, chunk size 30\]"),
        ({"initial_window": 7}, "initial window 7 must be one of"),
        ({"initial_mass": 1.0}, r"initial_mass must be in \(0, 1\)"),
        ({"hidden_dim": 0}, "hidden_dim must be in"),
    ],
)
def test_bad_construction_is_one_clear_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        _adaptor(**kwargs)


def test_wrong_input_shapes_are_refused():
    adaptor = _adaptor()
    state, chunk = _inputs()
    with pytest.raises(InputError, match="adaptor chunk must be shaped"):
        adaptor.logits(state, chunk[:, :10])
    with pytest.raises(InputError, match="not among the adaptor's"):
        adaptor.log_prob(state, chunk, torch.full((6,), 7))


def test_a_greedy_adaptor_samples_in_train_mode_only_and_keeps_it_when_saved(tmp_path):
    """greedy (per-call credit): the most likely window in sampled mode, draws in train mode; saved
    and loaded with its flag; an adaptor saved before the flag existed loads as sampling."""
    import json

    adaptor = _adaptor(initial_mass=0.4, greedy=True)
    state, chunk = _inputs(batch=64)
    sampled, _ = adaptor.sample(state, chunk, "sampled")
    assert sampled.tolist() == [15] * 64
    drawn, _ = adaptor.sample(state, chunk, "train")
    assert len(set(drawn.tolist())) > 1
    adaptor.save_pretrained(tmp_path)
    assert WindowAdaptor.from_pretrained(tmp_path).greedy is True
    config = tmp_path / ADAPTOR_DIR / "config.json"
    old = json.loads(config.read_text())
    del old["greedy"]
    config.write_text(json.dumps(old))
    assert WindowAdaptor.from_pretrained(tmp_path).greedy is False
