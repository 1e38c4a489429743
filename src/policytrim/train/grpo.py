"""The two-stage GRPO trainer (SPEC.md). One loop, top to bottom, for any stage:

    rollouts (engine) -> rewards (the stage's) -> group advantages -> clipped surrogate + KL
    -> optimiser step with gradient clipping -> metrics, validation, best / resumable checkpoints

The stages (`policytrim.train.stages`) own what differs: Stage 1 (extend) gives every group slot its
own window and rewards longer successful windows (eq 2), then picks the longest window whose
validation success rate stays within a tolerance of the shortest window's; Stage 2 (trim) executes
that window with the step-saving reward and the group-anchored stability penalty (eqs 5-7) against
a calibrated budget. Each returns a typed `StageOutcome`, and its best policy carries the window
(and budget) it was trained for in its saved spec.

A run directory holds everything (see `RunDir`); ``--resume`` continues from the last complete
checkpoint. Random numbers of an epoch (initial states, rollout noise) derive from
(seed, stage, epoch) alone, so a resumed run replays exactly what an uninterrupted one would.

Seams (`TrainerSeams`, passed to `train`): the engine factory, the update function and a hook on
every metrics record, so tests inject fakes by argument.

Under torchrun the same loop is a data-parallel learner (`policytrim.train.distributed`): each rank
rolls out its share of an epoch's groups, rewards, advantages and metrics are computed on every
rank's outcomes, N in eq 4's 1/N counts every rank's trajectories and gradients are summed over
ranks; validations, decisions and every write happen on rank 0. In one process each hook is a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policytrim import objective
from policytrim.config import GRPOConfig, RunConfig, to_dict
from policytrim.envs import initial_states, split_seed
from policytrim.envs.base import InitialState
from policytrim.errors import InputError, is_disk_full
from policytrim.eval.evaluate import evaluate_policy
from policytrim.io import atomic_directory, kill_point
from policytrim.policies import ChunkPolicy, load_policy, save_policy
from policytrim.policies.adaptor import WindowAdaptor, adaptor_of, attach_adaptor
from policytrim.policies.base import supported_stages
from policytrim.preflight import check_preconditions
from policytrim.progress import Progress
from policytrim.rollout.engine import RolloutEngine, stable_seed
from policytrim.rollout.types import Trajectories
from policytrim.runtime import device_of, workers_own_cores
from policytrim.train import distributed
from policytrim.train.checkpoint import latest_checkpoint, load_trainer_state, restore_best, save_checkpoint
from policytrim.train.decisions import BudgetCalibration, CallBudget, StageState, TrainSummary, Validation, on_rank0
from policytrim.train.logger import MetricsLogger
from policytrim.train.rundir import STAGE_CHOICES, STAGES_OF, RunDir
from policytrim.train.stages import (
    AdaptStage,
    Stage,
    Stage1,
    Stage2,
    StageOutcome,
    calibrate_budget,
    calibrate_call_budget,
    validate,
)
from policytrim.windows import WindowPlan

log = logging.getLogger(__name__)

STAGES = ("extend", "trim")
MAX_FAILED_EPOCHS = 3  # consecutive epochs whose groups were all dropped before a run is stopped
CLIP_HARD_FRACTION = 0.3  # an update whose largest per-step clip fraction exceeds this hit the clip hard (`clip_hard`)
TRAIN_POOL = 1_000_000  # training initial states are drawn from this many indices of the train seed


# ---------------------------------------------------------------------------------------------
# the update


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
    adaptor: WindowAdaptor | None = None,
    train_policy: bool = True,
    chunk_norm: float | None = None,
) -> dict[str, float]:
    """``cfg.update_epochs`` optimiser steps of the clipped surrogate (eq 4) on the whole batch.

    ``advantages`` [N]; ``valid`` bool [N] marks the trajectories of groups with signal (the others
    are left out of the loss and of N). Each step accumulates gradients over micro-batches of
    ``cfg.micro_batch_trajectories`` with N = all valid trajectories, so the micro-batch size
    changes memory, never the maths. Under torchrun ``traj`` is this rank's share, N counts every
    rank's valid trajectories and the gradients are summed over ranks before clipping.

    ``adaptor``: the window adaptor that chose each chunk's window in ``traj``; its log-prob of that
    choice, recomputed, joins the chunk's ratio. ``train_policy`` false: the policy is frozen, its
    log-ratio is 0 (logp = old_logp, the policy is not run) and only the optimiser's parameters move.
    ``chunk_norm``: `policytrim.objective.grpo_loss`'s (None: eq 4's 1/C_i).
    """
    device = device_of(policy)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    row_mask_all = traj.chunk_row_mask()
    if traj.chunk_branch is not None:  # per-call credit: only the branch call's chunks are updated
        row_mask_all, valid = branch_only(traj, row_mask_all, valid)
    ids = torch.nonzero(valid, as_tuple=False).flatten()
    n = distributed.global_sum(int(ids.numel()))  # N over every rank: the 1/N stays global under torchrun
    stats: dict[str, list[float]] = {
        k: [] for k in ("loss", "clip_frac", "approx_kl", "kl_ref", "ratio_max", "grad_norm")
    }
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
            if train_policy:
                logp = policy.log_prob(obs, instructions, replay, row_mask)
                old = traj.old_logp[chunk_ids].to(device=device, dtype=logp.dtype)
            else:  # frozen: the policy's log-ratio is exactly 0
                logp = old = traj.old_logp[chunk_ids].to(device)
            if step == 0 and row_mask.any():  # before the first optimiser step: must be ~0
                logp_gap = max(logp_gap, (logp.detach() - old).abs()[row_mask].max().item())
            window = None if adaptor is None else _window_logps(adaptor, traj, chunk_ids, mb, logp.dtype)
            if window is not None and step == 0:
                logp_gap = max(logp_gap, (window[0].detach() - window[1]).abs().max().item())
            ref = None
            if ref_policy is not None and cfg.kl_coef > 0 and train_policy:
                with torch.no_grad():
                    ref = traj.padded(ref_policy.log_prob(obs, instructions, replay, row_mask).to(logp.dtype), mb)
            terms = objective.grpo_loss(
                traj.padded(logp, mb),
                traj.padded(old, mb),
                advantages[mb].to(device=device, dtype=logp.dtype),
                traj.padded(row_mask, mb),
                ref_logp=ref,
                clip_low=cfg.clip_low,
                clip_high=cfg.clip_high,
                window_logp=None if window is None else window[0].to(device),
                old_window_logp=None if window is None else window[1].to(device),
                chunk_norm=chunk_norm,
            )
            # N = every valid trajectory of the batch (all ranks): micro-batch and rank gradients add up to the batch's
            loss, diag = objective.reduce_grpo_loss(terms, cfg.kl_coef, num_trajectories=n)
            loss.backward()
            total = total + loss.detach()
            for key in diags:
                if key in diag:
                    diags[key].append(float(diag[key]))
        distributed.all_reduce_grads(params)  # summed: each rank's loss already carries the global 1/N
        total = distributed.all_reduce_sum(total)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not (torch.isfinite(total) and torch.isfinite(grad_norm)):
            skipped += 1  # NaN / inf: skip the step, never let it reach the weights
            optimizer.zero_grad(set_to_none=True)
            log.warning(
                "non-finite loss or gradient (loss=%s, grad_norm=%s): update skipped", total.item(), grad_norm.item()
            )
            continue
        optimizer.step()
        kill_point("update.step")  # test hook (policytrim.io): a kill -9 in the middle of an update
        stats["loss"].append(total.item())
        stats["grad_norm"].append(grad_norm.item())
        for key, values in diags.items():
            if values:
                stats[key].append(float(np.max(values) if key == "ratio_max" else np.mean(values)))
    out = {k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}
    # the worst optimiser step of the epoch: a mean over steps hides one step that hit the clip hard
    peaks = {"clip_frac_max": max(stats["clip_frac"], default=0.0)}
    peaks["approx_kl_max"] = max(stats["approx_kl"], default=0.0)
    out.update(
        distributed.mean_over_ranks(
            {k: out[k] for k in ("clip_frac", "approx_kl", "kl_ref", "ratio_max")} | {"logp_gap": logp_gap} | peaks,
            maxed=("ratio_max", "logp_gap", "clip_frac_max", "approx_kl_max"),
        )
    )
    out.update(skipped_steps=skipped, update_trajectories=n, clip_hard=bool(out["clip_frac_max"] > CLIP_HARD_FRACTION))
    return out


def branch_only(traj: Trajectories, row_mask: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-call credit: ``row_mask`` [M, H] kept on the chunks of each group's branch call only, and
    ``valid`` [N] kept on the trajectories that reached that call (a trajectory that ended before it
    has nothing to update; its group-mates, identical up to there, ended with it)."""
    branch = traj.chunk_branch.to(torch.bool)
    reached = torch.zeros(traj.num_trajectories, dtype=torch.bool)
    reached[traj.chunk_traj[branch]] = True
    return row_mask & branch[:, None], valid.to(torch.bool) & reached


