"""The learner and evaluation on CUDA. Skipped where torch sees no GPU (CI has none); run on a lent
GPU with ``python -m pytest tests/test_cuda.py`` (benchmarks/cuda_check.py records such a run).

Policies draw their random numbers on the CPU and move them to their device (rollout/engine.py), so
a policy's actions and log-probs on CUDA equal those on the CPU (float64 here: float32 kernels
differ in the last bits), a two-stage run with ``--device cuda`` trains, checkpoints, resumes
from disk and evaluates like one on the CPU, and ``policytrim serve --device cuda`` replies with the
chunks the CPU computes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from policytrim.cli import main
from policytrim.io import read_jsonl
from policytrim.policies import load_policy
from policytrim.train.grpo import train
from test_policies import HEADS, B, H, gens, head_policy, make_batch
from test_train import small_run_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none here)")


@pytest.mark.parametrize("head, image", HEADS)
def test_a_policy_acts_and_scores_on_cuda_as_on_cpu(head, image):
    cpu = head_policy(head, image).double()
    gpu = head_policy(head, image).double().to("cuda")
    assert gpu.device.type == "cuda"
    obs, ins = make_batch(image=image)
    for mode in ("train", "sampled", "deterministic"):
        on_cpu = cpu.sample(obs, ins, mode, gens(B))
        on_gpu = gpu.sample(obs, ins, mode, gens(B))
        assert torch.allclose(on_gpu.actions.cpu(), on_cpu.actions, atol=1e-6, rtol=0), mode
        assert torch.allclose(on_gpu.logp.cpu(), on_cpu.logp, atol=1e-6, rtol=0), mode
    # the learner's recomputation on the GPU of what the GPU sampled, and the CPU's of the same replay
    out = gpu.sample(obs, ins, "train", gens(B))
    rows = torch.ones(B, H, dtype=torch.bool)
    recomputed = gpu.log_prob(obs, ins, out.replay, rows).cpu()
    on_cpu = cpu.log_prob(obs, ins, {k: v.cpu() for k, v in out.replay.items()}, rows)
    assert torch.allclose(recomputed, out.logp.cpu(), atol=1e-6, rtol=0)
    assert torch.allclose(on_cpu, recomputed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("head", ["gaussian", "flow"])
def test_gradients_on_cuda_equal_the_cpus(head):
    """One GRPO-style backward pass (log-prob of a sampled chunk) gives the same gradient on both."""
    grads = []
    for device in ("cpu", "cuda"):
        policy = head_policy(head).double().to(device)
        obs, ins = make_batch()
        out = policy.sample(obs, ins, "train", gens(B))
        policy.log_prob(obs, ins, out.replay, torch.ones(B, H, dtype=torch.bool)).sum().backward()
        grads.append(torch.cat([p.grad.flatten().cpu() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and torch.allclose(grads[1], grads[0], atol=1e-8, rtol=1e-6)


@pytest.mark.slow
def test_both_stages_on_cuda_train_resume_and_evaluate(tiny_baseline, tmp_path):
    """A tiny two-stage run on the GPU learner: its first rollouts (the BC policy, before any update)
    equal a CPU run's; it resumes on the GPU; its checkpoints load on the CPU; `policytrim eval
    --device cuda` gives the CPU's numbers."""
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = small_run_config(tmp_path / device, epochs=2)
        cfg.device = device
        summary = train(cfg, "both", str(tiny_baseline))
        runs[device] = (summary, read_jsonl(tmp_path / device / "metrics.jsonl"))
    summary, records = runs["cuda"]
    assert [(r["stage"], r["epoch"]) for r in records] == [(s, e) for s in ("extend", "trim") for e in range(3)]
    for r in records:
        if r["epoch"] > 0:
            assert r["logp_gap"] < 1e-3, "rollout and learner disagree on log-probs on the GPU"
    cpu_first, gpu_first = runs["cpu"][1][1], records[1]  # Stage 1's epoch 1: rollouts of the BC policy
    for key in ("success_rate", "mean_steps", "mean_window"):
        assert gpu_first[key] == pytest.approx(cpu_first[key]), key
    assert records[0]["val_success_rate"] == pytest.approx(runs["cpu"][1][0]["val_success_rate"])

    # resume on the GPU from Stage 2's epoch 1 checkpoint (the optimizer state comes back onto the GPU)
    run = tmp_path / "cuda"
    shutil.rmtree(run / "trim" / "epoch_000002")
    (run / "trim" / "LATEST").write_text("epoch_000001")
    for name in ("trim/result.json", "summary.json"):
        (run / name).unlink()
    cfg = small_run_config(run, epochs=2)
    cfg.device = "cuda"
    train(cfg, resume=str(run))
    assert [(r["stage"], r["epoch"]) for r in read_jsonl(run / "metrics.jsonl")] == [
        (r["stage"], r["epoch"]) for r in records
    ]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"

    # saved on the GPU, loaded on the CPU (safetensors keeps no device)
    policy = load_policy(tmp_path / "cuda" / "final" / "policy")
    assert next(policy.parameters()).device.type == "cpu"
    assert (policy.trained_stage, policy.step_budget) == ("trim", summary.trim.budget)

    # the CLI's eval on the GPU and on the CPU: the same test states, the same per-task numbers
    flags = [
        "--env.tasks",
        "drawer-close-v3",
        "--env.horizon",
        "120",
        "--rollout.num-workers",
        "2",
        "--eval.episodes",
        "6",
        "--logging.no-progress",
    ]
    metrics = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"eval_{device}"
        assert (
            main(
                [
                    "eval",
                    "--policy",
                    str(tmp_path / "cuda" / "final" / "policy"),
                    "--out",
                    str(out),
                    "--device",
                    device,
                    *flags,
                ]
            )
            == 0
        )
        metrics[device] = json.loads((out / "metrics.json").read_text())["overall"]
    for key in ("success_rate", "mean_steps"):
        assert metrics["cuda"][key] == pytest.approx(metrics["cpu"][key], nan_ok=True), key


def test_policytrim_serve_on_cuda_replies_like_the_cpu(tiny_baseline):
    """`policytrim serve --device cuda` in a process of its own answers with the CPU policy's
    deterministic chunks; in sampled mode a server on the GPU and one on the CPU, seeded alike, send
    the same chunks (the per-connection generator stays on the CPU)."""
    pytest.importorskip("websockets", reason="needs the serve extra")
    from policytrim.serve.client import PolicyClient
    from policytrim.serve.server import PolicyServer, PolicyService, ServeConfig, ServerThread

    policy = load_policy(tiny_baseline).eval()
    prompt = policy.spec()["instructions"][0]
    states = np.random.default_rng(0).normal(size=(4, policy.state_dim)).astype(np.float32)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policytrim.cli",
            "serve",
            "--policy",
            str(tiny_baseline),
            "--port",
            "0",
            "--mode",
            "deterministic",
            "--device",
            "cuda",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "(cuda) listening on ws://127.0.0.1:" in line, (
            server.stderr.read() if server.poll() is not None else line
        )
        port = int(line.split("ws://127.0.0.1:")[1].split(" ")[0].rstrip(";"))
        with PolicyClient("127.0.0.1", port) as client:
            assert client.metadata["device"] == "cuda"  # where the served policy's parameters are
            served = [client.infer({"state": s, "prompt": prompt})["actions"] for s in states]
    finally:
        server.terminate()
        server.wait(timeout=30)
    with torch.no_grad():
        local = policy.sample(
            {"state": torch.from_numpy(states)}, [prompt] * len(states), "deterministic"
        ).actions.numpy()
    np.testing.assert_allclose(np.stack(served), local, rtol=0, atol=1e-5)

    replies = {}
    for device in ("cpu", "cuda"):
        config = ServeConfig(port=0, mode="sampled", seed=3, device=device)
        with ServerThread(PolicyServer(PolicyService(load_policy(tiny_baseline).to(device).eval(), config))) as running:
            with PolicyClient(running.host, running.port) as client:
                replies[device] = np.stack([client.infer({"state": s, "prompt": prompt})["actions"] for s in states])
    assert not np.array_equal(replies["cpu"][0], replies["cpu"][1])  # fresh noise per call
    np.testing.assert_allclose(replies["cuda"], replies["cpu"], rtol=0, atol=1e-5)
