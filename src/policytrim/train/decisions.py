"""What a training run decides, as typed records the trainer, the CLI and the report read.

==================  ===============================================  ==============================
record              what it holds                                    on disk (keys unchanged)
==================  ===============================================  ==============================
`Validation`        one validation: overall metrics at one window,   inside the others
                    per-state success, the epoch of a checkpoint
`WindowChoice`      Stage 1's decision and its evidence              ``extend/result.json``
                    (`policytrim.train.stages.choose_window`)        ``window_choice``
`BudgetCalibration` Stage 2's step budget B and how it was set       ``trim/budget.json``
`CallBudget`        the adapt stage's call budget B_C, its evidence  ``adapt/budget.json``
`StageState`        `run_stage`'s state between epochs               ``trainer_state.json``
`TrainSummary`      what `policytrim.train.grpo.train` returns       ``summary.json``
==================  ===============================================  ==============================

(`StageOutcome`, a stage's result, holds the first three.) Each has
``to_json()`` giving the JSON runs have always written, and ``from_json()`` where a file is read back
(a resumed run), accepting the fields older runs did not write yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from policytrim.train import distributed

R = TypeVar("R")


def on_rank0(fn: Callable[[], R], decode: Callable[[Any], R]) -> R:
    """`distributed.main_only` for a record (or None): rank 0 makes it, every rank gets it back from
    its JSON (``decode`` is the record's ``from_json``); in one process, ``fn()`` itself."""
    if not distributed.is_distributed():
        return fn()

    def made() -> Any:
        record = fn()
        return None if record is None else record.to_json()  # type: ignore[attr-defined]

    data = distributed.main_only(made)
    return None if data is None else decode(data)  # type: ignore[return-value]


@dataclass(frozen=True)
class Validation:
    """One validation: ``metrics`` is the overall entry of `policytrim.eval.metrics.summarize`
    (episodes, success_rate, success_ci95, mean_steps, window, calls_per_success, wall_clock_s,
    horizon, mode, seed) as measured; ``success_by_state`` ("task:index" -> success) pairs two
    validations on the same states; ``epoch``: the checkpoint's epoch when it is a stage's best
    (0 = the policy entering the stage)."""

    metrics: Mapping[str, Any]
    success_by_state: Mapping[str, bool] | None = None
    epoch: int | None = None

    @property
    def success_rate(self) -> float | None:
        """Fraction of the validation episodes that succeeded (None: not recorded)."""
        return self.metrics.get("success_rate")

    @property
    def mean_steps(self) -> float | None:
        """Mean steps T of the successful episodes (None: no success)."""
        return self.metrics.get("mean_steps")

    @property
    def calls_per_success(self) -> float | None:
        """Mean calls C of the successful episodes (None: no success)."""
        return self.metrics.get("calls_per_success")

    @property
    def episodes(self) -> int | None:
        return self.metrics.get("episodes")

    def scalars(self) -> dict[str, float | int]:
        """The numeric metrics (for a metrics record's ``val_*`` fields)."""
        return {k: v for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def at_epoch(self, epoch: int) -> Validation:
        return dataclasses.replace(self, epoch=epoch)

    def without_outcomes(self) -> Validation:
        """Without its per-state outcomes (for summaries and recorded evidence)."""
        return dataclasses.replace(self, success_by_state=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.epoch is None else {"epoch": self.epoch}
        out.update(self.metrics)
        if self.success_by_state is not None:
            out["success_by_state"] = dict(self.success_by_state)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Validation:
        metrics = {k: v for k, v in data.items() if k not in ("epoch", "success_by_state")}
        return cls(metrics, data.get("success_by_state"), data.get("epoch"))


def _validation(data: Mapping[str, Any] | None) -> Validation | None:
    return None if data is None else Validation.from_json(data)


def _json(value: Validation | None) -> dict[str, Any] | None:
    return None if value is None else value.to_json()


@dataclass(frozen=True)
class WindowChoice:
    """Stage 1's decision: ``window``, the longest whose validation SR is at most
    ``tolerance_points`` below ``reference_success_rate`` (``reference``: ``policy``, the trained
    policy's own SR at the shortest window, or ``baseline``, the entering policy's there), with the
    validation of every window measured (``per_window``, without per-state outcomes) and ``seed``, the
    random numbers of the choice's own validations (``stage1.fresh_choice``; None: ``eval.seed``)."""

    window: int
    tolerance_points: float
    reference: str | None = None
    reference_success_rate: float | None = None
    episodes_per_task: int | None = None
    split: str = "val"
    mode: str | None = None
    per_window: Mapping[int, Validation] = field(default_factory=dict)
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tolerance_points": self.tolerance_points,
            "reference": self.reference,
            "reference_success_rate": self.reference_success_rate,
            "episodes_per_task": self.episodes_per_task,
            "split": self.split,
            "mode": self.mode,
            "per_window": {str(k): v.to_json() for k, v in self.per_window.items()},
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowChoice:
        return cls(
            window=int(data["window"]),
            tolerance_points=data.get("tolerance_points", 2.0),
            reference=data.get("reference"),
            reference_success_rate=data.get("reference_success_rate"),
            episodes_per_task=data.get("episodes_per_task"),
            split=data.get("split", "val"),
            mode=data.get("mode"),
            per_window={int(k): Validation.from_json(v) for k, v in (data.get("per_window") or {}).items()},
            seed=data.get("seed"),
        )


@dataclass(frozen=True)
class BudgetCalibration:
    """Stage 2's step budget B (steps) and how it was set: given by the user (``source`` says so,
    nothing else), or ceil(multiplier x ``mean_steps``) of the entering policy's successful
    validation episodes at ``window`` in ``mode``."""

    budget: int | float
    source: str
    mean_steps: float | None = None
    success_rate: float | None = None
    window: int | None = None
    mode: str | None = None
    episodes_per_task: int | None = None

    @property
    def calibrated(self) -> bool:
        return self.mean_steps is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget": self.budget, "source": self.source}
        if self.calibrated:
            out.update(
                mean_steps=self.mean_steps,
                success_rate=self.success_rate,
                window=self.window,
                mode=self.mode,
                episodes_per_task=self.episodes_per_task,
            )
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetCalibration:
        keys = ("mean_steps", "success_rate", "window", "mode", "episodes_per_task")
        return cls(data["budget"], data.get("source", ""), **{k: data.get(k) for k in keys})


@dataclass(frozen=True)
class CallBudget:
    """The adapt stage's call budget B_C (calls; SPEC "Adaptive windows") and how it was set: given
    by the user, or ceil(multiplier x ``mean_calls``) of the entering policy's successful validation
    episodes at its trained ``window`` in ``mode``; ``step_budget``: Stage 2's B from the same
    validation (when the stage also rewards saved steps). ``start``: that validation, per state: what
    the stage's best checkpoint must not lose success against."""

    budget: int
    source: str
    step_budget: int | None = None
    mean_calls: float | None = None
    mean_steps: float | None = None
    success_rate: float | None = None
    window: int | None = None
    mode: str | None = None
    episodes_per_task: int | None = None
    start: Validation | None = None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "start" and v is not None}
        if self.start is not None:
            out["start"] = self.start.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallBudget:
        keys = ("step_budget", "mean_calls", "mean_steps", "success_rate", "window", "mode", "episodes_per_task")
        start = Validation.from_json(data["start"]) if data.get("start") else None
        return cls(int(data["budget"]), data.get("source", ""), **{k: data.get(k) for k in keys}, start=start)


@dataclass(frozen=True)
class StageState:
    """`run_stage`'s state, saved in every checkpoint (``trainer_state.json``) and read back on resume.

    best: the best checkpoint's validation (its ``epoch``); start_eval: the entering policy's
    validation at the eval window; reference: what the stage's stopping rule compares with
    (`Stage.reference`); failed_epochs: consecutive epochs whose groups were all dropped; stale:
    validations in a row without a new best; stopped: why a stopping rule ended the stage;
    epochs_run: epochs trained; epoch: the checkpoint's epoch (0 before any)."""

    best: Validation | None = None
    start_eval: Validation | None = None
    reference: Validation | None = None
    failed_epochs: int = 0
    stale: int = 0
    stopped: str | None = None
    epochs_run: int = 0
    epoch: int = 0

    def to_json(self, stage: str) -> dict[str, Any]:
        """The ``trainer_state.json`` fields (the checkpoint writer adds ``epoch`` and the optimiser)."""
        return {
            "stage": stage,
            "best": _json(self.best),
            "start_eval": _json(self.start_eval),
            "failed_epochs": self.failed_epochs,
            "reference": _json(self.reference),
            "stale": self.stale,
            "stopped": self.stopped,
            "epochs_run": self.epochs_run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageState:
        epoch = int(data.get("epoch", 0))
        return cls(
            best=_validation(data.get("best")),
            start_eval=_validation(data.get("start_eval")),
            reference=_validation(data.get("reference")),
            failed_epochs=int(data.get("failed_epochs", 0)),
            stale=int(data.get("stale", 0)),
            stopped=data.get("stopped"),
            epochs_run=int(data.get("epochs_run", epoch)),
            epoch=epoch,
        )


@dataclass(frozen=True)
class StageOutcome:
    """What a completed stage decided, with its evidence; written once as ``STAGE/result.json``.

    window: extend: the window Stage 1 chose; trim: the window Stage 2 trained at.
    budget: trim: the step budget B (steps); extend: None.
    best: validation of the best checkpoint, with its ``epoch`` (0 = the starting policy).
    start: validation of the policy that entered the stage. Both at ``eval_window``, without outcomes.
    window_choice: extend: Stage 1's decision with its per-window evidence (`choose_window`).
    budget_evidence: trim: how B was set (`calibrate_budget`).
    epochs_run: epochs trained (fewer than ``epochs`` when a stopping rule stopped the stage).
    stop_reason: why the stage stopped early (`Stage.stop_reason`), or None.
    """

    stage: str
    epochs: int
    eval_window: int
    window: int
    best: Validation
    start: Validation
    budget: int | None = None
    window_choice: WindowChoice | None = None
    budget_evidence: BudgetCalibration | None = None
    epochs_run: int | None = None
    stop_reason: str | None = None
    call_budget: CallBudget | None = None
    adaptor_windows: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` / summary record (the format runs have always written)."""
        out: dict[str, Any] = {"stage": self.stage, "epochs": self.epochs, "best": self.best.to_json()}
        out.update(start=self.start.to_json(), eval_window=self.eval_window)
        out.update(epochs_run=self.epochs if self.epochs_run is None else self.epochs_run, stop_reason=self.stop_reason)
        if self.window_choice is not None:
            out["window_choice"] = self.window_choice.to_json()
        if self.budget_evidence is not None:
            out.update(window=self.window, budget=self.budget_evidence.to_json())
        if self.call_budget is not None:
            out.update(window=self.window, call_budget=self.call_budget.to_json())
            out["adaptor_windows"] = None if self.adaptor_windows is None else list(self.adaptor_windows)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], stage: str | None = None) -> StageOutcome:
        """Inverse of `to_json` (a completed stage of a resumed run, a run the report reads);
        ``stage``: the stage of a record written before it named its stage."""
        choice = WindowChoice.from_json(data["window_choice"]) if data.get("window_choice") else None
        budget = BudgetCalibration.from_json(data["budget"]) if data.get("budget") else None
        return cls(
            stage=data.get("stage", stage),
            epochs=data["epochs"],
            eval_window=data["eval_window"],
            window=choice.window if choice else data["window"],
            best=Validation.from_json(data["best"]),
            start=Validation.from_json(data.get("start") or {}),
            budget=int(budget.budget) if budget else None,
            window_choice=choice,
            budget_evidence=budget,
            epochs_run=data.get("epochs_run"),
            stop_reason=data.get("stop_reason"),
            call_budget=CallBudget.from_json(data["call_budget"]) if data.get("call_budget") else None,
            adaptor_windows=tuple(data["adaptor_windows"]) if data.get("adaptor_windows") else None,
        )


@dataclass(frozen=True)
class TrainSummary:
    """What a training run did (`policytrim.train.grpo.train`'s result; ``summary.json``).
    extend / trim: the stages' outcomes (None for a stage not run); window: the trained policy's
    window (the one ``RUN/final/policy`` acts at)."""

    run_dir: str
    init: str
    stages: tuple[str, ...]
    logging: tuple[str, ...]
    window: int
    extend: StageOutcome | None = None
    trim: StageOutcome | None = None
    adapt: StageOutcome | None = None

    def outcome(self, stage: str) -> StageOutcome | None:
        """The outcome of ``stage`` (extend | trim | adapt)."""
        return {"extend": self.extend, "trim": self.trim, "adapt": self.adapt}[stage]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_dir": self.run_dir,
            "init": self.init,
            "stages": list(self.stages),
            "logging": list(self.logging),
        }
        for name in ("extend", "trim", "adapt"):
            if self.outcome(name) is not None:
                out[name] = self.outcome(name).to_json()
        out["window"] = self.window
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainSummary:
        outcomes = {name: StageOutcome.from_json(data[name]) for name in ("extend", "trim", "adapt") if data.get(name)}
        return cls(
            data["run_dir"],
            data["init"],
            tuple(data["stages"]),
            tuple(data.get("logging", ())),
            data["window"],
            **outcomes,
        )
