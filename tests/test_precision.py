"""Inference precision (`policytrim.policies.precision`) on TinyVLA: bf16 and dynamic int8 give finite
float32 chunks of the right shape, close to the float32 policy's from the same random numbers.

Tolerances (max |difference| in raw actions, bounds [-1, 1]) were measured on these random-init
policies (3 rows, sampled mode): bf16 at most 0.016 (flow) / 0.005 (Gaussian), int8 at most 0.0007
(flow) / 0.007 (Gaussian); the tests allow 0.05."""

from __future__ import annotations

import copy

import pytest
import torch

from policytrim.errors import InputError
from policytrim.policies.precision import PRECISIONS, floating_dtype, to_precision
from policytrim.policies.tinyvla import TinyVLA

IMAGE = (32, 32, 3)
TOLERANCE = 0.05


def tiny(head: str, image: bool) -> TinyVLA:
    torch.manual_seed(0)
    return TinyVLA(
        state_dim=39,
        action_dim=4,
        chunk_size=10,
        default_window=5,
        instructions=["reach"],
        hidden_dim=32,
        num_layers=1,
        head=head,
        image_shape=IMAGE if image else None,
    ).eval()


def chunks(policy, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    obs = {
        "state": torch.randn(batch, 39, generator=g),
        "image": torch.randint(0, 256, (batch, *IMAGE), generator=g, dtype=torch.uint8),
    }
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    return policy.sample(obs, ["reach"] * batch, "sampled", gens).actions


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("image", [False, True], ids=["state", "image"])
@pytest.mark.parametrize("head", ["flow", "gaussian"])
def test_tinyvla_in_lower_precision_is_close_to_float32(head, image, precision):
    """int8 of an image TinyVLA failed before: its image encoder read the dtype of its (quantized)
    linear layer's weight."""
    policy = tiny(head, image)
    reference = chunks(policy)
    low = to_precision(copy.deepcopy(policy), precision)
    out = chunks(low)
    assert out.dtype == torch.float32 and out.shape == (3, 10, 4) and torch.isfinite(out).all()
    assert 0 < (out - reference).abs().max() <= TOLERANCE  # > 0: the conversion changed the computation
    if precision == "bf16":
        assert floating_dtype(low) == torch.bfloat16
    else:
        assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in low.modules())
    assert torch.equal(chunks(policy), reference)  # the float32 policy is untouched


def test_bad_precisions_are_input_errors():
    with pytest.raises(InputError, match="precision must be one of bf16, int8"):
        to_precision(tiny("flow", False), "fp8")
    with pytest.raises(InputError, match="quantizes a float32 network"):
        to_precision(to_precision(tiny("flow", False), "bf16"), "int8")


def test_floating_dtype_counts_elements_and_survives_quantization():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    assert floating_dtype(net) == torch.float32
    net[1].to(torch.bfloat16)  # 16 of 88 elements
    assert floating_dtype(net) == torch.float32
    net[0].to(torch.bfloat16)
    assert floating_dtype(net) == torch.bfloat16
    assert floating_dtype(torch.nn.ReLU()) == torch.float32
