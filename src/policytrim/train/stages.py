"""PolicyTrim's two stages as objects the trainer loop runs (`policytrim.train.grpo.run_stage`).

Each stage owns its config section, the window each trajectory executes, its reward callable
(thin glue to `policytrim.objective`, never re-implemented here), its best-checkpoint rule and what
it concludes, returned as a typed `StageOutcome`:

==========  ===================================  ============================================
            `Stage1` (extend, SPEC eq 2)         `Stage2` (trim, SPEC eqs 5-7)
==========  ===================================  ============================================
config      ``cfg.stage1``                       ``cfg.stage2``
windows     slot j of a group: windows[j mod M]  every trajectory: the one Stage 2 window
reward      extension reward S (1 + l_h k / H)   step saving + group-anchored stability, budget B
best        highest validation SR at the         fewest calls without a significant SR loss
            longest window (ties: fewer calls)   against the stage's start (`significant_loss`)
concludes   the longest window whose validation  the window and budget it trained for
            SR is within the tolerance of the
            shortest window's (`choose_window`)
==========  ===================================  ============================================

The policy a stage concludes with carries its decision in its saved spec (`mark_trained`): its
default window is the window it was trained for, so `load_policy(RUN/final/policy)` acts at it.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from policytrim import objective
from policytrim.config import GRPOConfig, RunConfig
from policytrim.errors import InputError
from policytrim.eval.evaluate import evaluate_policy
from policytrim.eval.paired import paired_difference, relation_in_points
from policytrim.policies import ChunkPolicy
from policytrim.policies.adaptor import WindowAdaptor, adaptor_of, attach_adaptor
from policytrim.rollout.engine import RolloutEngine, stable_seed
from policytrim.rollout.types import Trajectories
from policytrim.train import distributed
from policytrim.train.decisions import BudgetCalibration, CallBudget, StageOutcome, Validation, WindowChoice
from policytrim.windows import WindowPlan

# ---------------------------------------------------------------------------------------------
# validation and the decisions it feeds


def validate(
    policy: ChunkPolicy, cfg: RunConfig, window: int, engine: RolloutEngine, episodes: int, seed: int | None = None
) -> Validation:
    """Overall metrics on validation states at one window (paired: fixed seed, ``cfg.eval.seed``
    unless ``seed`` is given), with the per-state success ``success_by_state`` for paired
    comparisons between validations."""
    metrics = evaluate_policy(
        policy,
        cfg.env,
        episodes,
        window,
        cfg.eval.mode,
        cfg.eval.seed if seed is None else seed,
        split="val",
        engine=engine,
        latency_ms=cfg.eval.latency_ms,
        return_outcomes=True,
    )
    if metrics["overall"]["episodes"] == 0:
        raise RuntimeError(
            f"validation at window {window}: every episode was lost to simulator faults or worker timeouts"
        )
    out = metrics["outcomes"]
    success = {
        f"{task}:{index}": bool(ok) for task, index, ok in zip(out["task"], out["index"], out["success"], strict=True)
    }
    return Validation(metrics["overall"], success)


def choice_seed(cfg: RunConfig) -> int | None:
    """The random numbers of Stage 1's window choice: with ``stage1.fresh_choice`` a seed of its own,
    derived from ``eval.seed`` (not the one the stage's validations picked its best checkpoint
    with); else None, ``eval.seed``'s."""
    return stable_seed("policytrim-window-choice", cfg.eval.seed) % 2**31 if cfg.stage1.fresh_choice else None


