"""The two-stage GRPO trainer (SPEC.md). One loop, top to bottom:

    rollouts (engine) -> rewards (objective) -> group advantages -> clipped surrogate + KL
    -> optimiser step with gradient clipping -> metrics, validation, best / resumable checkpoints

Stage ``extend`` (Stage 1) gives every group slot its own window and rewards longer successful
windows (eq 2); at the end it picks the longest window whose validation success rate stays within a
tolerance of the shortest window's. Stage ``trim`` (Stage 2) executes that window with the
step-saving reward and the group-anchored stability penalty (eqs 5-7) against a calibrated budget.

A run directory holds everything (see `RunDir`); ``--resume`` continues from the last complete
checkpoint. Random numbers of an epoch (initial states, rollout noise) derive from
(seed, stage, epoch) alone, so a resumed run replays exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from policytrim import objective
from policytrim.config import GRPOConfig, RunConfig, default_windows, to_dict
from policytrim.envs import initial_states, split_seed
from policytrim.envs.base import InitialState
from policytrim.errors import InputError
from policytrim.eval.evaluate import evaluate_policy
from policytrim.eval.paired import paired_difference
from policytrim.io import atomic_directory, kill_point
from policytrim.policies import ChunkPolicy, load_policy
from policytrim.policies.base import supported_stages
from policytrim.rollout.engine import RolloutEngine, stable_seed
from policytrim.rollout.types import Trajectories
from policytrim.train.checkpoint import latest_checkpoint, load_trainer_state, restore_best, save_checkpoint
from policytrim.train.logger import MetricsLogger
from policytrim.train.rundir import RunDir

log = logging.getLogger(__name__)

STAGES = ("extend", "trim")
MAX_FAILED_EPOCHS = 3  # consecutive epochs whose groups were all dropped before a run is stopped
TRAIN_POOL = 1_000_000  # training initial states are drawn from this many indices of the train seed


# ---------------------------------------------------------------------------------------------
# rewards: thin glue from trajectories to `policytrim.objective` (never re-implemented here)


@dataclass
class StagePlan:
    """What one stage executes and rewards."""

    stage: str
    windows: tuple[int, ...]  # extend: the Stage 1 windows; trim: (window,)
    budget: int = 0  # trim only


def stage_rewards(traj: Trajectories, plan: StagePlan, cfg: RunConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards [num_groups, G] for a stage and the mean of each reward term (for the logs)."""
    success = traj.grouped(traj.success)
    if plan.stage == "extend":
        rewards = objective.extension_reward(success, traj.grouped(traj.window), cfg.policy.chunk_size, cfg.stage1.horizon_coef)
        return rewards, {"reward": rewards.mean().item(), "reward_extension": rewards.mean().item()}
    s2 = cfg.stage2
    terms = objective.trim_reward_terms(
        success, traj.grouped(traj.steps), plan.budget, s2.step_coef, s2.stability_coef, s2.sigma_floor, s2.floor_mode
    )
    ok = success.bool()
    return terms.reward, {
        "reward": terms.reward.mean().item(),
        "reward_step_saving": terms.step_saving[ok].mean().item() if ok.any() else 0.0,
        "reward_stability_penalty": terms.stability[ok].mean().item() if ok.any() else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# the update


def _device_of(policy: ChunkPolicy) -> torch.device:
    param = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _chunk_inputs(traj: Trajectories, chunk_ids: torch.Tensor, device: torch.device):
    obs = {k: v[chunk_ids].to(device) for k, v in traj.obs.items()}
    replay = {k: v[chunk_ids].to(device) for k, v in traj.replay.items()}
    instructions = [traj.instruction[i] for i in traj.chunk_traj[chunk_ids].tolist()]
    return obs, instructions, replay


def grpo_update(
    policy: ChunkPolicy,
    ref_policy: ChunkPolicy | None,
    optimizer: torch.optim.Optimizer,
    traj: Trajectories,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    cfg: GRPOConfig,
) -> dict[str, float]:
    """``cfg.update_epochs`` optimiser steps of the clipped surrogate (eq 4) on the whole batch.

    ``advantages`` [N]; ``valid`` bool [N] marks the trajectories of groups with signal (the others
    are left out of the loss and of N). Each step accumulates gradients over micro-batches of
    ``cfg.micro_batch_trajectories`` with N = all valid trajectories, so the micro-batch size
    changes memory, never the maths.
    """
    device = _device_of(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    row_mask_all = traj.chunk_row_mask()
    ids = torch.nonzero(valid, as_tuple=False).flatten()
    n = int(ids.numel())
    stats: dict[str, list[float]] = {k: [] for k in ("loss", "clip_frac", "approx_kl", "kl_ref", "ratio_max", "grad_norm")}
    skipped = 0
    logp_gap = 0.0
    for step in range(cfg.update_epochs if n else 0):
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        diags: dict[str, list[float]] = {k: [] for k in ("clip_frac", "approx_kl", "kl_ref", "ratio_max")}
        for mb in ids.split(cfg.micro_batch_trajectories):
            chunk_ids = traj.chunks_of(mb)
            obs, instructions, replay = _chunk_inputs(traj, chunk_ids, device)
            row_mask = row_mask_all[chunk_ids].to(device)
            logp = policy.log_prob(obs, instructions, replay, row_mask)
            old = traj.old_logp[chunk_ids].to(device=device, dtype=logp.dtype)
            if step == 0 and row_mask.any():  # before the first optimiser step: must be ~0
                logp_gap = max(logp_gap, (logp.detach() - old).abs()[row_mask].max().item())
            ref = None
            if ref_policy is not None and cfg.kl_coef > 0:
                with torch.no_grad():
                    ref = traj.padded(ref_policy.log_prob(obs, instructions, replay, row_mask).to(logp.dtype), mb)
            loss, diag = objective.grpo_loss(
                traj.padded(logp, mb),
                traj.padded(old, mb),
                advantages[mb].to(device=device, dtype=logp.dtype),
                traj.padded(row_mask, mb),
                ref_logp=ref,
                clip_low=cfg.clip_low,
                clip_high=cfg.clip_high,
                kl_coef=cfg.kl_coef,
                num_trajectories=n,
            )
            loss.backward()
            total = total + loss.detach()
            for key in diags:
                if key in diag:
                    diags[key].append(float(diag[key]))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not (torch.isfinite(total) and torch.isfinite(grad_norm)):
            skipped += 1  # NaN / inf: skip the step, never let it reach the weights
            optimizer.zero_grad(set_to_none=True)
            log.warning("non-finite loss or gradient (loss=%s, grad_norm=%s): update skipped", total.item(), grad_norm.item())
            continue
        optimizer.step()
        kill_point("update.step")  # test hook (policytrim.io): a kill -9 in the middle of an update
        stats["loss"].append(total.item())
        stats["grad_norm"].append(grad_norm.item())
        for key, values in diags.items():
            if values:
                stats[key].append(float(np.max(values) if key == "ratio_max" else np.mean(values)))
    out = {k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}
    out.update(skipped_steps=skipped, logp_gap=logp_gap, update_trajectories=n)
    return out


# ---------------------------------------------------------------------------------------------
# validation and the stage decisions (window choice, budget, best checkpoint)


def validate(policy: ChunkPolicy, cfg: RunConfig, window: int, engine: RolloutEngine, episodes: int) -> dict[str, Any]:
    """Overall metrics on validation states at one window (paired: fixed seed)."""
    metrics = evaluate_policy(policy, cfg.env, episodes, window, cfg.eval.mode, cfg.eval.seed, split="val", engine=engine, latency_ms=cfg.eval.latency_ms, return_outcomes=True)
    if metrics["overall"]["episodes"] == 0:
        raise RuntimeError(f"validation at window {window}: every episode was lost to simulator faults or worker timeouts")
    out = metrics["outcomes"]
    # per-state success, for paired comparisons between validations (same states, same random numbers)
    success = {f"{task}:{index}": bool(ok) for task, index, ok in zip(out["task"], out["index"], out["success"])}
    return {**metrics["overall"], "success_by_state": success}


def _without_outcomes(metrics: dict[str, Any]) -> dict[str, Any]:
    """A `validate` result without its per-state outcomes (for summaries and recorded evidence)."""
    return {k: v for k, v in metrics.items() if k != "success_by_state"}


def choose_window(policy: ChunkPolicy, cfg: RunConfig, windows: tuple[int, ...], engine: RolloutEngine) -> dict[str, Any]:
    """Stage 1's output: the longest window whose validation SR is within the tolerance of the
    shortest window's (same states, same random numbers for every window)."""
    episodes = cfg.stage1.val_episodes
    per_window = {w: validate(policy, cfg, w, engine, episodes) for w in windows}
    reference = per_window[windows[0]]["success_rate"]
    tolerance = cfg.stage1.tolerance_points / 100.0
    chosen = max(w for w in windows if per_window[w]["success_rate"] >= reference - tolerance - 1e-12)
    evidence = {str(w): _without_outcomes(m) for w, m in per_window.items()}
    return {"window": chosen, "tolerance_points": cfg.stage1.tolerance_points, "episodes_per_task": episodes, "split": "val", "mode": cfg.eval.mode, "per_window": evidence}


def calibrate_budget(policy: ChunkPolicy, cfg: RunConfig, window: int, engine: RolloutEngine) -> dict[str, Any]:
    """Step budget B = ceil(beta_B * mean T of successes) of the policy entering Stage 2, at
    Stage 2's window, in the evaluation mode, on validation states (or the user's B)."""
    if cfg.stage2.budget:
        return {"budget": cfg.stage2.budget, "source": "given by the user (stage2.budget)"}
    episodes = cfg.stage2.val_episodes
    metrics = evaluate_policy(policy, cfg.env, episodes, window, cfg.eval.mode, cfg.eval.seed, split="val", engine=engine, return_outcomes=True)
    outcomes = metrics["outcomes"]
    successful_steps = [t for t, ok in zip(outcomes["steps"], outcomes["success"]) if ok]
    if not successful_steps:
        raise InputError(
            f"cannot calibrate the Stage 2 step budget: the policy succeeded in none of {len(outcomes['steps'])} validation episodes at window {window}; give stage2.budget or start from a better policy"
        )
    return {
        "budget": objective.step_budget(successful_steps, cfg.stage2.budget_multiplier),
        "source": f"calibrated: ceil({cfg.stage2.budget_multiplier} x mean T of successful validation episodes)",
        "mean_steps": metrics["overall"]["mean_steps"],
        "success_rate": metrics["overall"]["success_rate"],
        "window": window,
        "mode": cfg.eval.mode,
        "episodes_per_task": episodes,
    }


def significant_loss(candidate: dict[str, Any], start: dict[str, Any], tolerance_points: float) -> bool:
    """Whether ``candidate`` lost success against ``start`` (two validations on the same states with
    the same random numbers): its SR drop is larger than ``tolerance_points`` AND the paired 95%
    interval of the drop (Newcombe) excludes zero. On small validation sets one or two unlucky
    episodes move the SR by more than the tolerance; only a loss the evaluation can tell from noise
    disqualifies a checkpoint."""
    drop = start["success_rate"] - candidate["success_rate"]
    if drop <= tolerance_points / 100.0 + 1e-12:
        return False
    a, b = start.get("success_by_state"), candidate.get("success_by_state")
    if not a or not b:  # no per-state outcomes (a checkpoint from before they were recorded)
        return True
    keys = sorted(a.keys() & b.keys())
    if not keys:
        return True
    diff = paired_difference([a[k] for k in keys], [b[k] for k in keys])
    return diff["hi"] < 0.0  # new - start is below zero with 95% confidence


def is_better(stage: str, candidate: dict[str, Any], best: dict[str, Any] | None, start: dict[str, Any], tolerance_points: float) -> bool:
    """Best-checkpoint criterion. extend: highest SR at the longest window (ties: fewer calls).
    trim: fewest calls among evaluations without a significant success loss against the stage's
    start (`significant_loss`); if every one lost, the highest SR."""
    if best is None:
        return True
    calls = lambda m: math.inf if m["calls_per_success"] is None else m["calls_per_success"]  # noqa: E731 (None: no success)
    if stage == "extend":
        return (candidate["success_rate"], -calls(candidate)) > (best["success_rate"], -calls(best))
    cand_ok = not significant_loss(candidate, start, tolerance_points)
    best_ok = not significant_loss(best, start, tolerance_points)
    if cand_ok != best_ok:
        return cand_ok
    if not cand_ok:
        return candidate["success_rate"] > best["success_rate"]
    return (calls(candidate), -candidate["success_rate"]) < (calls(best), -best["success_rate"])


# ---------------------------------------------------------------------------------------------
# one stage


def draw_starts(cfg: RunConfig, rng: np.random.Generator, epoch: int) -> list[InitialState]:
    """Initial states of one epoch's groups: tasks round robin, fresh training-split indices."""
    tasks = cfg.env.tasks
    seed = split_seed(cfg.env, "train")
    starts = []
    for g in range(cfg.rollout.groups_per_epoch):
        task = tasks[(epoch * cfg.rollout.groups_per_epoch + g) % len(tasks)]
        index = int(rng.integers(0, TRAIN_POOL))
        starts.extend(initial_states(task, seed, 1, start=index))
    return starts


def run_stage(stage: str, policy: ChunkPolicy, cfg: RunConfig, run: RunDir, engine: RolloutEngine, plan: StagePlan, logger: MetricsLogger) -> dict[str, Any]:
    """Train one stage from the policy given (or resume it) and return its summary.

    On return ``policy`` holds the stage's best checkpoint."""
    scfg = cfg.stage1 if stage == "extend" else cfg.stage2
    stage_dir = run.stage_dir(stage)
    device = _device_of(policy)
    if not (stage_dir / "reference").exists():
        save_policy_dir(policy, stage_dir / "reference")  # the policy that entered the stage
    ref_policy = None
    if scfg.kl_coef > 0:
        ref_policy = load_policy(stage_dir / "reference" / "policy").to(device).eval().requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=scfg.lr, weight_decay=scfg.weight_decay)

    eval_window = plan.windows[-1]
    state: dict[str, Any] = {"best": None, "start_eval": None, "failed_epochs": 0}
    start_epoch = 0
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None:
        policy.load_state_dict(load_policy(checkpoint / "policy").state_dict())
        state = {"failed_epochs": 0, **load_trainer_state(checkpoint, optimizer)}
        start_epoch = state["epoch"]
        # best/ may hold a policy written after this checkpoint by the run that was killed
        restore_best(checkpoint, stage_dir / "best")
        log.info("resuming %s from %s (epoch %d)", stage, checkpoint, start_epoch)
    run.truncate_metrics(stage, start_epoch)
    if state["start_eval"] is None:
        state["start_eval"] = validate(policy, cfg, eval_window, engine, scfg.val_episodes)
        state["best"] = {"epoch": 0, **state["start_eval"]}
        save_policy_dir(policy, stage_dir / "best")
        logger.log({"stage": stage, "epoch": 0, "global_epoch": run.global_epoch(stage, 0), **{f"val_{k}": v for k, v in _scalars(state["start_eval"]).items()}})

    failed_epochs = int(state["failed_epochs"])
    bar = tqdm(range(start_epoch, scfg.epochs), desc=f"{stage}", disable=not cfg.logging.progress, initial=start_epoch, total=scfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        rng = np.random.default_rng(stable_seed(cfg.seed, stage, epoch, "starts"))
        starts = draw_starts(cfg, rng, epoch)
        if stage == "extend":
            windows = objective.assign_windows(len(starts), cfg.rollout.group_size, plan.windows)
        else:
            windows = torch.full((len(starts), cfg.rollout.group_size), plan.windows[0], dtype=torch.long)
        policy.eval()
        traj = engine.run(policy, starts, cfg.rollout.group_size, windows, "train", stable_seed(cfg.seed, stage, epoch, "rollout"))
        t_rollout = time.perf_counter() - t0
        if traj.num_groups == 0:  # every group lost to simulator faults: nothing to learn from
            failed_epochs += 1
            if failed_epochs >= MAX_FAILED_EPOCHS:
                raise RuntimeError(f"{stage}: every rollout group failed (simulator faults or worker timeouts) in {failed_epochs} epochs in a row; see the log")
        else:
            failed_epochs = 0

        rewards, reward_terms = stage_rewards(traj, plan, cfg)
        advantages, valid_groups = objective.group_advantages(rewards)
        policy.train()
        valid = valid_groups.repeat_interleave(cfg.rollout.group_size)
        update = grpo_update(policy, ref_policy, optimizer, traj, advantages.flatten(), valid, scfg)

        ok = traj.success.bool()
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch + 1,
            "global_epoch": run.global_epoch(stage, epoch + 1),
            "success_rate": ok.float().mean().item() if traj.num_trajectories else float("nan"),
            "mean_steps": traj.steps[ok].float().mean().item() if ok.any() else float("nan"),
            "mean_window": traj.window.float().mean().item() if traj.num_trajectories else float("nan"),
            "mean_calls": traj.calls[ok].float().mean().item() if ok.any() else float("nan"),
            **reward_terms,
            "valid_group_frac": valid_groups.float().mean().item() if valid_groups.numel() else 0.0,
            **update,
            "dropped_groups": traj.dropped_groups,
            "replaced_workers": engine.replaced_workers,  # so far, this process (hung or dead env workers)
            "env_steps": traj.env_steps,
            "rollout_s": t_rollout,
            "epoch_s": time.perf_counter() - t0,
        }
        if plan.stage == "trim":
            record["budget"] = plan.budget
        last = epoch + 1 == scfg.epochs
        if (epoch + 1) % scfg.eval_every == 0 or last:
            policy.eval()
            val = validate(policy, cfg, eval_window, engine, scfg.val_episodes)
            record.update({f"val_{k}": v for k, v in _scalars(val).items()})
            if is_better(stage, val, state["best"], state["start_eval"], getattr(scfg, "tolerance_points", 0.0)):
                state["best"] = {"epoch": epoch + 1, **val}
                save_policy_dir(policy, stage_dir / "best")
        logger.log(record)
        bar.set_postfix(SR=f"{record['success_rate']:.2f}", T=f"{record['mean_steps']:.0f}", k=f"{record['mean_window']:.1f}", C=f"{record['mean_calls']:.1f}")
        if (epoch + 1) % scfg.checkpoint_every == 0 or last:
            trainer_state = {"stage": stage, "best": state["best"], "start_eval": state["start_eval"], "failed_epochs": failed_epochs}
            save_checkpoint(stage_dir, epoch + 1, policy, optimizer, trainer_state, best_dir=stage_dir / "best")
    bar.close()

    policy.load_state_dict(load_policy(stage_dir / "best" / "policy").state_dict())
    # per-state outcomes stay in the checkpoint, out of the summary
    return {"stage": stage, "epochs": scfg.epochs, "best": _without_outcomes(state["best"]), "start": _without_outcomes(state["start_eval"]), "eval_window": eval_window}


def save_policy_dir(policy: ChunkPolicy, path: Path) -> None:
    """Replace ``path`` atomically with a directory holding ``policy/`` (its checkpoint)."""
    with atomic_directory(path, overwrite=True) as tmp:
        policy.save_pretrained(tmp / "policy")


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# both stages, the run directory, the CLI entry point


def stage1_windows(cfg: RunConfig, policy: ChunkPolicy) -> tuple[int, ...]:
    """Stage 1 windows for this policy: as configured, or {k_default .. H} evenly spaced (SPEC)."""
    windows = cfg.stage1.windows or default_windows(policy.default_window, policy.chunk_size)
    if windows[-1] > policy.max_window:
        raise InputError(f"stage1.windows {windows} exceed what the policy may execute (max window {policy.max_window}, chunk size {policy.chunk_size})")
    return windows


def check_policy_for_run(policy: ChunkPolicy, cfg: RunConfig, stages: list[str], where: str) -> None:
    """InputError (one line), before anything is written, when the policy cannot run what was asked:
    a stage it does not support (`policytrim.policies.base.supported_stages`: Stage 1 needs a chunk
    longer than the executed window), or an env config that would not render the image it reads."""
    supported = supported_stages(policy)
    if any(s not in supported for s in stages):
        raise InputError(
            f"{where} cannot run Stage 1 (extend): it decodes exactly the window it executes (chunk size {policy.chunk_size}, "
            f"window {policy.default_window}) and Stage 1 needs a chunk longer than the executed window; it supports "
            f"--stage {' | '.join(supported)} (Stage 2 only, as for an autoregressive OpenVLA in the paper's Table 3)"
        )
    shape = getattr(policy, "image_shape", None)
    if shape and (not cfg.env.image or tuple(shape) != (cfg.env.image_size, cfg.env.image_size, 3)):
        have = f"--env.image-size {cfg.env.image_size}" if cfg.env.image else "no --env.image"
        raise InputError(f"{where} acts from {shape[0]}x{shape[1]} px images but the config has {have}; pass --env.image --env.image-size {shape[0]}")


def train(cfg: RunConfig, stage: str = "both", init: str = "", resume: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Run PolicyTrim (``stage`` = extend | trim | both) from checkpoint ``init`` into
    ``cfg.logging.out``, or continue the run directory ``resume``. Returns the run summary."""
    run = None
    if resume:
        run = RunDir.open(resume)
        cfg, stage, init = run.cfg, run.meta["stage"], run.meta["init"]
    else:
        if stage not in ("extend", "trim", "both"):
            raise InputError(f"stage must be extend, trim or both, got {stage!r}")
        if not init:
            raise InputError("--init is required: the starting (baseline) checkpoint directory")
    stages = list(STAGES) if stage == "both" else [stage]
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda but torch sees no CUDA device here; use --device cpu")
    torch.manual_seed(cfg.seed)
    with cpu_threads(cfg):
        return _train(cfg, stage, stages, init, run, overwrite)


@contextlib.contextmanager
def cpu_threads(cfg: RunConfig):
    """One torch thread while env workers own every core: torch's thread pool spin-waits against
    the workers (measured: a TinyVLA call 0.16 ms with one thread, up to 56 ms with two)."""
    previous = torch.get_num_threads()
    if cfg.device == "cpu" and cfg.rollout.num_workers >= (os.cpu_count() or 1):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Settings of cfg.policy that must agree with the starting checkpoint: they describe its architecture
# and enter the maths (H in the Stage 1 reward, k_1 in the Stage 1 windows), so a mismatch would be
# recorded in config.yaml and used silently.
ARCHITECTURE_FIELDS = ("head", "chunk_size", "default_window", "hidden_dim", "num_layers", "text_encoder", "std_mode")
FLOW_FIELDS = ("flow_steps", "flow_noise")
TOKEN_FIELDS = ("token_bins", "token_temperature", "token_dim", "token_layers")


def check_architecture(cfg: RunConfig, spec: dict[str, Any], where: str) -> None:
    """InputError naming every cfg.policy setting that differs from checkpoint ``spec``."""
    from policytrim.policies.text import canonical_encoder_name

    head = spec.get("head")
    fields = ARCHITECTURE_FIELDS + (FLOW_FIELDS if head == "flow" else TOKEN_FIELDS if str(head).startswith("token_") else ())
    expected = {"text_encoder": canonical_encoder_name(cfg.policy.text_encoder)}
    diff = [
        (name, spec.get(name), expected.get(name, getattr(cfg.policy, name)))
        for name in fields
        if spec.get(name) != expected.get(name, getattr(cfg.policy, name))
    ]
    if diff:
        flags = " ".join(f"--policy.{name.replace('_', '-')} {have}" for name, have, _ in diff)
        raise InputError(
            f"{where} does not match the config: "
            + ", ".join(f"policy.{name} is {want!r} in the config but {have!r} in the checkpoint" for name, have, want in diff)
            + f"; pass {flags} (or the config the checkpoint was trained with)"
        )


def _train(cfg: RunConfig, stage: str, stages: list[str], init: str, run: RunDir | None, overwrite: bool) -> dict[str, Any]:
    if str(init) == "expert":
        raise InputError("--init expert: the scripted experts have no weights to train; give a policy checkpoint directory")
    policy = load_policy(init)  # validates the checkpoint before anything is written
    check_architecture(cfg, policy.spec(), f"checkpoint {init!r}")
    check_policy_for_run(policy, cfg, stages, f"checkpoint {init!r}")
    policy = policy.to(cfg.device)
    windows = stage1_windows(cfg, policy) if "extend" in stages else ()
    if cfg.stage2.window > policy.max_window:
        raise InputError(f"stage2.window={cfg.stage2.window} exceeds the policy's max window {policy.max_window}")
    resume = run is not None
    if run is not None:
        run.remove_temporaries()
    else:
        run = RunDir.create(cfg.logging.out, cfg, {"stage": stage, "stages": stages, "init": str(init)}, overwrite=overwrite)
    logger = MetricsLogger(run.path, cfg.logging.tensorboard, cfg.logging.wandb, to_dict(cfg), resume=bool(resume))
    summary: dict[str, Any] = {"run_dir": str(run.path), "init": str(init), "stages": stages, "logging": logger.backends}
    try:
        with RolloutEngine(cfg.env, cfg.rollout.num_workers, cfg.rollout.step_timeout_s, pipeline=not cfg.rollout.lockstep) as engine:
            window = cfg.stage2.window or policy.default_window
            if "extend" in stages:
                result = run.read_json("extend/result.json")
                if result is None:
                    result = run_stage("extend", policy, cfg, run, engine, StagePlan("extend", windows), logger)
                    policy.eval()
                    result["window_choice"] = choose_window(policy, cfg, windows, engine)
                    run.write_json("extend/result.json", result)
                else:
                    policy.load_state_dict(load_policy(run.stage_dir("extend") / "best" / "policy").state_dict())
                summary["extend"] = result
                window = cfg.stage2.window or result["window_choice"]["window"]
            if "trim" in stages:
                result = run.read_json("trim/result.json")
                if result is None:
                    budget = run.read_json("trim/budget.json")
                    if budget is None:
                        policy.eval()
                        budget = calibrate_budget(policy, cfg, window, engine)
                        run.write_json("trim/budget.json", budget)
                    result = run_stage("trim", policy, cfg, run, engine, StagePlan("trim", (window,), budget["budget"]), logger)
                    result.update(window=window, budget=budget)
                    run.write_json("trim/result.json", result)
                else:
                    policy.load_state_dict(load_policy(run.stage_dir("trim") / "best" / "policy").state_dict())
                summary["trim"] = result
            summary["window"] = window
        save_policy_dir(policy, run.path / "final")
        run.write_json("summary.json", summary)
        run.set_status("complete")
    finally:
        logger.close()
    return summary


def train_command(args) -> int:
    """`policytrim train`: see `train`."""
    from policytrim.cli import run_config

    summary = train(run_config(args), args.stage, args.init, args.resume, args.overwrite)
    print(f"run directory: {summary['run_dir']}")
    for stage in summary["stages"]:
        best = summary[stage]["best"]
        steps, calls = (f"{best[k]:.1f}" if best[k] is not None else "-" for k in ("mean_steps", "calls_per_success"))
        print(f"{stage}: best at epoch {best['epoch']}: SR {best['success_rate']:.3f}, steps {steps}, calls {calls} (validation)")
    if "extend" in summary:
        print(f"Stage 1 window choice: {summary['extend']['window_choice']['window']}")
    if "trim" in summary:
        print(f"Stage 2 budget: {summary['trim']['budget']['budget']} ({summary['trim']['budget']['source']})")
    print(f"trained policy: {Path(summary['run_dir']) / 'final' / 'policy'}")
    return 0
