"""File formats and security (issue 7).

- No file or network input is ever unpickled: checkpoints are safetensors + JSON, datasets the
  documented ``policytrim-demos`` format (safetensors + JSON), configs go through safe YAML / JSON
  loaders. Checked twice: no unpickling call appears in the source, and every loader works on
  real files while pickle, torch.load, numpy.load and unsafe YAML are made to fail.
- A pickle planted where a checkpoint or dataset is expected is refused and never executed.
- Committed fixtures (``tests/fixtures/v*/``, written by ``make_fixtures.py``) still load and give
  the recorded result, and one of them is of the current format version: a format change that
  breaks old checkpoints, trainer checkpoints or datasets is noticed here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import policytrim
from policytrim.config import load_config
from policytrim.data.demos import VERSION as DEMOS_VERSION
from policytrim.data.demos import load_demos
from policytrim.errors import InputError
from policytrim.policies import load_policy
from policytrim.policies.tinyvla import FORMAT_VERSION as POLICY_VERSION
from policytrim.train.checkpoint import FORMAT_VERSION as TRAINER_VERSION
from policytrim.train.checkpoint import latest_checkpoint, load_trainer_state

SOURCE = Path(policytrim.__file__).resolve().parent
FIXTURES = sorted(p for p in (Path(__file__).resolve().parent / "fixtures").glob("v*") if p.is_dir())

# Calls that deserialise by unpickling (or run code from data); none may appear in the package.
FORBIDDEN = re.compile(
    r"torch\.load\(|torch\.jit\.load|pickle\.loads?\(|cPickle|cloudpickle|\bdill\b|joblib\.load|"
    r"allow_pickle\s*=\s*True|np\.load\(|numpy\.load\(|read_pickle|marshal\.loads|shelve\.open|"
    r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|UnsafeLoader|FullLoader|yaml\.Loader\b"
)


def test_no_unpickling_anywhere_in_the_package():
    hits = [
        f"{path.relative_to(SOURCE)}:{n}: {line.strip()}"
        for path in SOURCE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == []


@pytest.fixture
def no_pickle(monkeypatch):
    """Every unpickling / unsafe entry point raises while the test runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("an unpickling loader was called")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (torch, "load"),
        (np, "load"),
        (yaml, "unsafe_load"),
        (yaml, "full_load"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    yaml_load = yaml.load

    def safe_only(stream, Loader):  # noqa: N803 (PyYAML's name); yaml.safe_load calls yaml.load(.., SafeLoader)
        if Loader not in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            raise AssertionError(f"YAML loaded with {Loader.__name__}")
        return yaml_load(stream, Loader)

    monkeypatch.setattr(yaml, "load", safe_only)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_committed_fixture_loads_and_acts_as_recorded(fixture, no_pickle):
    expected = json.loads((fixture / "expected.json").read_text())
    policy = load_policy(fixture / "policy")
    obs = {
        "state": torch.from_numpy(
            np.random.default_rng(expected["observation_seed"]).normal(size=(1, 39)).astype(np.float32)
        )
    }
    chunk = policy.sample(obs, [expected["instruction"]], "deterministic").actions[0]
    assert torch.allclose(chunk, torch.tensor(expected["deterministic_chunk"]), atol=1e-5), (
        "same file, different actions"
    )
    # version 1 predates the trained-window keys: it loads as a behaviour-cloned policy at its window
    trained = expected.get("trained", {"default_window": 2, "trained_stage": "bc", "step_budget": None})
    assert (policy.default_window, policy.trained_stage, policy.step_budget) == (
        trained["default_window"],
        trained["trained_stage"],
        trained["step_budget"],
    )

    stage_dir = fixture / "extend"
    checkpoint = latest_checkpoint(stage_dir)
    assert checkpoint == fixture / expected["trainer_checkpoint"]
    resumed = load_policy(checkpoint / "policy")
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1.0)
    state = load_trainer_state(checkpoint, optimizer)
    assert state["epoch"] == expected["trainer_epoch"] and state["stage"] == "extend"
    assert optimizer.param_groups[0]["lr"] == 1e-3  # restored from the file
    steps = {float(s["step"]) for s in optimizer.state_dict()["state"].values()}
    assert steps == {float(expected["adam_step"])}

    demos = load_demos(fixture / "demos")
    assert (demos.num_episodes, demos.num_frames) == (expected["demos"]["episodes"], expected["demos"]["frames"])


def test_a_fixture_of_the_current_format_versions_is_committed():
    current = {"policy": POLICY_VERSION, "trainer": TRAINER_VERSION, "demos": DEMOS_VERSION}
    versions = [json.loads((f / "expected.json").read_text())["versions"] for f in FIXTURES]
    assert current in versions, (
        f"format versions are now {current}: run `python tests/fixtures/make_fixtures.py` to add a fixture "
        "(keep the old ones that must still load)"
    )


def test_configs_load_through_safe_loaders_only(tmp_path, no_pickle):
    (tmp_path / "c.yaml").write_text("stage1:\n  lr: 0.0001\n")
    (tmp_path / "c.json").write_text('{"stage1": {"lr": 0.0001}}')
    assert load_config(tmp_path / "c.yaml").stage1.lr == load_config(tmp_path / "c.json").stage1.lr == 1e-4


def _planted_pickle(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Exploit())


def test_a_planted_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    payload = _planted_pickle(marker)
    # a PyTorch-style checkpoint directory: only a pickle, no config.json / safetensors
    (tmp_path / "torch_style").mkdir()
    (tmp_path / "torch_style" / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(InputError, match="has no config.json"):
        load_policy(tmp_path / "torch_style")
    # a pickle under the safetensors name, next to a valid config.json
    fake = tmp_path / "fake_policy"
    fake.mkdir()
    config = json.loads((FIXTURES[-1] / "policy" / "config.json").read_text())
    config.pop("weights_sha256")
    (fake / "config.json").write_text(json.dumps(config))
    (fake / "model.safetensors").write_bytes(payload)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_policy(fake)
    demos = tmp_path / "demos"
    demos.mkdir()
    (demos / "meta.json").write_text((FIXTURES[-1] / "demos" / "meta.json").read_text())
    (demos / "frames.safetensors").write_bytes(payload)
    (demos / "episodes.safetensors").write_bytes(payload)
    with pytest.raises(InputError, match="cannot be read"):
        load_demos(demos)
    assert not marker.exists()