def choose_window(
    policy: ChunkPolicy,
    cfg: RunConfig,
    windows: tuple[int, ...],
    engine: RolloutEngine,
    known: Mapping[int, Validation] | None = None,
    baseline: Validation | None = None,
    seed: int | None = None,
) -> tuple[WindowChoice, dict[int, Validation]]:
    """Stage 1's decision: the longest window whose validation SR is within the tolerance of a
    reference SR (same states, same random numbers for every window): the policy's own SR at the
    shortest window; or, given ``baseline`` (``stage1.window_reference=baseline``), the lower of
    that and the entering policy's SR there: a window that loses nothing against either way of acting
    at the shortest window. When the longest window holds against the baseline nothing more is
    validated; else the policy's own shortest window is, then windows from the longest down until
    one holds (the shortest always does). ``known``: validations of this same policy already made (window ->
    `validate` result), not repeated. ``seed``: the validations' random numbers (None:
    ``cfg.eval.seed``). Also returns the full `validate` result of every window measured (for
    Stage 2's start), window -> `Validation`."""
    episodes = cfg.stage1.val_episodes
    per_window = dict(known or {})

    def measured(w: int) -> Validation:
        if w not in per_window:
            per_window[w] = validate(policy, cfg, w, engine, episodes, seed)
        return per_window[w]

    if baseline is None:  # every window's evidence, as the reference is one of them
        for w in windows:
            measured(w)
    tolerance = cfg.stage1.tolerance_points / 100.0

    def longest_within(reference: float) -> int:
        holds = (w for w in reversed(windows) if measured(w).success_rate >= reference - tolerance - 1e-12)
        return next(holds, windows[0])

    if baseline is not None and measured(windows[-1]).success_rate >= baseline.success_rate - tolerance - 1e-12:
        own, reference = None, baseline.success_rate  # the longest window holds: nothing else to measure
    else:  # the lower of the two references (the policy's own k_1 holds against it, so something does)
        own = measured(windows[0]).success_rate
        reference = own if baseline is None else min(baseline.success_rate, own)
    chosen = longest_within(reference)
    evidence = {w: per_window[w].without_outcomes() for w in windows if w in per_window}
    which = "policy" if reference == own else "baseline"
    tolerance_points, mode = cfg.stage1.tolerance_points, cfg.eval.mode
    choice = WindowChoice(chosen, tolerance_points, which, reference, episodes, "val", mode, evidence, seed)
    return choice, {w: per_window[w] for w in windows if w in per_window}


def calibrate_budget(
    policy: ChunkPolicy, cfg: RunConfig, window: int, engine: RolloutEngine, known: Validation | None = None
) -> BudgetCalibration:
    """Step budget B = ceil(beta_B * mean T of successes) of the policy entering Stage 2, at
    Stage 2's window, in the evaluation mode, on Stage 2's validation states (or the user's B).
    ``known``: that validation, already made (`validate` at ``window`` with stage2.val_episodes)."""
    if cfg.stage2.budget:
        return BudgetCalibration(cfg.stage2.budget, "given by the user (stage2.budget)")
    episodes = cfg.stage2.val_episodes
    val = known if known is not None else validate(policy, cfg, window, engine, episodes)
    if not val.success_rate:
        raise InputError(
            f"cannot calibrate the Stage 2 step budget: the policy succeeded in none of {val.episodes} validation "
            f"episodes at window {window}; give stage2.budget or start from a better policy"
        )
    return BudgetCalibration(
        objective.step_budget([val.mean_steps], cfg.stage2.budget_multiplier),  # mean_steps: mean T of the successes
        f"calibrated: ceil({cfg.stage2.budget_multiplier} x mean T of successful validation episodes)",
        mean_steps=val.mean_steps,
        success_rate=val.success_rate,
        window=window,
        mode=cfg.eval.mode,
        episodes_per_task=episodes,
    )