def _window_logps(
    adaptor: WindowAdaptor, traj: Trajectories, chunk_ids: torch.Tensor, mb: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(learner, rollout) log-probs of each chunk's window, padded to [trajectories of mb, chunks]."""
    if traj.window_logp is None or traj.chunk_actions is None:
        raise ValueError("a window adaptor's update needs rollouts made with it (window_logp, chunk_actions recorded)")
    dev = next(adaptor.parameters()).device
    state = traj.obs["state"][chunk_ids].to(dev)
    new = adaptor.log_prob(state, traj.chunk_actions[chunk_ids].to(dev), traj.chunk_window[chunk_ids].to(dev))
    old = traj.window_logp[chunk_ids].to(device=dev, dtype=new.dtype)
    # `padded` scatters [M, rows] per chunk; one "row" each here
    return traj.padded(new.to(dtype)[:, None], mb)[..., 0], traj.padded(old.to(dtype)[:, None], mb)[..., 0]


# ---------------------------------------------------------------------------------------------
# one stage


@dataclass
class TrainerSeams:
    """What the trainer calls that a caller may replace (tests pass fakes here, by argument).

    engine_factory: ``(env_cfg, num_workers, step_timeout_s, pipeline=bool, backend=str, ray=RayConfig,
        delay=int) -> RolloutEngine`` (a context manager), e.g. ``functools.partial(RolloutEngine,
        env_factory=...)``; ``backend`` and ``ray`` choose the env workers
        (`policytrim.rollout.engine.make_pool`), ``delay`` is ``rollout.delay`` (stale chunks).
    update: `grpo_update`'s signature and result.
    on_record: called with every metrics record after it is logged.
    """

    engine_factory: Callable[..., RolloutEngine] = RolloutEngine
    update: Callable[..., dict[str, float]] = grpo_update
    on_record: Callable[[dict[str, Any]], None] | None = None


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


def run_stage(
    stage: Stage,
    policy: ChunkPolicy,
    cfg: RunConfig,
    run: RunDir,
    engine: RolloutEngine,
    logger: MetricsLogger,
    seams: TrainerSeams | None = None,
    start_eval: Validation | None = None,
) -> StageOutcome:
    """Train ``stage`` from the policy given (or resume it) and return its outcome.

    ``start_eval``: the entering policy's validation at the stage's eval window when it is already
    known (Stage 2 after Stage 1's window choice), so it is not measured again. The stage stops
    early when its `Stage.stop_reason` says so after a validation. On return ``policy`` holds the
    stage's best checkpoint, marked with the stage's decision, and ``STAGE/best`` holds the same
    policy."""
    seams = seams or TrainerSeams()
    scfg = stage.config
    stage_dir = run.stage_dir(stage.name)
    device = device_of(policy)

    def save_reference() -> None:  # the policy that entered the stage (rank 0 decides: one check, one writer)
        if not (stage_dir / "reference").exists():
            save_policy_dir(policy, stage_dir / "reference")

    distributed.on_main(save_reference)
    stage.begin(policy)
    ref_policy = None
    if scfg.kl_coef > 0:
        ref_policy = load_policy(stage_dir / "reference" / "policy").to(device).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(stage.parameters(policy), lr=scfg.lr, weight_decay=scfg.weight_decay)

    eval_window = stage.eval_window

    def validation() -> Validation:  # rank 0 validates; every rank gets its result
        return on_rank0(lambda: validate(policy, cfg, eval_window, engine, scfg.val_episodes), Validation.from_json)

    state = StageState()
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None:
        load_weights(policy, checkpoint / "policy")
        state = StageState.from_json(load_trainer_state(checkpoint, optimizer))
        # best/ may hold a policy written after this checkpoint by the run that was killed
        distributed.on_main(lambda: restore_best(checkpoint, stage_dir / "best"))
        log.info("resuming %s from %s (epoch %d)", stage.name, checkpoint, state.epoch)
    start_epoch = state.epoch
    distributed.on_main(lambda: run.truncate_metrics(stage.name, start_epoch))
    if state.start_eval is None:
        entering = start_eval if start_eval is not None else validation()
        reference = on_rank0(lambda: stage.reference(policy, engine), Validation.from_json)
        state = dataclasses.replace(state, start_eval=entering, reference=reference, best=entering.at_epoch(0))
        distributed.on_main(lambda: stage.save_entering(policy, lambda p: save_policy_dir(p, stage_dir / "best")))
        first = {"stage": stage.name, "epoch": 0, "global_epoch": run.global_epoch(stage.name, 0)}
        _log(logger, seams, first | {f"val_{k}": v for k, v in entering.scalars().items()})

    failed_epochs = state.failed_epochs
    if state.stopped is not None:  # a stopping rule ended the stage before the interruption
        start_epoch = scfg.epochs
    show = cfg.logging.progress and distributed.is_main()
    bar = Progress(stage.name, scfg.epochs, unit="epoch", initial=start_epoch, show=show)
    for epoch in bar.wrap(range(start_epoch, scfg.epochs)):
        t0 = time.perf_counter()
        rng = np.random.default_rng(stable_seed(cfg.seed, stage.name, epoch, "starts"))
        starts = draw_starts(cfg, rng, epoch)
        windows = stage.assign_windows(len(starts), cfg.rollout.group_size)
        policy.eval()
        own = distributed.shard(len(starts))  # this rank's groups (all of them in one process)
        seed = stable_seed(cfg.seed, stage.name, epoch, "rollout")
        traj = engine.run(
            policy, starts[own], cfg.rollout.group_size, windows[own], "train", seed, **stage.rollout_options(policy)
        )
        t_rollout = time.perf_counter() - t0
        # every rank's outcomes (rewards, advantages and metrics over the whole epoch); mine: traj's rows
        everyone, mine = distributed.gather_outcomes(traj, list(cfg.env.tasks))
        if everyone.num_groups == 0:  # every group lost to simulator faults: nothing to learn from
            failed_epochs += 1
            if failed_epochs >= MAX_FAILED_EPOCHS:
                raise RuntimeError(
                    f"{stage.name}: every rollout group failed (simulator faults or worker timeouts) in "
                    f"{failed_epochs} epochs in a row; see the log"
                )
        else:
            failed_epochs = 0
        if everyone.dropped_groups > cfg.rollout.max_dropped_fraction * len(starts):
            kinds = ", ".join(f"{n} x {kind}" for kind, n in sorted(everyone.fault_counts.items()))
            raise RuntimeError(
                f"{stage.name} epoch {epoch + 1}: {everyone.dropped_groups} of {len(starts)} groups "
                f"dropped ({kinds}), more than "
                f"rollout.max_dropped_fraction={cfg.rollout.max_dropped_fraction:g}; see the log for the "
                "first fault of each kind"
            )

        rewards, reward_terms = stage.rewards(everyone)
        advantages, valid_groups = objective.group_advantages(rewards, scale=stage.scale_advantages)
        policy.train()
        valid = valid_groups.repeat_interleave(cfg.rollout.group_size)
        t_update = time.perf_counter()
        update = seams.update(
            policy, ref_policy, optimizer, traj, advantages.flatten()[mine], valid[mine], scfg, **stage.update_options()
        )

        ok = everyone.success.bool()
        record: dict[str, Any] = {
            "stage": stage.name,
            "epoch": epoch + 1,
            "global_epoch": run.global_epoch(stage.name, epoch + 1),
            "success_rate": ok.float().mean().item() if everyone.num_trajectories else float("nan"),
            "mean_steps": everyone.steps[ok].float().mean().item() if ok.any() else float("nan"),
            "mean_window": everyone.window.float().mean().item() if everyone.num_trajectories else float("nan"),
            "mean_calls": everyone.calls[ok].float().mean().item() if ok.any() else float("nan"),
            **reward_terms,
            # of the groups launched: a dropped group (simulator fault, timeout) carries no signal either
            "valid_group_frac": valid_groups.float().sum().item() / len(starts) if starts else 0.0,
            **update,
            "dropped_groups": everyone.dropped_groups,
            **{f"faults_{kind}": n for kind, n in sorted(everyone.fault_counts.items())},  # failed trajectories by kind
            "replaced_workers": engine.replaced_workers,  # so far, this process (hung or dead env workers)
            "env_steps": everyone.env_steps,
            "rollout_s": t_rollout,
            **rollout_parts(traj.timing),
            "update_s": time.perf_counter() - t_update,
            "epoch_s": time.perf_counter() - t0,
            **stage.epoch_record(),
        }
        last = epoch + 1 == scfg.epochs
        if (epoch + 1) % scfg.eval_every == 0 or last:
            policy.eval()
            t_val = time.perf_counter()
            val = validation()
            record.update({f"val_{k}": v for k, v in val.scalars().items()}, val_s=time.perf_counter() - t_val)
            if stage.is_better(val, state.best, state.start_eval):
                state = dataclasses.replace(state, best=val.at_epoch(epoch + 1), stale=0)
                distributed.on_main(lambda: save_policy_dir(policy, stage_dir / "best"))
            else:
                state = dataclasses.replace(state, stale=state.stale + 1)
            stopped = None if last else stage.stop_reason(epoch + 1, val, state.stale, state.reference)
            state = dataclasses.replace(state, stopped=stopped)
            if state.stopped is not None:
                record["stopped"] = state.stopped
                last = True
                log.info("%s stops after epoch %d of %d: %s", stage.name, epoch + 1, scfg.epochs, state.stopped)
        _log(logger, seams, record)
        bar.set_postfix(
            SR=f"{record['success_rate']:.2f}",
            T=f"{record['mean_steps']:.0f}",
            k=f"{record['mean_window']:.1f}",
            C=f"{record['mean_calls']:.1f}",
        )
        state = dataclasses.replace(state, failed_epochs=failed_epochs, epochs_run=epoch + 1, epoch=epoch + 1)
        if (epoch + 1) % scfg.checkpoint_every == 0 or last:
            trainer_state = state.to_json(stage.name)
            distributed.on_main(
                functools.partial(
                    save_checkpoint, stage_dir, epoch + 1, policy, optimizer, trainer_state, best_dir=stage_dir / "best"
                )
            )
        if state.stopped is not None:
            break
    bar.close()

    load_weights(policy, stage_dir / "best" / "policy")
    policy.eval()
    outcome = stage.conclude(policy, engine, scfg.epochs, state.best, state.start_eval, state.reference)
    outcome = dataclasses.replace(outcome, epochs_run=state.epochs_run, stop_reason=state.stopped)
    distributed.on_main(
        lambda: save_policy_dir(policy, stage_dir / "best")
    )  # the best policy, carrying the stage's decision
    return outcome


def rollout_parts(timing: dict[str, float]) -> dict[str, float]:
    """Where an epoch's rollout went, from the engine's `Trajectories.timing` (this process's
    workers): ``rollout_policy_s`` wall seconds in policy calls; ``rollout_reset_s`` and
    ``rollout_env_s`` worker seconds (summed over workers) resetting envs and stepping them."""
    worker, reset = timing.get("worker", 0.0), timing.get("worker_reset", 0.0)
    return {
        "rollout_policy_s": timing.get("policy", 0.0),
        "rollout_reset_s": reset,
        "rollout_env_s": max(0.0, worker - reset),
    }


def _log(logger: MetricsLogger | None, seams: TrainerSeams, record: dict[str, Any]) -> None:
    """Log ``record`` and pass it to the seam's hook, on rank 0 only (``logger`` is None elsewhere)."""

    def write() -> None:
        if logger is not None:  # always, on rank 0
            logger.log(record)
        if seams.on_record is not None:
            seams.on_record(record)

    distributed.on_main(write)


def save_policy_dir(policy: ChunkPolicy, path: Path) -> None:
    """Replace ``path`` atomically with a directory holding ``policy/`` (its checkpoint, with its
    window adaptor when it carries one)."""
    with atomic_directory(path, overwrite=True) as tmp:
        save_policy(policy, tmp / "policy")


def load_weights(policy: ChunkPolicy, directory: Path) -> None:
    """Give ``policy`` the weights saved in ``directory``, and its window adaptor's: copied into the
    adaptor ``policy`` carries (an optimiser holds its parameters), attached when it carries none,
    removed when the saved policy has none."""
    saved = load_policy(directory)
    policy.load_state_dict(saved.state_dict())
    mine, theirs = adaptor_of(policy), adaptor_of(saved)
    if theirs is None or mine is None:
        attach_adaptor(policy, theirs)
    else:
        mine.load_state_dict(theirs.state_dict())


# ---------------------------------------------------------------------------------------------
# both stages and the run directory


def check_policy_for_run(policy: ChunkPolicy, cfg: RunConfig, stages: list[str], where: str) -> None:
    """InputError (one line), before anything is written, when the policy cannot run what was asked:
    a stage it does not support (`policytrim.policies.base.supported_stages`: Stage 1 needs a window
    bound above the executed window), or an env config that would not render the image it reads.
    Called once, right after the starting checkpoint is loaded."""
    supported = supported_stages(policy)
    if any(s not in supported for s in stages if s in STAGES):  # adapt chooses windows within the bound
        raise InputError(
            f"{where} cannot run Stage 1 (extend): it decodes exactly the window it executes (chunk size "
            f"{policy.chunk_size}, "
            f"window {policy.default_window}) and Stage 1 needs a chunk longer than the executed window; it supports "
            f"--stage {' | '.join(supported)} (Stage 2 only, as for an autoregressive OpenVLA in the paper's Table 3)"
        )
    shape = getattr(policy, "image_shape", None)
    if shape and (not cfg.env.image or tuple(shape) != (cfg.env.image_size, cfg.env.image_size, 3)):
        have = f"--env.image-size {cfg.env.image_size}" if cfg.env.image else "no --env.image"
        raise InputError(
            f"{where} acts from {shape[0]}x{shape[1]} px images but the config has {have}; pass "
            f"--env.image --env.image-size {shape[0]}"
        )


def train(
    cfg: RunConfig,
    stage: str = "both",
    init: str = "",
    resume: str = "",
    overwrite: bool = False,
    seams: TrainerSeams | None = None,
) -> TrainSummary:
    """Run PolicyTrim (``stage`` = extend | trim | both) from checkpoint ``init`` into
    ``cfg.logging.out``, or continue the run directory ``resume``. Returns the run summary
    (`TrainSummary`, written as ``summary.json``: the stages' `StageOutcome`s and ``window``, the
    trained policy's window). The trained policy is ``RUN/final/policy``; its spec carries its
    window, stage and budget."""
    run = None
    if resume:
        run = RunDir.open(resume)
        cfg, stage, init = run.cfg, run.meta["stage"], run.meta["init"]
    else:
        if stage not in STAGE_CHOICES:
            raise InputError(f"stage must be one of {', '.join(STAGE_CHOICES)}, got {stage!r}")
        if not init:
            raise InputError("--init is required: the starting (baseline) checkpoint directory")
    stages = list(STAGES_OF.get(stage, (stage,)))
    check_preconditions(cfg, resume or cfg.logging.out)
    torch.manual_seed(cfg.seed)
    joined = distributed.init_from_env(cfg.device)  # under torchrun: data-parallel learner
    finished = False
    try:
        with workers_own_cores(cfg.rollout.num_workers, cfg.device):
            result = _train(cfg, stage, stages, init, run, overwrite, seams or TrainerSeams())
        finished = True
        return result
    finally:
        if joined:
            distributed.shutdown(synchronize=finished)


# Settings of cfg.policy that must agree with the starting checkpoint: they describe its architecture
# and enter the maths (H in the Stage 1 reward, k_1 in the Stage 1 windows), so a mismatch would be
# recorded in config.yaml and used silently.
ARCHITECTURE_FIELDS = ("head", "chunk_size", "default_window", "hidden_dim", "num_layers", "text_encoder", "std_mode")
FLOW_FIELDS = ("flow_steps", "flow_noise")
TOKEN_FIELDS = ("token_bins", "token_temperature", "token_dim", "token_layers")


def check_architecture(cfg: RunConfig, spec: dict[str, Any], where: str) -> None:
    """InputError naming every cfg.policy setting that differs from checkpoint ``spec``."""
    from policytrim.policies.text import canonical_encoder_name

    if (spec.get("kind") == "lerobot") != (cfg.policy.kind == "lerobot"):
        raise InputError(
            f"{where} is a {spec.get('kind')} policy but the config says policy.kind={cfg.policy.kind}; "
            f"pass --policy.kind {spec.get('kind')}"
        )
    head = spec.get("head")
    fields = ARCHITECTURE_FIELDS + (
        FLOW_FIELDS if head == "flow" else TOKEN_FIELDS if str(head).startswith("token_") else ()
    )
    if spec.get("kind") == "lerobot":  # its architecture is LeRobot's config; H and k enter our maths
        fields = ("chunk_size", "default_window")
    if spec.get("trained_stage", "bc") != "bc":  # a post-trained policy's window is PolicyTrim's choice, not k_1
        fields = tuple(f for f in fields if f != "default_window")
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
            + ", ".join(
                f"policy.{name} is {want!r} in the config but {have!r} in the checkpoint" for name, have, want in diff
            )
            + f"; pass {flags} (or the config the checkpoint was trained with)"
        )


