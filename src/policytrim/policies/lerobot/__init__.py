"""LeRobot policies (SmolVLA, π0, π0.5, Diffusion Policy, ACT) as a `ChunkPolicy`.

`LeRobotChunkPolicy` wraps a LeRobot ``PreTrainedPolicy`` and its own pre/post-processor pipelines
so that the rollout engine, both PolicyTrim stages and the evaluation run on it unchanged.
``lerobot`` is imported lazily, inside functions (extra ``policytrim[lerobot]``, Python >= 3.12).

One module per concern, as LeRobot keeps one folder per policy family:

- `adapter`: `LeRobotChunkPolicy` (observations -> LeRobot's batch, processors, trainable parts,
  save / load), `export_lerobot`, `camera_sources`;
- one module per family, each a `common.Family` that samples a chunk, scores it and shapes the
  behaviour-cloning batch (log-probs per chunk row [B, H], summed over the real action dims, in the
  model's normalised action space: the post-processor's un-normalisation is affine, so ratios are
  the same as in raw action space):

  - `flow` (smolvla, pi0, pi05), train mode: one prefix pass (VLM + KV cache), then K
    ``denoise_step`` velocities, one step of K-1 the Flow-SDE transition, padded action dims
    masked out; deterministic mode: zero noise, plain Euler;
  - `diffusion`, train mode: the DDPM sampler itself, each step but the last a Gaussian, so the
    chain's density is exact; deterministic mode: zero initial noise, each step's mean;
  - `act`, train mode: N(ACT(obs), σ²) with a learnable σ = exp(log_std) [H, A]; deterministic
    mode: ACT's output.

  "sampled" mode is the deployed behaviour: flow from random noise (plain ODE), diffusion's own
  stochastic sampler, ACT's output;
- `checkpoint`: the checkpoint's files and how a checkpoint stays loadable after it is moved (a
  hub VLM is named by its id; a local VLM travels in the checkpoint's ``vlm/``, named ``vlm``);
- `stats`: LeRobot-style normalisation statistics; `run_config`: the run config applied.
"""

from policytrim.policies.lerobot.adapter import (
    FAMILIES,
    FAMILY_OPS,
    FLOW_FAMILIES,
    HUB_PREFIX,
    TRAIN_PARTS,
    WRIST_CAMERAS,
    LeRobotChunkPolicy,
    LeRobotOptions,
    camera_sources,
    export_lerobot,
)
from policytrim.policies.lerobot.checkpoint import (
    EXTRA_WEIGHTS,
    FORMAT_VERSION,
    KIND,
    LEROBOT_CONFIG,
    SIDECAR,
    VLM_DIR,
    is_lerobot_checkpoint,
)
from policytrim.policies.lerobot.common import CAMERA_PREFIX
from policytrim.policies.lerobot.run_config import apply_policy_config, policy_for_bc
from policytrim.policies.lerobot.stats import dataset_stats, image_stats

__all__ = [
    "CAMERA_PREFIX",
    "EXTRA_WEIGHTS",
    "FAMILIES",
    "FAMILY_OPS",
    "FLOW_FAMILIES",
    "FORMAT_VERSION",
    "HUB_PREFIX",
    "KIND",
    "LEROBOT_CONFIG",
    "SIDECAR",
    "TRAIN_PARTS",
    "VLM_DIR",
    "WRIST_CAMERAS",
    "LeRobotChunkPolicy",
    "LeRobotOptions",
    "apply_policy_config",
    "camera_sources",
    "dataset_stats",
    "export_lerobot",
    "image_stats",
    "is_lerobot_checkpoint",
    "policy_for_bc",
]
