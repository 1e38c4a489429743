"""LeRobot policies in bf16 and dynamic int8 (`LeRobotChunkPolicy.to_precision`, what
benchmarks/deploy_timing.py's precision rows run): finite float32 chunks of the right shape, close to
the float32 policy's chunk from the same random numbers.

Before the adapter converted itself, a whole-network bf16 SmolVLA failed on its float32 observations
("mat1 and mat2 must have the same dtype") and an int8 one on reading the dtype of its quantized
action projection ("'LeRobotChunkPolicy' object has no attribute 'dtype'").

Tolerances: max |difference| of raw actions (bounds [-1, 1]) measured on these random-init policies
(4 observations, sampled mode, one generator seed each): tiny SmolVLA bf16 0.002, int8 0.009; the
tests allow 0.05. ACT and Diffusion run int8 only (bf16 fails inside LeRobot's forward); π0 / π0.5
are not converted (untested here)."""

from __future__ import annotations

import copy

import pytest
import torch

from optional_env import require_or_skip  # tests/optional_env.py

require_or_skip("lerobot.policies.factory", "lerobot")
pytestmark = pytest.mark.lerobot

from lerobot_tiny import build_tiny_vlm, tiny_config, write_tiny_policy  # noqa: E402
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402
from policytrim.policies.lerobot import dataset_stats  # noqa: E402
from policytrim.policies.precision import floating_dtype, to_precision  # noqa: E402

STATE_DIM, ACTION_DIM, IMAGE, CHUNK = 39, 4, (64, 64, 3), 15
CAMERA = "observation.images.corner2"
INSTRUCTION = "push the puck to the goal"
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """family -> a random-init tiny LeRobot policy, built when a test first asks for it."""
    root = tmp_path_factory.mktemp("lerobot_precision")
    g = torch.Generator().manual_seed(0)
    stats = dataset_stats(
        torch.randn(200, STATE_DIM, generator=g),
        torch.rand(200, ACTION_DIM, generator=g) * 2 - 1,
        torch.randint(0, 256, (50, *IMAGE), generator=g, dtype=torch.uint8),
        CAMERA,
    )
    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            vlm = build_tiny_vlm(root / "vlm", IMAGE[0], [INSTRUCTION]) if family == "smolvla" else None
            chunk, steps = (16, 5) if family == "diffusion" else (CHUNK, 10)
            torch.manual_seed(0)
            cfg = tiny_config(family, STATE_DIM, ACTION_DIM, chunk, 5, IMAGE, vlm_dir=vlm, flow_steps=steps)
            built[family] = load_policy(write_tiny_policy(root / family, cfg, stats))
        return built[family]

    return get


def chunks(policy, batch: int = 4) -> torch.Tensor:
    """One call per observation (batch 1, as deployed), each with its own seeded generator."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(batch):
        obs = {
            "state": torch.randn(1, STATE_DIM, generator=g),
            "image": torch.randint(0, 256, (1, *IMAGE), generator=g, dtype=torch.uint8),
        }
        rows.append(policy.sample(obs, [INSTRUCTION], "sampled", [torch.Generator().manual_seed(i)]).actions)
    return torch.cat(rows)


@pytest.mark.parametrize(
    "family, precision", [("smolvla", "bf16"), ("smolvla", "int8"), ("act", "int8"), ("diffusion", "int8")]
)
def test_lower_precision_chunks_are_float32_and_close(policies, family, precision):
    policy = policies(family)
    reference = chunks(policy)
    low = to_precision(copy.deepcopy(policy), precision)
    out = chunks(low)
    assert out.dtype == torch.float32 and out.shape == reference.shape == (4, policy.chunk_size, ACTION_DIM)
    assert torch.isfinite(out).all()
    diff = (out - reference).abs().max()
    assert 0 < diff <= TOLERANCE, diff  # > 0: the conversion changed the computation
    if precision == "bf16":
        assert low.input_dtype == floating_dtype(low.policy) == torch.bfloat16
    else:
        assert low.input_dtype == torch.float32
        assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in low.modules())
    assert torch.equal(chunks(policy), reference)  # the float32 policy is untouched


def test_smolvla_keeps_its_action_chain_float32(policies):
    model = to_precision(copy.deepcopy(policies("smolvla")), "bf16").policy.model
    assert model.action_in_proj.weight.dtype == model.action_out_proj.weight.dtype == torch.float32
    assert model.state_proj.weight.dtype == torch.bfloat16
    int8 = to_precision(copy.deepcopy(policies("smolvla")), "int8")
    assert int8.dtype == torch.float32  # the chain's dtype, read without the quantized layer's weight
    quantized = {n for n, m in int8.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    assert "policy.model.action_in_proj" in quantized
    assert not any(".text_model.layers.0.self_attn.q_proj" in n for n in quantized)


def test_unknown_or_unavailable_precision_is_an_input_error(policies):
    """ACT's and Diffusion's own forward make float32 tensors that meet bf16 weights (measured: "mat1 and
    mat2 must have the same dtype"), so bf16 is refused with one clear line."""
    with pytest.raises(InputError, match="precision must be one of"):
        policies("act").to_precision("fp16")
    for family in ("act", "diffusion"):
        with pytest.raises(InputError, match=f"bf16 is not available for LeRobot's {family} \\(only int8\\)"):
            to_precision(copy.deepcopy(policies(family)), "bf16")