def calibrate_call_budget(policy: ChunkPolicy, cfg: RunConfig, engine: RolloutEngine) -> CallBudget:
    """The adapt stage's call budget B_C = ceil(beta_B * mean C of successes) (or the user's), from the
    policy entering the stage at its trained window, without any adaptor, on the stage's validation
    states; with ``adapt.step_coef`` > 0 also Stage 2's step budget B from the same episodes. Holds
    that validation (``start``): the stage's best checkpoint must not lose success against it. A policy
    without a success there needs the user's budget (and no step term), as Stage 2 needs its ``budget``."""
    a, window = cfg.adapt, int(policy.default_window)
    val = validate(policy, cfg, window, engine, a.val_episodes)
    if not val.success_rate and (not a.call_budget or a.step_coef > 0):
        raise InputError(
            f"cannot calibrate the adapt stage's call budget: the policy succeeded in none of {val.episodes} "
            f"validation episodes at window {window}; give adapt.call_budget (with adapt.step_coef 0) or start "
            "from a better policy"
        )
    step_budget = objective.step_budget([val.mean_steps], a.budget_multiplier) if a.step_coef > 0 else None
    if a.call_budget:
        source = "given by the user (adapt.call_budget)"
        budget = a.call_budget
    else:
        source = f"calibrated: ceil({a.budget_multiplier} x mean C of successful validation episodes)"
        budget = objective.call_budget([val.calls_per_success], a.budget_multiplier)
    return CallBudget(
        budget,
        source,
        step_budget,
        val.calls_per_success,
        val.mean_steps,
        val.success_rate,
        window,
        cfg.eval.mode,
        a.val_episodes,
        start=val,
    )


def adaptor_windows(configured: tuple[int, ...], trained_window: int, chunk_size: int) -> tuple[int, ...]:
    """The windows a fresh adaptor chooses from: ``configured``, else 5, 10, ... up to H, plus H;
    always with the trained window (the adaptor can return to it; `build_adaptor` adds its initial one)."""
    base = set(configured) if configured else set(range(5, chunk_size + 1, 5)) | {chunk_size}
    return tuple(sorted(base | {trained_window}))


def build_adaptor(policy: ChunkPolicy, cfg: RunConfig) -> WindowAdaptor:
    """A fresh window adaptor for ``policy`` (its trained window holding ``adapt.initial_mass``),
    initialised from the run's seed alone, so a restarted stage builds the same one."""
    state_dim = getattr(policy, "state_dim", None)
    if not isinstance(state_dim, int):
        kind = type(policy).__name__
        raise InputError(f"the adapt stage needs a policy that reads a state vector (state_dim); {kind} has none")
    initial = cfg.adapt.initial_window or int(policy.default_window)
    if initial > int(policy.chunk_size):
        raise InputError(f"adapt.initial_window {initial} exceeds the policy's chunk size {policy.chunk_size}")
    trained = adaptor_windows(cfg.adapt.windows, int(policy.default_window), int(policy.chunk_size))
    windows = tuple(sorted({*trained, initial}))
    stats = {
        k: getattr(policy, k).detach().cpu()
        for k in ("state_mean", "state_std")
        if isinstance(getattr(policy, k, None), torch.Tensor)
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed(cfg.seed, "adapt", "adaptor") % (2**63))
        return WindowAdaptor(
            state_dim=state_dim,
            action_dim=int(policy.action_dim),
            chunk_size=int(policy.chunk_size),
            windows=windows,
            initial_window=initial,
            hidden_dim=cfg.adapt.hidden_dim,
            initial_mass=cfg.adapt.initial_mass,
            greedy=cfg.adapt.credit == "call",  # trained as a one-call deviation from its greedy self
            **stats,
        )


def significant_loss(
    candidate: Validation, start: Validation, tolerance_points: float, rule: str = "significant"
) -> bool:
    """Whether ``candidate`` lost success against ``start`` (two validations on the same states with
    the same random numbers): its SR drop is larger than ``tolerance_points`` AND the paired 95%
    interval of the drop (Newcombe) excludes zero. On small validation sets one or two unlucky
    episodes move the SR by more than the tolerance; only a loss the evaluation can tell from noise
    disqualifies a checkpoint. ``rule="tolerance"``: any drop beyond ``tolerance_points`` counts,
    significant or not (the adapt stage's ``adapt.loss_rule``)."""
    drop = start.success_rate - candidate.success_rate
    if drop <= tolerance_points / 100.0 + 1e-12:
        return False
    if rule == "tolerance":
        return True
    a, b = start.success_by_state, candidate.success_by_state
    if not a or not b:  # no per-state outcomes (a checkpoint from before they were recorded)
        return True
    keys = sorted(a.keys() & b.keys())
    if not keys:
        return True
    diff = paired_difference([a[k] for k in keys], [b[k] for k in keys])
    return diff["hi"] < 0.0  # new - start is below zero with 95% confidence


