"""`policytrim serve` of a policy carrying a window adaptor, over a real websocket: the metadata
announces per-call windows, each reply holds ``n_actions`` (the adaptor's choice for that chunk), our
broker executes that many, and a client that ignores the field still works at the fixed window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("websockets", reason="needs the serve extra: pip install 'policytrim[serve]'")
pytest.importorskip("msgpack", reason="needs the serve extra: pip install 'policytrim[serve]'")

from tests.test_serve import make_policy, request

from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.policies import load_policy, save_policy
from policytrim.policies.adaptor import WindowAdaptor, adaptor_of, attach_adaptor
from policytrim.serve.client import ActionChunkBroker, PolicyClient
from policytrim.serve.server import PolicyServer, PolicyService, ServeConfig, ServerThread

WINDOWS = (3, 5, 8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A policy (window 3) with an adaptor whose most likely window is 5, saved and loaded back."""
    policy = make_policy()
    torch.manual_seed(1)
    adaptor = WindowAdaptor(state_dim=39, action_dim=4, chunk_size=8, windows=WINDOWS, initial_window=3, hidden_dim=16)
    with torch.no_grad():
        adaptor.net[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))
    attach_adaptor(policy, adaptor)
    path = tmp_path_factory.mktemp("adaptive") / "policy"
    save_policy(policy, path)
    return path


@pytest.fixture(scope="module")
def server(saved):
    loaded = load_policy(saved)
    assert adaptor_of(loaded) is not None and adaptor_of(loaded).windows == WINDOWS
    with ServerThread(PolicyServer(PolicyService(loaded, ServeConfig(port=0, mode="deterministic")))) as running:
        yield running


def test_metadata_announces_per_call_windows_and_replies_carry_n_actions(server, saved):
    local = load_policy(saved)
    with PolicyClient(server.host, server.port) as client:
        meta = client.metadata
        assert meta["adaptive_window"] is True and meta["windows"] == list(WINDOWS) and meta["window"] == 3
        assert "n_actions" in meta["reply"]
        state = np.random.default_rng(0).normal(size=39).astype(np.float32)
        reply = client.infer(request(state))
    chunk = local.sample(
        {"state": torch.from_numpy(state)[None]}, [INSTRUCTIONS["drawer-close-v3"]], "deterministic"
    ).actions
    np.testing.assert_allclose(reply["actions"], chunk[0].numpy(), atol=1e-6)
    chosen, _ = adaptor_of(local).sample(torch.from_numpy(state)[None], chunk, "deterministic")
    assert reply["n_actions"] == int(chosen[0]) == 5


def test_the_broker_honours_n_actions_and_a_fixed_window_client_still_works(server):
    state = np.zeros(39, np.float32)
    with PolicyClient(server.host, server.port) as client:
        broker = ActionChunkBroker(client)
        for _ in range(7):
            broker.act(request(state))
        assert broker.executed == [5, 5] and broker.calls == 2  # the adaptor's choice per call
        fixed = ActionChunkBroker(client, window=3)  # a client executing the advertised fixed window
        for _ in range(7):
            fixed.act(request(state))
        assert fixed.executed == [3, 3, 3] and fixed.calls == math.ceil(7 / 3)


def test_a_policy_without_adaptor_announces_none(tmp_path):
    policy = make_policy()
    save_policy(policy, tmp_path / "policy")
    service = PolicyService(load_policy(tmp_path / "policy"))
    assert service.metadata["adaptive_window"] is False and service.metadata["windows"] is None
    reply = service.infer(request(np.zeros(39, np.float32)))
    assert "n_actions" not in reply
