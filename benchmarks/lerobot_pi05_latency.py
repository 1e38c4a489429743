"""π0.5 (or π0, ``--type pi0``) at the smallest size that runs in LeRobot 0.6.1 (random weights, built
offline): per-call latency through policytrim's LeRobot adapter (one prefix pass + K denoise steps),
peak memory, and one policy-gradient update of the action expert only (the memory-saving setting for
real checkpoints), with its check: the recomputed chunk log-probs against the sampled ones (without
and with gradients; ratio 1 up to the dtype's rounding), finite gradients on the trained part, none
on the frozen part. ``--no-update`` only recomputes (float32 fits 24 GB so).

    .venv-lerobot/bin/python benchmarks/lerobot_pi05_latency.py [--type pi05|pi0] [--variant gemma_2b]
        [--device cpu|cuda] [--dtypes float32 bfloat16] [--batch 1] [--no-update] [--results benchmarks/results]

π0 (benchmarks/results/lerobot_pi0_latency.json; Intel Xeon, 2 cores): gemma_2b VLM + gemma_300m expert, 4.0 B
parameters, build 4.5 min; bfloat16: 6.0 s per deterministic call, 5.9 s in Flow-SDE train mode, one update of
the 578 M expert parameters 10.3 s (its timing includes the check), 18.2 GB peak; float32 (recompute only):
11.8 s a call, 17.3 GB. The recompute matches the sample in float32 (chunk ratios 1.00001 and 1.0, largest row
gap 1.3e-5 nats) but not exactly in bfloat16 (ratios 0.83 and 1.0, row gap 0.075, the same with and without
gradients): run the update in float32 where it fits, or expect ratios off by up to ~20% before clipping in
bfloat16.

π0.5, measured on the 2-core AMD EPYC before the check existed (benchmarks/results/lerobot_pi05_latency.json):
the default build (gemma_2b VLM + gemma_300m expert, 4.1 B parameters) in bfloat16: 3 min to build, 18.7 GB
peak RSS (LeRobot builds in float32 first), 5.3 s per deterministic call (prefix + 10 denoise steps), one
action-expert update 13.6 s. float32 does not fit an update in 24 GB (16.6 GB of weights + the Adam
state of 693 M trainable parameters). ``--variant gemma_300m`` (gemma_300m for the VLM too) passes
LeRobot 0.6.1's validation but fails in ``embed_prefix``: the SigLIP projector's ``projection_dim`` is
hard-coded to 2048, gemma_2b's width. float32 recompute only (``--no-update``, Intel Xeon, this
session's check): 9.7 s per deterministic call, 9.9 s in train mode, 17.7 GB peak, chunk ratios 0.99998
and 1.0 (row gap 2.9e-6 nats). On a CUDA GPU pass ``--device cuda --dtypes bfloat16``: on a lent NVIDIA
H200 (benchmarks/results/lerobot_pi05_latency_cuda.json, ``--results`` pointed elsewhere, then renamed)
0.35 s per deterministic call, 0.32 s in train mode, one expert update 0.29 s, 13.2 GB GPU peak at
batch 1, and the bfloat16 recompute matched (chunk ratios 0.99997 and 1.0).

Tokens: LeRobot's π0.5 preprocessor loads the gated PaliGemma tokenizer from the hub (it fails
offline), so this script feeds token ids directly through a stand-in preprocessor
(`TokenIdPreprocessor`: random prompt ids of the tokenizer's length, state untouched). Latency and
memory do not depend on which ids they are; a real run uses LeRobot's own processor.

Writes RESULTS/lerobot_TYPE_latency.json with the machine (each dtype a run of its own, kept when
another dtype runs later).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from policytrim.machine import describe_machine

STATE_DIM, ACTION_DIM, IMAGE = 8, 7, 224
CAMERA = "observation.images.base_0_rgb"


class TokenIdPreprocessor:
    """Stand-in for π0.5's hub-tokenizer preprocessor: random prompt token ids (fixed seed) and
    images passed through; no normalisation (random weights, latency only)."""

    def __init__(self, vocab: int, length: int):
        self.vocab, self.length = vocab, length

    def __call__(self, batch: dict) -> dict:
        n = batch["observation.state"].shape[0]
        g = torch.Generator().manual_seed(0)
        out = dict(batch)
        out["observation.language.tokens"] = torch.randint(0, self.vocab, (n, self.length), generator=g)
        out["observation.language.attention_mask"] = torch.ones(n, self.length, dtype=torch.bool)
        return out


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM, since the last `reset_peak_rss`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: the peak since start


def reset_peak_rss() -> bool:
    """Start a new high-water mark (Linux: writing 5 to /proc/self/clear_refs), so that each dtype's
    peak is its own and not the earlier build's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--type",
        default="pi05",
        choices=["pi05", "pi0"],
        help="the LeRobot family (pi0 writes lerobot_pi0_latency.json)",
    )
    parser.add_argument("--variant", default="gemma_2b", choices=["gemma_300m", "gemma_2b"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument(
        "--no-update",
        action="store_true",
        help="recompute the log-probs without gradients and skip the update (float32 fits 24 GB so)",
    )
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lerobot.configs.types import FeatureType, PolicyFeature

    if args.type == "pi05":
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
    else:
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy

    from policytrim.policies.lerobot import LeRobotChunkPolicy, LeRobotOptions

    machine = describe_machine()
    results: dict = {
        "type": args.type,
        "variant": {"vlm": args.variant, "action_expert": "gemma_300m"},
        "device": args.device,
        "batch": args.batch,
        "runs": {},
    }
    out = Path(args.results) / f"lerobot_{args.type}_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # other dtypes measured earlier with the same build stay in the file
        old = json.loads(out.read_text())
        if [old.get("type", "pi05"), old.get("variant"), old.get("device"), old.get("batch")] == [
            args.type,
            results["variant"],
            args.device,
            args.batch,
        ]:
            results["runs"] = {
                k: {"machine": old.get("machine"), **v} for k, v in old.get("runs", {}).items()
            }  # each run names its machine
            results.update(
                {k: v for k, v in old.items() if k not in results and k != "machine"}
            )  # e.g. hand-written notes
    for dtype in args.dtypes:
        gc.collect()
        own_peak = reset_peak_rss()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        config = Config(
            paligemma_variant=args.variant,
            action_expert_variant="gemma_300m",
            dtype=dtype,
            device=args.device,
            chunk_size=50,
            n_action_steps=10,
            input_features={
                "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
                CAMERA: PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
            },
            output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        )
        policy = Policy(config).to(args.device)
        build_s = time.perf_counter() - t0
        vocab = policy.model.paligemma_with_expert.paligemma.config.text_config.vocab_size
        adapter = LeRobotChunkPolicy(
            policy, TokenIdPreprocessor(vocab, args.prompt_tokens), lambda x: x, LeRobotOptions(train_parts="expert")
        )
        params = sum(p.numel() for p in adapter.parameters())
        trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
        obs = {
            "state": torch.zeros(args.batch, STATE_DIM),
            "image": torch.zeros(args.batch, IMAGE, IMAGE, 3, dtype=torch.uint8),
        }
        ins = ["pick up the object"] * args.batch
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        latencies = {}
        for mode in ("deterministic", "train"):
            times = []
            for r in range(args.repeats):
                gens = [torch.Generator().manual_seed(r * 100 + b) for b in range(args.batch)]
                t = time.perf_counter()
                sample = adapter.sample(obs, ins, mode, gens)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            latencies[mode] = {"first_s": times[0], "median_s": sorted(times)[len(times) // 2]}
        # one policy-gradient update of the action expert (advantages +1 / -1 on a group of 2)
        optimizer = torch.optim.Adam([p for p in adapter.parameters() if p.requires_grad], lr=1e-5)
        group = {k: v[:1].repeat(2, *([1] * (v.dim() - 1))) for k, v in obs.items()}
        sample = adapter.sample(group, ins[:1] * 2, "train", [torch.Generator().manual_seed(s) for s in (1, 2)])
        adapter.train()
        rows = torch.ones(2, adapter.chunk_size, dtype=torch.bool)

        def gap(logp: torch.Tensor) -> dict:
            """The recomputed chunk log-probs against the sampled ones: ratio 1 up to the dtype's rounding."""
            d = logp.detach().float() - sample.logp.float()  # noqa: B023 - called at once
            return {"chunk_ratio": torch.exp(d.sum(-1)).tolist(), "logp_row_gap_max": d.abs().max().item()}

        with torch.no_grad():
            check = {"no_grad": gap(adapter.log_prob(group, ins[:1] * 2, sample.replay, rows))}
        update_s = None
        if not args.no_update:
            t = time.perf_counter()
            logp = adapter.log_prob(group, ins[:1] * 2, sample.replay, rows)
            loss = -(torch.tensor([1.0, -1.0], device=logp.device) * logp.sum(-1)).mean()
            loss.backward()
            trained = [p for p in adapter.parameters() if p.requires_grad]
            # the update's own check: the log-probs it differentiates against the sampled ones, and
            # finite, non-zero gradients on the trained part only
            check.update(
                {
                    "with_grad": gap(logp),
                    "loss": loss.item(),
                    "grads_finite": all(bool(torch.isfinite(p.grad).all()) for p in trained if p.grad is not None),
                    "trained_tensors_with_gradient": sum(
                        1 for p in trained if p.grad is not None and bool(p.grad.abs().sum() > 0)
                    ),
                    "trained_tensors": len(trained),
                    "frozen_tensors_with_gradient": sum(
                        1 for p in adapter.parameters() if not p.requires_grad and p.grad is not None
                    ),
                }
            )
            optimizer.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            update_s = time.perf_counter() - t
        run = {
            "build_s": build_s,
            "parameters": params,
            "trainable_parameters": trainable,
            "latency": latencies,
            "update_s": update_s,
            "update_check": check,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_is_this_dtype_only": own_peak,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_end": list(os.getloadavg()),
            "command": " ".join(["benchmarks/lerobot_pi05_latency.py", *sys.argv[1:]]),
            "machine": machine,
        }
        if args.device == "cuda":
            run["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        results["runs"][dtype] = run
        print(dtype, json.dumps(run), flush=True)
        del adapter, policy, optimizer
        # written after every dtype, so that a later one running out of memory loses only itself
        results["machine"] = {**machine, "load_average_end": list(os.getloadavg())}
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {out}", flush=True)


if __name__ == "__main__":
    main()