def _calls(val: Validation) -> float:
    return math.inf if val.calls_per_success is None else val.calls_per_success  # None: no success


def most_successful(candidate: Validation, best: Validation | None) -> bool:
    """Stage 1's best-checkpoint rule: highest validation SR (at the longest window), ties: fewer calls."""
    return best is None or (candidate.success_rate, -_calls(candidate)) > (best.success_rate, -_calls(best))


def fewest_calls_without_loss(
    candidate: Validation,
    best: Validation | None,
    start: Validation,
    tolerance_points: float,
    rule: str = "significant",
) -> bool:
    """Stage 2's best-checkpoint rule: fewest calls among evaluations without a significant success
    loss against the stage's start (`significant_loss`, ``rule``); if every one lost, the highest SR."""
    if best is None:
        return True
    cand_ok = not significant_loss(candidate, start, tolerance_points, rule)
    best_ok = not significant_loss(best, start, tolerance_points, rule)
    if cand_ok != best_ok:
        return cand_ok
    if not cand_ok:
        return candidate.success_rate > best.success_rate
    return (_calls(candidate), -candidate.success_rate) < (_calls(best), -best.success_rate)


# ---------------------------------------------------------------------------------------------
# the stages


class Stage(abc.ABC):
    """What the trainer loop needs from a stage (the two subclasses below)."""

    name: ClassVar[str]
    config: GRPOConfig
    windows: tuple[int, ...]  # every window the stage executes, increasing

    @property
    def eval_window(self) -> int:
        """The window validations (and so the best checkpoint) are measured at: the longest."""
        return self.windows[-1]

    @abc.abstractmethod
    def assign_windows(self, num_groups: int, group_size: int) -> torch.Tensor:
        """long [num_groups, group_size]: the window each trajectory executes."""

    @abc.abstractmethod
    def rewards(self, traj: Trajectories) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewards [num_groups, G] and the mean of each reward term (for the logs)."""

    @abc.abstractmethod
    def is_better(self, candidate: Validation, best: Validation | None, start: Validation) -> bool:
        """Whether validation ``candidate`` replaces ``best`` as the stage's best checkpoint."""

    def begin(self, policy: ChunkPolicy) -> None:  # noqa: B027 - an optional hook: a no-op unless overridden
        """Called once the policy entering the stage is saved as its reference."""

    def parameters(self, policy: ChunkPolicy) -> list[torch.nn.Parameter]:
        """What the stage's optimiser trains: the policy's trainable parameters."""
        return [p for p in policy.parameters() if p.requires_grad]

    @property
    def scale_advantages(self) -> bool:
        """Whether eq 3 divides by the group's std (`objective.group_advantages`'s ``scale``)."""
        return True

    def rollout_options(self, policy: ChunkPolicy) -> dict[str, Any]:
        """Extra keyword arguments of the training rollouts (`RolloutEngine.run`)."""
        return {}

    def update_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the update (`policytrim.train.grpo.grpo_update`)."""
        return {}

    def save_entering(self, policy: ChunkPolicy, save: Callable[[ChunkPolicy], None]) -> None:
        """Save the entering policy as the best checkpoint of epoch 0 (``save(policy)``)."""
        save(policy)

    def epoch_record(self) -> dict[str, Any]:
        """Constant fields of every epoch's metrics record."""
        return {}

    def reference(self, policy: ChunkPolicy, engine: RolloutEngine) -> Validation | None:
        """Measured once, with the policy entering the stage, when the stage starts (kept in its
        checkpoints): what `stop_reason` compares with. None: nothing to measure."""
        return None

    def stop_reason(self, epoch: int, val: Validation, stale: int, reference: Validation | None) -> str | None:
        """Why the stage stops after the validation ``val`` of ``epoch``, or None to go on.
        ``stale``: validations in a row, this one included, without a new best checkpoint.
        Shared rule: ``patience`` stale validations (never before ``min_epochs``)."""
        c = self.config
        if epoch < c.min_epochs:
            return None
        if c.patience and stale >= c.patience:
            return f"patience: {stale} validations in a row without a new best checkpoint"
        return None

    @abc.abstractmethod
    def conclude(
        self,
        policy: ChunkPolicy,
        engine: RolloutEngine,
        epochs: int,
        best: Validation,
        start: Validation,
        reference: Validation | None = None,
    ) -> StageOutcome:
        """The stage's decision, made with ``policy`` holding its best checkpoint (``reference``:
        what `reference` measured); marks the policy with what it was trained for (`mark_trained`)."""