def _train(
    cfg: RunConfig, stage: str, stages: list[str], init: str, run: RunDir | None, overwrite: bool, seams: TrainerSeams
) -> TrainSummary:
    if str(init) == "expert":
        raise InputError(
            "--init expert: the scripted experts have no weights to train; give a policy checkpoint directory"
        )
    policy = load_policy(init)  # validates the checkpoint before anything is written
    if adaptor_of(policy) is not None:  # every stage decides windows anew; adapt trains a fresh adaptor
        log.info("the starting policy's window adaptor is not used: the run trains at fixed windows or a fresh adaptor")
        attach_adaptor(policy, None)
    check_architecture(cfg, policy.spec(), f"checkpoint {init!r}")
    check_policy_for_run(policy, cfg, stages, f"checkpoint {init!r}")
    policy = _with_run_options(policy, cfg)
    policy = policy.to(cfg.device)
    plan = WindowPlan.for_run(policy, cfg, stages)  # every window of the run, bound-checked once
    stage1 = Stage1(cfg, plan) if "extend" in stages else None
    resume = run is not None
    if run is not None:
        for name in stages:  # every LATEST pointer checked (`latest_checkpoint`) before anything is written
            latest_checkpoint(run.stage_dir(name))
        distributed.on_main(run.remove_temporaries)
        distributed.on_main(lambda: run.set_status("running"))  # it may say "interrupted"
    else:
        meta = {"stage": stage, "stages": stages, "init": str(init)}
        distributed.on_main(lambda: RunDir.create(cfg.logging.out, cfg, meta, overwrite=overwrite))
        run = RunDir.open(cfg.logging.out)
    logger = (
        MetricsLogger(run.path, cfg.logging.tensorboard, cfg.logging.wandb, to_dict(cfg), resume=bool(resume))
        if distributed.is_main()
        else None
    )
    try:
        with seams.engine_factory(
            cfg.env,
            cfg.rollout.num_workers,
            cfg.rollout.step_timeout_s,
            pipeline=not cfg.rollout.lockstep,
            backend=cfg.rollout.backend,
            ray=cfg.ray,
            delay=cfg.rollout.delay,
        ) as engine:
            extended = trimmed = None
            if stage1 is not None:
                done = _completed(run, stage1.name, cfg)
                if done is None:
                    extended = run_stage(stage1, policy, cfg, run, engine, logger, seams)
                    distributed.on_main(lambda: run.write_json("extend/result.json", extended.to_json()))
                else:
                    extended, policy = done
            if "trim" in stages:
                done = _completed(run, Stage2.name, cfg)
                if done is None:
                    window = plan.stage2(extended.window if extended is not None else None)
                    # Stage 1's window choice validated this very policy at this window on the same
                    # states: its budget calibration and Stage 2's start reuse that validation
                    known = (
                        stage1.validations.get(window)
                        if stage1 is not None and cfg.stage2.val_episodes == cfg.stage1.val_episodes
                        else None
                    )
                    saved = run.read_json("trim/budget.json")
                    if saved is not None:
                        budget = BudgetCalibration.from_json(saved)
                    else:
                        policy.eval()
                        calibrate = lambda: calibrate_budget(policy, cfg, window, engine, known)  # noqa: E731
                        budget = on_rank0(calibrate, BudgetCalibration.from_json)
                        distributed.on_main(lambda: run.write_json("trim/budget.json", budget.to_json()))
                    trimmed = run_stage(
                        Stage2(cfg, window, budget), policy, cfg, run, engine, logger, seams, start_eval=known
                    )
                    distributed.on_main(lambda: run.write_json("trim/result.json", trimmed.to_json()))
                else:
                    trimmed, policy = done
            adapted = None
            if "adapt" in stages:
                done = _completed(run, AdaptStage.name, cfg)
                if done is None:
                    adapted = _run_adapt(policy, cfg, run, engine, logger, seams)
                    distributed.on_main(lambda: run.write_json("adapt/result.json", adapted.to_json()))
                else:
                    adapted, policy = done
            backends = tuple(logger.backends if logger else ())
            window = int(policy.default_window)  # the trained policy's: RUN/final/policy acts at it
            summary = TrainSummary(
                str(run.path), str(init), tuple(stages), backends, window, extended, trimmed, adapted
            )
        distributed.on_main(lambda: save_policy_dir(policy, run.path / "final"))
        distributed.on_main(lambda: run.write_json("summary.json", summary.to_json()))
        distributed.on_main(lambda: run.set_status("complete"))
    except KeyboardInterrupt:  # Ctrl-C reaches every rank: rank 0 marks run.json, no collective call here
        if not distributed.is_main():
            raise
        raise run.interrupted() from None
    except Exception as exc:  # a full disk: one line, the run marked failed and resumable
        if not (is_disk_full(exc) and distributed.is_main()):
            raise
        raise run.out_of_space(exc) from None
    finally:
        if logger is not None:
            logger.close()
    return summary


