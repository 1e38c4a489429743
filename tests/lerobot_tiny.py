"""Tiny LeRobot policies built offline: a test fixture (tests/with_lerobot), also used by
benchmarks/lerobot_smolvla.py (which puts tests/ on sys.path). Not part of the library.

Nothing here downloads anything. SmolVLA reads its VLM's ``AutoConfig`` / ``AutoProcessor`` from
``vlm_model_name`` even with ``load_vlm_weights=False``, so `build_tiny_vlm` writes a complete local
VLM directory with ``transformers`` and ``tokenizers``: a byte-level BPE tokenizer trained on the
instructions (with SmolVLM's special tokens, which LeRobot reads as ``fake_image_token_id`` /
``global_image_token_id``), SmolVLM image / video processors at the image size without splitting, a
`SmolVLMProcessor` (``image_seq_len`` = (size/patch)² / scale²) and a small `SmolVLMConfig` (llama
text model 2 layers x 128, vision 2 layers x 64, patch 16). The weights are LeRobot's random init.

`write_tiny_policy` builds a LeRobot config of one family (smolvla, diffusion, act) for a state,
an action and (optionally) one camera, instantiates LeRobot's own policy class and processors with
the given normalisation statistics, and saves them with LeRobot's ``save_pretrained``: the result is
an ordinary LeRobot checkpoint directory (``config.json``, ``model.safetensors``,
``policy_preprocessor.json``, ...). SmolVLA's VLM is named as policytrim's checkpoints name it
(`policytrim.policies.lerobot.checkpoint`): a local VLM directory is copied under ``vlm/`` and named
``vlm``; a hub id is kept. `publish_to_hub_cache` puts a tiny VLM into a Hugging Face cache under a
hub id, as SmolVLA's real VLM (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``) lies in a robot's cache.

Requires the ``lerobot`` extra (Python >= 3.12).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TINY_FAMILIES = ("smolvla", "diffusion", "act")
CAMERA_PREFIX = "observation.images."

# SmolVLM's special tokens; LeRobot's SmolVLA looks up the image ones by attribute name.
_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<video>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5)]
_NAMED_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    "video_token": "<video>",
}
_PATCH = 16
_SCALE_FACTOR = 2


def build_tiny_vlm(
    directory: str | Path, image_size: int = 64, texts: Sequence[str] = (), vocab_size: int = 512
) -> Path:
    """Write a tiny SmolVLM directory (config, tokenizer, processors; no weights) and return it.

    ``image_size`` must be a multiple of 32 (patch 16, pixel-shuffle scale 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    if image_size % (_PATCH * _SCALE_FACTOR):
        raise ValueError(f"tiny VLM image_size must be a multiple of {_PATCH * _SCALE_FACTOR}, got {image_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(texts) or ["pick up the object and place it at the goal"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=dict(_NAMED_TOKENS),
    )
    size = {"longest_edge": image_size}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_resize=True, size=size, do_image_splitting=False, max_image_size=size),
        tokenizer=fast,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=(image_size // _PATCH) ** 2 // _SCALE_FACTOR**2,
    )
    processor.save_pretrained(directory)
    config = SmolVLMConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(fast),
            "max_position_embeddings": 512,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": _PATCH,
            "image_size": image_size,
        },
        scale_factor=_SCALE_FACTOR,
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        vocab_size=len(fast),
    )
    config.save_pretrained(directory)
    return directory


