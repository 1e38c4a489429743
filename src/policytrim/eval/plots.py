"""The report's figures (PNG, matplotlib's Agg backend). Each function takes plain data (the JSON the
evaluation and the trainer write), draws one figure and returns the path written.

- `chunk_length_figure`: success rate and mean steps vs executed chunk length (the paper's Fig. 1b)
- `training_curves_figure`: reward, SR, steps and window per epoch, stage by stage (Fig. 4)
- `pareto_figure`: success rate vs inference calls of every policy compared, with the frontier
  (`pareto_frontier`: its policies, for the caption)
- `steps_histogram_figure`: steps of successful episodes, baseline vs trimmed policy (Fig. 1a)
- `ablation_curves_figure`: one training curve per ablation variant
- `filmstrip_figure`: frames of rollouts side by side (image runs)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from policytrim.errors import InputError  # noqa: E402
from policytrim.io import read_jsonl  # noqa: E402

STAGE_COLORS = {"extend": "tab:blue", "trim": "tab:orange"}
STAGE_TITLES = {"extend": "Stage 1 (extend)", "trim": "Stage 2 (trim)"}
DPI = 110


# The fields of a metrics.jsonl record the figures read, and what each must be (None: no value).
METRIC_NUMBERS = ("reward", "success_rate", "mean_steps", "mean_window", "val_success_rate", "val_mean_steps")
METRIC_EPOCHS = ("epoch", "global_epoch")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A training run's metrics.jsonl (`policytrim.io.read_jsonl`), every field the figures read
    checked: an InputError names the line and the field of valid JSON with a wrong type (a number
    given as text, an epoch given as a list), which would otherwise surface as a TypeError mid-plot."""
    records = read_jsonl(path)
    text = path.read_text() if path.is_file() else ""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]  # the records' lines, in order
    for record, line in zip(records, lines, strict=False):
        where = f"{path} line {line}"
        if "stage" in record and not isinstance(record["stage"], str):
            raise InputError(f"{where}: field 'stage' must be a string, got {record['stage']!r}")
        for key in METRIC_EPOCHS:
            value = record.get(key)
            if key in record and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise InputError(f"{where}: field {key!r} must be an integer >= 0, got {value!r}")
        for key in METRIC_NUMBERS:
            value = record.get(key)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise InputError(f"{where}: field {key!r} must be a number or null, got {value!r}")
    return records


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def chunk_length_figure(
    sweep: Mapping[int, Mapping[str, Any]],
    trained: Mapping[str, tuple[int, Mapping[str, Any]]],
    path: Path,
    title: str = "",
) -> Path:
    """sweep: {window: overall metrics} of the starting policy; trained: {label: (window, metrics)}
    (e.g. Stage 1 and PolicyTrim at their windows). Left: SR with 95% Wilson intervals; right: mean
    steps of successful episodes."""
    ks = sorted(sweep)
    fig, (ax_sr, ax_t) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    sr = np.array([_num(sweep[k]["success_rate"]) for k in ks])
    lo = np.array([sweep[k]["success_ci95"][0] for k in ks])
    hi = np.array([sweep[k]["success_ci95"][1] for k in ks])
    steps = np.array([_num(sweep[k]["mean_steps"]) for k in ks])
    ax_sr.errorbar(
        ks, sr, yerr=_yerr(sr, lo, hi), marker="o", capsize=3, color="tab:gray", label="starting policy, fixed window"
    )
    ax_t.plot(ks, steps, marker="o", color="tab:gray", label="starting policy, fixed window")
    markers = ["s", "D", "^", "v", "P"]
    for i, (label, (k, m)) in enumerate(trained.items()):
        s, (low, high) = _num(m["success_rate"]), m["success_ci95"]
        ax_sr.errorbar(
            [k],
            [s],
            yerr=_yerr([s], [low], [high]),
            marker=markers[i % len(markers)],
            capsize=3,
            linestyle="none",
            label=label,
            markersize=8,
        )
        ax_t.plot(
            [k], [_num(m["mean_steps"])], marker=markers[i % len(markers)], linestyle="none", label=label, markersize=8
        )
    ax_sr.set_xlabel("executed chunk length k")
    ax_sr.set_ylabel("success rate")
    ax_sr.set_ylim(max(0.0, min([*lo, *[t[1]["success_ci95"][0] for t in trained.values()]] or [0]) - 0.05), 1.02)
    ax_t.set_xlabel("executed chunk length k")
    ax_t.set_ylabel("mean steps T (successful episodes)")
    all_k = sorted(set(ks) | {k for k, _ in trained.values()})
    for ax in (ax_sr, ax_t):
        ax.set_xticks(all_k)
        ax.grid(alpha=0.3)
    ax_sr.legend(fontsize=8, loc="lower left")
    fig.suptitle(title or "Success rate and steps vs executed chunk length", fontsize=11)
    return _save(fig, path)


