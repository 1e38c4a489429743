"""Both PolicyTrim stages execute on LIBERO: a mechanics check, not a result.

No LIBERO expert exists to collect demonstrations from, and no policy weights may be downloaded
here, so the starting policy is a randomly initialised TinyVLA with LIBERO's observation sizes
(8-D state, agent-view image, 7-D actions, the task's instruction). It never succeeds; what this
shows is that the same commands a user runs (``policytrim train`` then ``policytrim eval`` with
``--env.suite libero --tasks ...``) execute both stages end to end on the real simulator: rollouts
with images, GRPO updates, validation, the window choice, the step budget (given: a random
policy has no successful episodes to calibrate from), checkpoints and the final test evaluation.

Tiny size (one task, groups of 2, 1 epoch per stage, 16-step horizon, 32 px images, in-process
envs): about 3-5 minutes on 2 busy cores (hard resets with a renderer take 5-15 s each here).

    .venv-libero/bin/python benchmarks/libero_mechanics.py [--out runs/libero_mechanics]

Writes ``benchmarks/results/libero_mechanics.json``: per command its wall time and exit status,
and the run's stage summaries (window chosen, budget, epochs executed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from policytrim.config import EnvConfig, PolicyConfig
from policytrim.envs.libero import task_info
from policytrim.machine import describe_machine
from policytrim.policies.tinyvla import TinyVLA

TASK = "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
RESULT = Path(__file__).resolve().parent / "results" / "libero_mechanics.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/libero_mechanics")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--horizon", type=int, default=16)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # the starting policy: random weights, LIBERO's sizes
    policy_cfg = PolicyConfig(chunk_size=4, default_window=2, hidden_dim=32, num_layers=1)
    torch.manual_seed(0)
    size = args.image_size
    EnvConfig(suite="libero", tasks=(TASK,))  # fails fast without LIBERO
    policy = TinyVLA.from_config(policy_cfg, 8, 7, [task_info(TASK).instruction], image_shape=(size, size, 3))
    policy.save_pretrained(out / "init")

    env_flags = [
        "--env.suite",
        "libero",
        "--tasks",
        TASK,
        "--env.image",
        "--env.image-size",
        str(size),
        "--env.libero-max-steps",
        "env",
        "--env.horizon",
        str(args.horizon),
        "--rollout.num-workers",
        "0",
        "--eval.episodes",
        "1",
        "--policy.chunk-size",
        str(policy_cfg.chunk_size),
        "--policy.default-window",
        str(policy_cfg.default_window),
        "--policy.hidden-dim",
        str(policy_cfg.hidden_dim),
        "--policy.num-layers",
        str(policy_cfg.num_layers),
    ]
    stage_flags = [
        "--rollout.group-size",
        "2",
        "--rollout.groups-per-epoch",
        "1",
        "--stage1.epochs",
        "1",
        "--stage1.update-epochs",
        "1",
        "--stage1.val-episodes",
        "1",
        "--stage1.eval-every",
        "1",
        "--stage1.windows",
        "2",
        "4",
        "--stage2.epochs",
        "1",
        "--stage2.update-epochs",
        "1",
        "--stage2.val-episodes",
        "1",
        "--stage2.eval-every",
        "1",
        "--stage2.budget",
        str(args.horizon),
        "--logging.no-tensorboard",
        "--logging.no-progress",
    ]
    commands = {
        "train": ["train", "--init", str(out / "init"), "--logging.out", str(out / "run"), *env_flags, *stage_flags],
        "eval": [
            "eval",
            "--policy",
            str(out / "run" / "final" / "policy"),
            "--logging.out",
            str(out / "eval"),
            *env_flags,
        ],
    }
    record: dict = {"task": TASK, "image_size": size, "horizon": args.horizon, "commands": {}}
    for name, argv in commands.items():
        cmd = [sys.executable, "-m", "policytrim.cli", *argv]
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        record["commands"][name] = {
            "argv": argv,
            "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(proc.stdout[-3000:], proc.stderr[-3000:] if proc.returncode else "", sep="\n", flush=True)
        if proc.returncode:
            record["commands"][name]["stderr_tail"] = proc.stderr[-2000:]
            break
    summary = out / "run" / "summary.json"
    if summary.exists():
        record["train_summary"] = json.loads(summary.read_text())
    metrics = out / "eval" / "metrics.json"
    if metrics.exists():
        record["eval_overall"] = json.loads(metrics.read_text()).get("overall")
    record["machine"] = describe_machine()
    RESULT.write_text(json.dumps(record, indent=2, default=str) + "\n")
    ok = all(c["returncode"] == 0 for c in record["commands"].values()) and len(record["commands"]) == len(commands)
    seconds = " ".join(f"{k}={v['seconds']}" for k, v in record["commands"].items())
    print(f"both stages executed: {ok}; seconds: {seconds}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