class Stage1(Stage):
    """Reliable chunk extension (SPEC eq 2)."""

    name = "extend"

    def __init__(self, cfg: RunConfig, plan: WindowPlan):
        self.cfg, self.config = cfg, cfg.stage1
        if not plan.stage1:
            raise ValueError("the window plan has no Stage 1 windows (build it with WindowPlan.for_run for 'extend')")
        self.windows = plan.stage1  # resolved and bound-checked once, in the run's window plan
        # set by `conclude`: the chosen policy's validation per window with eval.seed, which Stage 2's
        # start and budget reuse (none when the choice drew random numbers of its own: fresh_choice)
        self.validations: dict[int, Validation] = {}

    def assign_windows(self, num_groups: int, group_size: int) -> torch.Tensor:
        return objective.assign_windows(num_groups, group_size, self.windows)

    def rewards(self, traj: Trajectories) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = objective.extension_reward(
            traj.grouped(traj.success), traj.grouped(traj.window), self.cfg.policy.chunk_size, self.config.horizon_coef
        )
        per_window = {
            f"success_rate_k{w}": traj.success[traj.window == w].float().mean().item()
            for w in self.windows
            if bool((traj.window == w).any())
        }
        return rewards, {"reward": rewards.mean().item(), "reward_extension": rewards.mean().item(), **per_window}

    def is_better(self, candidate: Validation, best: Validation | None, start: Validation) -> bool:
        return most_successful(candidate, best)

    def reference(self, policy: ChunkPolicy, engine: RolloutEngine) -> Validation | None:
        """With ``stop_when_reliable`` or ``window_reference=baseline``: the entering policy's
        validation at the shortest window, with the window choice's random numbers (`choice_seed`)."""
        if not (self.config.stop_when_reliable or self.config.window_reference == "baseline"):
            return None
        val = validate(policy, self.cfg, self.windows[0], engine, self.config.val_episodes, choice_seed(self.cfg))
        return val.without_outcomes()

    def stop_reason(self, epoch: int, val: Validation, stale: int, reference: Validation | None) -> str | None:
        """The shared rule, then ``stop_when_reliable``: the longest window's validation SR is within
        ``tolerance_points`` of the entering policy's SR at the shortest window."""
        reason = super().stop_reason(epoch, val, stale, reference)
        if reason or not self.config.stop_when_reliable or reference is None or epoch < self.config.min_epochs:
            return reason
        tolerance = self.config.tolerance_points
        if val.success_rate >= reference.success_rate - tolerance / 100.0 - 1e-12:
            return (
                f"reliable: validation SR {val.success_rate:.3f} at window {self.windows[-1]} is "
                f"{relation_in_points(val.success_rate, reference.success_rate, tolerance)} "
                f"the entering policy's {reference.success_rate:.3f} at window {self.windows[0]}"
            )
        return None

    def conclude(
        self,
        policy: ChunkPolicy,
        engine: RolloutEngine,
        epochs: int,
        best: Validation,
        start: Validation,
        reference: Validation | None = None,
    ) -> StageOutcome:
        # the best checkpoint's validation at the longest window is known (same states and seed),
        # unless the choice draws random numbers of its own (stage1.fresh_choice)
        seed = choice_seed(self.cfg)
        reuse = seed is None and best.success_by_state is not None
        known = {self.eval_window: best.at_epoch(None)} if reuse else {}
        baseline = reference if self.config.window_reference == "baseline" else None
        if self.config.window_reference == "baseline" and baseline is None:
            raise RuntimeError(
                "stage1.window_reference=baseline needs the entering policy's validation at the shortest "
                "window (Stage1.reference)"
            )

        def decide() -> dict[str, Any]:  # rank 0 decides; every rank gets its JSON
            choice, validations = choose_window(policy, self.cfg, self.windows, engine, known, baseline, seed)
            return {"choice": choice.to_json(), "validations": {str(w): v.to_json() for w, v in validations.items()}}

        shared = distributed.main_only(decide)
        choice = WindowChoice.from_json(shared["choice"])
        if seed is None:
            self.validations = {int(w): Validation.from_json(v) for w, v in shared["validations"].items()}
        policy.mark_trained(self.name, choice.window)
        best, start = best.without_outcomes(), start.without_outcomes()
        return StageOutcome(self.name, epochs, self.eval_window, choice.window, best, start, window_choice=choice)