def training_curves_figure(
    records: Sequence[Mapping[str, Any]], path: Path, title: str = "", val_windows: Mapping[str, int] | None = None
) -> Path:
    """records: metrics.jsonl of a training run. Reward, SR, mean steps and mean window of the
    training rollouts per epoch (lines), validation SR and steps (markers, at the stage's evaluation
    window from ``val_windows``), one colour per stage. Stage 1's rollout window is the mean of the
    windows assigned to group slots."""
    val_windows = val_windows or {}
    offsets = stage_offsets(records)
    panels = [
        ("reward", None, "reward (rollouts)"),
        ("success_rate", "val_success_rate", "success rate"),
        ("mean_steps", "val_mean_steps", "mean steps T (successes)"),
        ("mean_window", None, "window k (rollouts)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.3))
    stages = list(dict.fromkeys(r.get("stage") for r in records if r.get("stage")))
    for stage in stages:
        rows = [r for r in records if r.get("stage") == stage]
        color = STAGE_COLORS.get(stage, None)
        for ax, (key, val_key, label) in zip(axes, panels, strict=True):
            train_rows = [r for r in rows if key in r and r.get(key) is not None and r.get("epoch", 0) > 0]
            x = [offsets[stage] + r["epoch"] for r in train_rows]
            y = [_num(r[key]) for r in train_rows]
            if x:
                ax.plot(x, y, color=color, alpha=0.35, linewidth=0.8)
                if len(y) >= 5:
                    w = max(3, len(y) // 15)
                    smooth = np.convolve(np.nan_to_num(y, nan=np.nanmean(y)), np.ones(w) / w, mode="valid")
                    ax.plot(x[w - 1 :], smooth, color=color, linewidth=1.8, label=f"{STAGE_TITLES.get(stage, stage)}")
                else:
                    ax.plot(x, y, color=color, linewidth=1.8, label=f"{STAGE_TITLES.get(stage, stage)}")
            if val_key:
                vals = [r for r in rows if r.get(val_key) is not None]
                if vals:
                    at = f" at k={val_windows[stage]}" if stage in val_windows else ""
                    xs = [offsets[stage] + r.get("epoch", 0) for r in vals]
                    ys = [_num(r[val_key]) for r in vals]
                    label = f"{stage} validation{at}"
                    ax.plot(xs, ys, marker="o", linestyle="--", color=color, markersize=4, label=label)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("epoch (both stages, as run)")
            ax.grid(alpha=0.3)
    if len(stages) > 1:
        boundary = offsets[stages[1]]
        for ax in axes:
            ax.axvline(boundary, color="k", linestyle=":", linewidth=1)
    axes[1].legend(fontsize=7)
    fig.suptitle(title or "Training curves per stage", fontsize=11)
    return _save(fig, path)


def stage_offsets(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Where each stage starts on the curves' epoch axis: after the epochs the stages before it
    actually ran (their last recorded epoch), not after the epochs they planned (``global_epoch``),
    so a Stage 1 that stopped early leaves no empty gap before Stage 2."""
    offsets: dict[str, int] = {}
    offset = 0
    for stage in dict.fromkeys(r.get("stage") for r in records if r.get("stage")):
        offsets[stage] = offset
        offset += max((int(r.get("epoch") or 0) for r in records if r.get("stage") == stage), default=0)
    return offsets


def _yerr(value, lo, hi) -> np.ndarray:
    """Error-bar lengths below / above, never negative (an interval end computed as 0.99999999 for
    an SR of 1.0 would be a matplotlib error)."""
    value, lo, hi = (np.asarray(x, dtype=float) for x in (value, lo, hi))
    return np.stack([np.clip(value - lo, 0.0, None), np.clip(hi - value, 0.0, None)])


def pareto_frontier(points: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """points: {policy: overall metrics}. The policies on the Pareto frontier of success rate vs mean
    calls per successful episode, fewest calls first: each has a higher SR than every policy with
    fewer (or as many) calls. One name: that policy has the fewest calls and no policy a higher SR."""
    frontier: list[tuple[str, float]] = []
    ranked = sorted(
        (it for it in points.items() if it[1].get("calls_per_success")),
        key=lambda it: (float(it[1]["calls_per_success"]), -_num(it[1]["success_rate"])),
    )
    for name, m in ranked:
        if not frontier or _num(m["success_rate"]) > frontier[-1][1]:
            frontier.append((name, _num(m["success_rate"])))
    return [name for name, _ in frontier]


def pareto_figure(
    points: Mapping[str, Mapping[str, Any]], path: Path, title: str = "", highlight: Sequence[str] = ()
) -> Path:
    """points: {policy: overall metrics}. Success rate (95% Wilson interval) vs mean inference calls
    per successful episode; the Pareto frontier (`pareto_frontier`) as a line when it holds more
    than one policy."""
    items = [(n, m) for n, m in points.items() if m.get("calls_per_success")]
    crowded = len(items) > 6  # labels next to the points would overlap: a legend with distinct markers
    fig, ax = plt.subplots(figsize=(9.6 if crowded else 7.2, 4.4))
    markers = "osD^vP*Xh<>p"
    colors = plt.get_cmap("tab20").colors
    for i, (name, m) in enumerate(items):
        c, s = float(m["calls_per_success"]), _num(m["success_rate"])
        lo, hi = m["success_ci95"]
        if crowded:
            style = dict(
                color=colors[i % len(colors)],
                marker=markers[i % len(markers)],
                markersize=10 if name in highlight else 7,
                label=name,
            )
        else:
            style = dict(
                color="tab:red" if name in highlight else "tab:blue",
                marker="o",
                markersize=9 if name in highlight else 6,
            )
        ax.errorbar([c], [s], yerr=_yerr([s], [lo], [hi]), capsize=3, linestyle="none", **style)
        if not crowded:
            ax.annotate(name, (c, s), textcoords="offset points", xytext=(6, 10 - 12 * (i % 3)), fontsize=8)
    frontier = [
        (float(points[n]["calls_per_success"]), _num(points[n]["success_rate"])) for n in pareto_frontier(points)
    ]
    if len(frontier) > 1:
        ax.step(
            [f[0] for f in frontier],
            [f[1] for f in frontier],
            where="post",
            color="tab:green",
            alpha=0.6,
            label="Pareto frontier",
        )
    if crowded:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    elif len(frontier) > 1:
        ax.legend(fontsize=8, loc="lower right")
    if (
        items
        and max(float(m["calls_per_success"]) for _, m in items)
        / max(1e-9, min(float(m["calls_per_success"]) for _, m in items))
        > 8
    ):
        ax.set_xscale("log")
    ax.set_xlabel("inference calls per successful episode (mean C)")
    ax.set_ylabel("success rate")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Success vs inference calls", fontsize=11)
    return _save(fig, path)


def steps_histogram_figure(
    steps: Mapping[str, Sequence[int]], path: Path, horizon: int | None = None, title: str = ""
) -> Path:
    """steps: {policy: T of its successful episodes}. Overlaid histograms on shared bins."""
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    values = [v for s in steps.values() for v in s]
    if not values:
        ax.text(0.5, 0.5, "no successful episode", ha="center", va="center", transform=ax.transAxes)
    else:
        top = horizon or max(values)
        bins = np.arange(0, top + 10, 5)
        for (name, s), color in zip(steps.items(), ["tab:gray", "tab:blue", "tab:orange", "tab:green"], strict=False):
            if len(s):
                ax.hist(s, bins=bins, alpha=0.22, color=color)
                ax.hist(
                    s,
                    bins=bins,
                    histtype="step",
                    linewidth=1.8,
                    color=color,
                    label=f"{name} (n={len(s)}, mean {np.mean(s):.1f}, sd {np.std(s):.1f})",
                )
                ax.axvline(float(np.mean(s)), color=color, linestyle="--", linewidth=1.2)
        ax.legend(fontsize=8)
    ax.set_xlabel("physical steps T (successful episodes)")
    ax.set_ylabel("episodes")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Steps per successful episode", fontsize=11)
    return _save(fig, path)


def ablation_curves_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str = "") -> Path:
    """curves: {variant: metrics.jsonl records of its run}. Reward, rollout SR and steps per epoch of
    each variant's LAST stage (the stage that defines it), smoothed."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for name, records in curves.items():
        stages = [r.get("stage") for r in records if r.get("stage")]
        if not stages:
            continue
        last = stages[-1]
        rows = [r for r in records if r.get("stage") == last and r.get("epoch", 0) > 0 and "reward" in r]
        for ax, key in zip(axes, ("reward", "success_rate", "mean_steps"), strict=True):
            y = np.array([_num(r.get(key)) for r in rows])
            x = np.array([r["epoch"] for r in rows])
            if len(y) == 0:
                continue
            w = max(1, min(5, len(y) // 4))
            smooth = np.convolve(
                np.nan_to_num(y, nan=np.nanmean(y) if np.isfinite(y).any() else 0.0), np.ones(w) / w, mode="valid"
            )
            ax.plot(x[w - 1 :], smooth, label=f"{name} ({last})")
    for ax, label in zip(axes, ("reward", "success rate (rollouts)", "mean steps T (rollouts)"), strict=True):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch of the variant's last stage")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "Training curves per ablation variant", fontsize=11)
    return _save(fig, path)


def filmstrip_figure(strips: Mapping[str, Sequence[tuple[int, np.ndarray]]], path: Path, title: str = "") -> Path:
    """strips: {label: [(step, image uint8 [h, w, 3]), ...]}: one row of frames per rollout, the
    label above its row, the step number above each frame."""
    rows = list(strips.items())
    cols = max((len(frames) for _, frames in rows), default=1)
    fig, axes = plt.subplots(
        len(rows),
        cols,
        figsize=(1.55 * cols, 2.0 * len(rows) + 0.4),
        squeeze=False,
        gridspec_kw={"hspace": 0.55, "wspace": 0.04},
    )
    for r, (label, frames) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(frames):
                step, image = frames[c]
                ax.imshow(image)
                ax.set_title(f"t = {step}", fontsize=8)
        axes[r][0].annotate(
            label, xy=(0.0, 1.28), xycoords="axes fraction", ha="left", va="bottom", fontsize=9, fontweight="bold"
        )
    fig.suptitle(title or "Rollouts", fontsize=10, y=1.0 + 0.12 / len(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")  # photographs compress badly in PNG: keep them small
    plt.close(fig)
    return path


def nice(value: Any, spec: str = ".3f") -> str:
    """Numbers for tables: '-' for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def executed_windows_figure(trace: Mapping[str, Sequence[Any]], path: Path, title: str = "") -> Path:
    """The windows a window adaptor executed (``trace``: one entry per call, the lists ``task``,
    ``step``, ``window`` of `policytrim.eval.evaluate.executed_windows`): window vs the env step of the
    call (left), and a histogram of the windows per task (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    tasks = list(dict.fromkeys(trace["task"]))
    windows = sorted(set(int(w) for w in trace["window"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rng = np.random.default_rng(0)  # jitter only, so that overlapping calls stay visible
    width = 0.8 / max(1, len(tasks))
    for j, task in enumerate(tasks):
        mine = [i for i, t in enumerate(trace["task"]) if t == task]
        steps = np.asarray([trace["step"][i] for i in mine], dtype=float)
        chosen = np.asarray([trace["window"][i] for i in mine], dtype=float)
        color = colors[j % len(colors)]
        left.scatter(steps, chosen + rng.uniform(-0.15, 0.15, len(chosen)), s=9, alpha=0.45, color=color, label=task)
        counts = [int((chosen == w).sum()) for w in windows]
        x = np.arange(len(windows)) + (j - (len(tasks) - 1) / 2) * width
        right.bar(x, counts, width=width, color=color, label=f"{task} (mean {chosen.mean():.1f})")
    left.set_xlabel("env step of the call")
    left.set_ylabel("window executed")
    left.set_yticks(windows)
    left.grid(alpha=0.3)
    right.set_xticks(np.arange(len(windows)), [str(w) for w in windows])
    right.set_xlabel("window executed")
    right.set_ylabel("calls")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "Windows chosen per call", fontsize=11)
    return _save(fig, path)