def tiny_config(
    family: str,
    state_dim: int,
    action_dim: int,
    chunk_size: int,
    n_action_steps: int,
    image_shape: Sequence[int] | None = None,
    camera: str = "corner2",
    vlm_dir: str | Path | None = None,
    flow_steps: int = 10,
) -> Any:
    """A small LeRobot ``PreTrainedConfig`` of ``family`` for these features (CPU, random init).

    ``image_shape`` is (h, w, 3) of one camera, named ``observation.images.<camera>``."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    if image_shape is not None:
        h, w, c = (int(s) for s in image_shape)
        inputs[CAMERA_PREFIX + camera] = PolicyFeature(FeatureType.VISUAL, (c, h, w))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    common = dict(input_features=inputs, output_features=outputs, device="cpu", n_action_steps=n_action_steps)
    if family == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        if image_shape is None or vlm_dir is None:
            raise ValueError("a tiny SmolVLA needs a camera image and a tiny VLM directory (build_tiny_vlm)")
        return SmolVLAConfig(
            **common,
            chunk_size=chunk_size,
            vlm_model_name=str(vlm_dir),
            load_vlm_weights=False,
            num_vlm_layers=2,
            max_state_dim=max(32, state_dim),
            max_action_dim=max(32, action_dim),
            resize_imgs_with_padding=(int(image_shape[1]), int(image_shape[0])),
            num_steps=flow_steps,
            # train everything by default; policytrim's train_parts option narrows it
            train_expert_only=False,
            freeze_vision_encoder=False,
        )
    if family == "diffusion":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        if image_shape is None:
            raise ValueError("LeRobot's Diffusion Policy needs a camera image (or an environment-state feature)")
        return DiffusionConfig(
            **common,
            n_obs_steps=1,
            horizon=chunk_size,
            vision_backbone="resnet18",
            pretrained_backbone_weights=None,
            use_group_norm=True,
            crop_shape=None,
            spatial_softmax_num_keypoints=16,
            down_dims=(32, 64),
            kernel_size=3,
            n_groups=8,
            diffusion_step_embed_dim=32,
            num_train_timesteps=flow_steps * 5,
            num_inference_steps=flow_steps,
            noise_scheduler_type="DDPM",
        )
    if family == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        return ACTConfig(
            **common,
            chunk_size=chunk_size,
            dim_model=64,
            n_heads=2,
            dim_feedforward=128,
            n_encoder_layers=1,
            n_decoder_layers=1,
            n_vae_encoder_layers=1,
            latent_dim=8,
            pretrained_backbone_weights=None,
        )
    raise ValueError(f"tiny LeRobot family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")


def publish_to_hub_cache(vlm_dir: str | Path, repo_id: str, cache_dir: str | Path) -> str:
    """Copy a VLM directory into the Hugging Face cache ``cache_dir`` as the snapshot of hub repo
    ``repo_id`` (``models--org--name/snapshots/<rev>``, ``refs/main``), so that ``transformers``
    resolves ``repo_id`` offline (HF_HUB_OFFLINE=1, ``HF_HUB_CACHE`` = ``cache_dir``). Returns it."""
    revision = "0" * 40
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(vlm_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo_id


def write_tiny_policy(directory: str | Path, config: Any, dataset_stats: dict[str, dict[str, Any]]) -> Path:
    """Instantiate LeRobot's policy and processors for ``config`` and save them to ``directory``
    with LeRobot's own ``save_pretrained``: a local VLM directory is copied to ``vlm/`` and named
    ``vlm`` in config.json and policy_preprocessor.json (module docstring)."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vlm = getattr(config, "vlm_model_name", None)
    local = bool(vlm) and Path(vlm).is_dir()
    if local:
        if Path(vlm).resolve() != (directory / "vlm").resolve():
            shutil.copytree(vlm, directory / "vlm", dirs_exist_ok=True)
        config.vlm_model_name = str((directory / "vlm").resolve())  # LeRobot reads it while building
    policy = get_policy_class(config.type)(config)
    pre, post = make_pre_post_processors(config, dataset_stats=dataset_stats)
    if local:
        config.vlm_model_name = "vlm"
        for step in pre.steps:
            if getattr(step, "tokenizer_name", None):
                step.tokenizer_name = "vlm"
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def load_with_lerobot(directory: str | Path) -> tuple[Any, Any, Any]:
    """(policy, preprocessor, postprocessor) as LeRobot's own loader reads a checkpoint directory:
    ``get_policy_class(type).from_pretrained`` and ``make_pre_post_processors(config, pretrained_path=...)``,
    nothing of policytrim's in between."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    family = PreTrainedConfig.from_pretrained(str(directory)).type
    policy = get_policy_class(family).from_pretrained(str(directory))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(directory))
    return policy, pre, post


def lerobot_chunk(
    loaded: tuple[Any, Any, Any], state: Any, images: dict[str, Any], instructions: Sequence[str], seed: int = 0
) -> Any:
    """LeRobot's own chunk (raw actions [B, H, A]) for a batch: ``images`` maps camera features to
    uint8 [B, h, w, 3]. SmolVLA from zero noise; Diffusion's sampler from torch's global generator,
    seeded with ``seed``, so two loads of the same weights give the same chunk bit for bit."""
    import torch

    policy, pre, post = loaded
    batch = pre(
        {
            "observation.state": state,
            **{k: v.permute(0, 3, 1, 2).float() / 255.0 for k, v in images.items()},
            "task": list(instructions),
        }
    )
    if policy.config.type == "diffusion":  # offline batches carry the observation-history axis
        batch["observation.state"] = batch["observation.state"].unsqueeze(1)
    torch.manual_seed(seed)
    with torch.no_grad():
        if policy.config.type == "smolvla":
            chunk = policy.predict_action_chunk(
                batch, noise=torch.zeros(state.shape[0], policy.config.chunk_size, policy.config.max_action_dim)
            )
        else:
            chunk = policy.predict_action_chunk(batch)
    return post(chunk)