class Stage2(Stage):
    """Redundancy-aware step reduction (SPEC eqs 5-7) at one window against a step budget."""

    name = "trim"

    def __init__(self, cfg: RunConfig, window: int, budget: BudgetCalibration):
        self.cfg, self.config = cfg, cfg.stage2
        self.windows = (int(window),)
        self.budget_evidence = budget
        self.budget = int(budget.budget)

    def assign_windows(self, num_groups: int, group_size: int) -> torch.Tensor:
        return torch.full((num_groups, group_size), self.windows[0], dtype=torch.long)

    def rewards(self, traj: Trajectories) -> tuple[torch.Tensor, dict[str, float]]:
        s2 = self.config
        success = traj.grouped(traj.success)
        terms = objective.trim_reward_terms(
            success,
            traj.grouped(traj.steps),
            self.budget,
            s2.step_coef,
            s2.stability_coef,
            s2.sigma_floor,
            s2.floor_mode,
        )
        ok = success.bool()
        return terms.reward, {
            "reward": terms.reward.mean().item(),
            "reward_step_saving": terms.step_saving[ok].mean().item() if ok.any() else 0.0,
            "reward_stability_penalty": terms.stability[ok].mean().item() if ok.any() else 0.0,
        }

    def is_better(self, candidate: Validation, best: Validation | None, start: Validation) -> bool:
        return fewest_calls_without_loss(candidate, best, start, self.config.tolerance_points)

    def begin(self, policy: ChunkPolicy) -> None:
        # every Stage 2 checkpoint carries the window and budget it trains for
        policy.mark_trained(self.name, self.windows[0], self.budget)

    def epoch_record(self) -> dict[str, Any]:
        return {"budget": self.budget}

    def conclude(
        self,
        policy: ChunkPolicy,
        engine: RolloutEngine,
        epochs: int,
        best: Validation,
        start: Validation,
        reference: Validation | None = None,
    ) -> StageOutcome:
        best, start = best.without_outcomes(), start.without_outcomes()
        return StageOutcome(
            self.name,
            epochs,
            self.eval_window,
            self.windows[0],
            best,
            start,
            budget=self.budget,
            budget_evidence=self.budget_evidence,
        )