def _run_adapt(
    policy: ChunkPolicy,
    cfg: RunConfig,
    run: RunDir,
    engine: RolloutEngine,
    logger: MetricsLogger | None,
    seams: TrainerSeams,
) -> StageOutcome:
    """The adapt stage from ``policy`` (which carries no adaptor here): its call budget, calibrated
    once at the policy's trained window (``adapt/budget.json``, reread on resume), then `run_stage`."""
    saved = run.read_json("adapt/budget.json")
    if saved is not None:
        budget = CallBudget.from_json(saved)
    else:
        policy.eval()
        budget = on_rank0(lambda: calibrate_call_budget(policy, cfg, engine), CallBudget.from_json)
        distributed.on_main(lambda: run.write_json("adapt/budget.json", budget.to_json()))
    outcome = run_stage(
        AdaptStage(cfg, policy, budget), policy, cfg, run, engine, logger, seams, start_eval=budget.start
    )
    if adaptor_of(policy) is not None:  # the windows the best adaptor executes, for the report
        episodes, mode, seed = cfg.adapt.val_episodes, cfg.eval.mode, cfg.eval.seed
        distributed.on_main(
            lambda: run.write_json(
                "adapt/windows.json", evaluate_policy(policy, cfg.env, episodes, 0, mode, seed, "val", engine)
            )
        )
    return outcome


def _with_run_options(policy: ChunkPolicy, cfg: RunConfig) -> ChunkPolicy:
    """``policy`` with the run config's settings that are not part of its checkpoint (a LeRobot
    policy's ``policy.flow_noise`` and ``policy.train_parts``); other policies unchanged."""
    if cfg.policy.kind == "lerobot":
        from policytrim.policies.lerobot import apply_policy_config

        apply_policy_config(policy, cfg.policy)
    return policy


def _completed(run: RunDir, stage: str, cfg: RunConfig) -> tuple[StageOutcome, ChunkPolicy] | None:
    """A stage this run already completed: its outcome and its best policy (weights and the window /
    budget it was trained for, with the run's options), or None."""
    result = run.read_json(f"{stage}/result.json")
    if result is None:
        return None
    return StageOutcome.from_json(result), _with_run_options(
        load_policy(run.stage_dir(stage) / "best" / "policy"), cfg
    ).to(cfg.device)