class AdaptStage(Stage):
    """The window adaptor's stage (SPEC "Adaptive windows", eqs 8-9): every call of the training
    rollouts executes the window the adaptor samples (the trajectory's window is only the bound, its
    largest), rewarded for calls saved against the call budget B_C; the adaptor's log-prob joins the
    ratio. ``adapt.train_policy`` false: only the adaptor is optimised and the policy's log-ratio is 0.
    Best checkpoint: Stage 2's rule against the entering policy at its trained window; if no
    validation beats that, the stage concludes with the policy as it entered, without an adaptor."""

    name = "adapt"

    def __init__(self, cfg: RunConfig, policy: ChunkPolicy, budget: CallBudget):
        self.cfg, self.config = cfg, cfg.adapt
        self.budget = budget
        self.trained_window = int(policy.default_window)
        self.adaptor = build_adaptor(policy, cfg)  # on the CPU, where the engine and the server call it
        self.windows = (self.adaptor.windows[-1],)  # the bound of its choices

    def assign_windows(self, num_groups: int, group_size: int) -> torch.Tensor:
        return torch.full((num_groups, group_size), self.windows[0], dtype=torch.long)

    def begin(self, policy: ChunkPolicy) -> None:
        attach_adaptor(policy, self.adaptor)  # every checkpoint and validation of the stage carries it

    def parameters(self, policy: ChunkPolicy) -> list[Any]:
        """The adaptor's parameters, and the policy's with ``train_policy``: one group at adapt.lr, or
        with ``policy_lr`` two Adam parameter groups (the policy's at its own rate)."""
        own = list(self.adaptor.parameters())
        if not self.config.train_policy:
            return own
        policy_params = super().parameters(policy)
        if not self.config.policy_lr:
            return own + policy_params
        return [{"params": own}, {"params": policy_params, "lr": self.config.policy_lr}]

    @property
    def scale_advantages(self) -> bool:
        return self.config.scale_advantages

    def rollout_options(self, policy: ChunkPolicy) -> dict[str, Any]:
        options = {"adaptor": adaptor_of(policy), "common_noise": self.config.common_noise}
        if self.config.credit == "call":  # branch calls over the entering policy's typical episode
            b = self.budget
            typical = max(1, math.ceil(b.mean_calls) if b.mean_calls else b.budget)
            options["branch_below"] = self.config.branch_calls or typical
        return options

    def update_options(self) -> dict[str, Any]:
        chunk_norm = None
        if not self.config.length_normalized:  # Dr. GRPO: one constant, the most calls an episode can make
            chunk_norm = float(math.ceil(self.cfg.env.horizon / min(self.adaptor.windows)))
        return {"adaptor": self.adaptor, "train_policy": self.config.train_policy, "chunk_norm": chunk_norm}

    def save_entering(self, policy: ChunkPolicy, save: Callable[[ChunkPolicy], None]) -> None:
        """Epoch 0's best is what was validated: the entering policy at its fixed window, no adaptor."""
        attach_adaptor(policy, None)
        try:
            save(policy)
        finally:
            attach_adaptor(policy, self.adaptor)

    def rewards(self, traj: Trajectories) -> tuple[torch.Tensor, dict[str, float]]:
        a = self.config
        success = traj.grouped(traj.success)
        terms = objective.adapt_reward_terms(
            success,
            traj.grouped(traj.calls),
            traj.grouped(traj.steps),
            self.budget.budget,
            self.budget.step_budget,
            a.call_coef,
            a.step_coef,
            a.stability_coef,
            a.sigma_floor,
            a.floor_mode,
        )
        ok = success.bool()
        out = {
            "reward": terms.reward.mean().item(),
            "reward_call_saving": terms.call_saving[ok].mean().item() if ok.any() else 0.0,
            "reward_stability_penalty": terms.stability[ok].mean().item() if ok.any() else 0.0,
        }
        if traj.chunk_window.numel():  # this process's chunks (under torchrun: rank 0's share)
            out["mean_executed_window"] = traj.chunk_window.float().mean().item()
        return terms.reward, out

    def is_better(self, candidate: Validation, best: Validation | None, start: Validation) -> bool:
        return fewest_calls_without_loss(candidate, best, start, self.config.tolerance_points, self.config.loss_rule)

    def epoch_record(self) -> dict[str, Any]:
        return {"call_budget": self.budget.budget}

    def conclude(
        self,
        policy: ChunkPolicy,
        engine: RolloutEngine,
        epochs: int,
        best: Validation,
        start: Validation,
        reference: Validation | None = None,
    ) -> StageOutcome:
        adaptor = adaptor_of(policy)
        windows = None if adaptor is None else adaptor.windows
        best, start = best.without_outcomes(), start.without_outcomes()
        budget = dataclasses.replace(self.budget, start=None)
        return StageOutcome(
            self.name,
            epochs,
            self.eval_window,
            self.trained_window,
            best,
            start,
            call_budget=budget,
            adaptor_windows=windows,
        )
