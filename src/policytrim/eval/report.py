"""`policytrim report RUN_DIR...`: one Markdown file and one self-contained HTML page (PNG plots
inlined) with the tables and figures of the paper, made from our own runs.

Each run directory is recognised by what it holds and reported accordingly:

============  ==========================================  =========================================
kind          recognised by                                what the report shows
============  ==========================================  =========================================
ablation      ablation.json (`policytrim ablate`)         the ablation table (Tables 5, 6, 9, 12),
                                                          curves per variant, success vs calls
pipeline      summary.json + train/ (`policytrim demo`,   headline table, fixed-horizon sweep
              benchmarks/mw8.py)                          (Table 11), deterministic mode, per task,
                                                          robustness (Table 10), stage decisions,
                                                          Figs. 1 and 4, Pareto, step histograms
train         run.json + metrics.jsonl                    stage decisions, best checkpoints, Fig. 4
              (`policytrim train`)
eval          comparison.json or metrics.json             per mode tables, per task, robustness,
              (`policytrim eval`)                         Pareto, histograms, Fig. 1 with a sweep
============  ==========================================  =========================================

The report is built as a list of blocks (heading, paragraph, list, table, figure) rendered twice,
to Markdown (figures as files in ``OUT/plots/``) and to HTML (figures inlined as base64), so the
two always say the same thing. Python: ``write_report([Path("runs/demo")], Path("runs/demo/report"))``.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policytrim.errors import InputError
from policytrim.eval import plots
from policytrim.eval.paired import relation_in_points
from policytrim.eval.plots import nice
from policytrim.io import atomic_write_bytes, check_output_dir, read_json, read_jsonl

# ---------------------------------------------------------------------------------------------
# blocks and their two renderings


@dataclass
class Block:
    kind: str  # h | p | list | table | figure
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: Path | None = None


def h(text: str, level: int = 2) -> Block:
    return Block("h", text, level)


def p(text: str) -> Block:
    return Block("p", text)


def ul(items: Sequence[str]) -> Block:
    return Block("list", items=list(items))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Block:
    return Block("table", header=list(header), rows=[[str(c) for c in r] for r in rows])


def figure(path: Path, caption: str) -> Block:
    return Block("figure", caption, path=path)


def to_markdown(blocks: Sequence[Block], out: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h":
            lines += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "figure" and b.path is not None:
            lines += [f"![{b.text}]({b.path.relative_to(out).as_posix()})", "", f"*{b.text}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown emphasis and code used in our own strings -> HTML (after escaping)."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


def to_html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if b.kind == "h":
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "figure" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(b.text)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline(b.text)}</figcaption></figure>'
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:13px}th,td{border:1px solid "
        "#ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "figure{margin:1em 0}figcaption{font-size:13px;color:#555}code{background:#f3f3f3;padding:0 3px}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# reading run directories


def _json(path: Path) -> Any | None:
    """A run's JSON file, None when absent; unreadable: InputError naming the file."""
    return read_json(path, missing_ok=True, kind=None, corrupt=": the file is corrupt; the report cannot use this run")


def detect_kind(run_dir: Path) -> str:
    """ablation | pipeline | train | eval (see the module docstring)."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory")
    if (run_dir / "ablation.json").is_file():
        return "ablation"
    if (run_dir / "summary.json").is_file() and (run_dir / "train").is_dir():
        return "pipeline"
    if (run_dir / "run.json").is_file():
        return "train"
    if (run_dir / "comparison.json").is_file() or (run_dir / "metrics.json").is_file():
        return "eval"
    raise InputError(
        f"{run_dir} is not a run directory the report knows: expected ablation.json (ablate), summary.json "
        "+ train/ (demo), "
        "run.json + metrics.jsonl (train), or comparison.json / metrics.json (eval)"
    )


def load_suite(directory: Path, default_mode: str = "sampled") -> dict[str, Any] | None:
    """A comparison in the suite format ``{"modes": {mode: comparison}, "robustness": {...}}`` with
    ``"outcomes"`` (per mode, per policy) when stored, from a suite directory or an older single
    comparison.json (`policytrim.eval.compare` format) or a lone metrics.json."""
    comp = _json(directory / "comparison.json")
    if comp is None:
        metrics = _json(directory / "metrics.json")
        if metrics is None:
            return None
        mode = metrics.get("mode", default_mode)
        name = "policy"
        comp = {
            "format": "policytrim-comparison",
            "modes": {mode: {"baseline": name, "policies": {name: metrics}, "vs_baseline": {}}},
            "robustness": {},
            "windows": {name: metrics.get("window")},
            "episodes_per_task": metrics.get("episodes_per_task"),
            "seed": metrics.get("seed"),
        }
    elif "modes" not in comp:
        mode = next((m["mode"] for m in comp["policies"].values() if "mode" in m), default_mode)
        comp = {
            "modes": {mode: comp},
            "robustness": {},
            "windows": {n: m.get("window") for n, m in comp["policies"].items()},
        }
    outcomes = _json(directory / "outcomes.json") or {}
    comp["outcomes"] = outcomes
    return comp


# ---------------------------------------------------------------------------------------------
# tables


def _ci(ci: Sequence[float] | None, scale: float = 1.0, spec: str = ".2f") -> str:
    if not ci:
        return "–"
    return f"[{format(ci[0] * scale, spec)}, {format(ci[1] * scale, spec)}]"


def _window(value: Any) -> str:
    return "/".join(map(str, value)) if isinstance(value, list) else str(value)


COMPARISON_HEADER = [
    "policy",
    "k",
    "SR [95% CI]",
    "SR drop, points [paired 95% CI]",
    "mean T",
    "calls C",
    "calls speedup",
    "paper speedup",
    "steps reduction",
    "wall-clock s",
]


def comparison_rows(comparison: dict[str, Any], task: str | None = None) -> list[list[str]]:
    """One row per policy of a paired comparison (overall or one task)."""
    rows = []
    base = comparison["baseline"]
    for name, metrics in comparison["policies"].items():
        m = metrics["overall"] if task is None else metrics["tasks"].get(task)
        if m is None:
            continue
        vs = comparison["vs_baseline"].get(name, {})
        v = vs.get("overall") if task is None else vs.get("tasks", {}).get(task)
        if name == base:
            drop, speed, paper, red = "(baseline)", "1.00", "1.00", "0.00"
        elif v:
            drop = f"{v['success_rate_drop']:+.1f} {_ci(v['success_rate_drop_ci95'], spec='+.1f')}"
            speed, paper, red = (
                nice(v["calls_speedup"], ".2f"),
                nice(v["speedup_paper"], ".2f"),
                nice(v["steps_reduction"], ".2f"),
            )
        else:
            drop = speed = paper = red = "–"
        rows.append(
            [
                f"**{name}**" if name in ("policytrim",) else name,
                _window(m["window"]),
                f"{nice(m['success_rate'])} {_ci(m['success_ci95'])}",
                drop,
                nice(m["mean_steps"], ".1f"),
                nice(m["calls_per_success"], ".1f"),
                speed,
                paper,
                red,
                nice(m["wall_clock_s"], ".2f"),
            ]
        )
    return rows


def per_task_rows(comparison: dict[str, Any], new: str) -> list[list[str]]:
    base = comparison["baseline"]
    b_tasks = comparison["policies"][base]["tasks"]
    n_tasks = comparison["policies"][new]["tasks"]
    vs = comparison["vs_baseline"].get(new, {}).get("tasks", {})
    rows = []
    for task in n_tasks:
        b, n, v = b_tasks.get(task, {}), n_tasks[task], vs.get(task, {})
        rows.append(
            [
                task,
                nice(b.get("success_rate"), ".2f"),
                nice(b.get("mean_steps"), ".1f"),
                nice(b.get("calls_per_success"), ".1f"),
                nice(n["success_rate"], ".2f"),
                nice(n["mean_steps"], ".1f"),
                _window(n["window"]),
                nice(n["calls_per_success"], ".1f"),
                nice(v.get("calls_speedup"), ".2f"),
                nice(v.get("steps_reduction"), ".2f"),
                f"{v['success_rate_drop']:+.1f} {_ci(v['success_rate_drop_ci95'], spec='+.1f')}" if v else "–",
            ]
        )
    return rows


def per_task_header(base: str, new: str) -> list[str]:
    return [
        "task",
        f"{base} SR",
        "T",
        "C",
        f"{new} SR",
        "T",
        "k",
        "C",
        "calls speedup",
        "steps reduction",
        "SR drop [paired 95% CI]",
    ]


def robustness_rows(robustness: dict[str, Any], new: str) -> list[list[str]]:
    rows = []
    for name, r in robustness.items():
        base = r["baseline"]
        b, n = r["policies"][base]["overall"], r["policies"].get(new, {}).get("overall")
        if n is None:
            continue
        v = r["vs_baseline"][new]["overall"]
        rows.append(
            [
                f"{name}: {r['perturbation'].get('description', '')}",
                f"{nice(b['success_rate'], '.3f')} / {nice(b['mean_steps'], '.1f')} / "
                f"{nice(b['calls_per_success'], '.1f')}",
                f"{nice(n['success_rate'], '.3f')} / {nice(n['mean_steps'], '.1f')} / "
                f"{nice(n['calls_per_success'], '.1f')}",
                f"{v['success_rate_drop']:+.1f} {_ci(v['success_rate_drop_ci95'], spec='+.1f')}",
                nice(v["calls_speedup"], ".2f"),
            ]
        )
    return rows


# ---------------------------------------------------------------------------------------------
# sections


class Section:
    """Blocks of one run directory; figures go to ``plots_dir`` with ``prefix``."""

    def __init__(self, run_dir: Path, plots_dir: Path, prefix: str):
        self.run_dir, self.plots_dir, self.prefix = run_dir, plots_dir, prefix
        self.blocks: list[Block] = []

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def plot(self, name: str) -> Path:
        return self.plots_dir / f"{self.prefix}{name}.png"


def _main_contender(comparison: dict[str, Any]) -> str | None:
    names = list(comparison["policies"])
    for preferred in ("policytrim", "policy", "stage1"):
        if preferred in names and preferred != comparison["baseline"]:
            return preferred
    others = [n for n in names if n != comparison["baseline"] and not n.startswith(comparison["baseline"] + "@")]
    return others[-1] if others else None


def _sweep(comparison: dict[str, Any], windows: dict[str, Any]) -> dict[int, dict[str, Any]]:
    base = comparison["baseline"]
    out = {}
    for name, metrics in comparison["policies"].items():
        if name == base or name.startswith(base + "@k="):
            k = windows.get(name, metrics.get("window"))
            if isinstance(k, int):
                out[k] = metrics["overall"]
    return out


def _successful_steps(outcomes: dict[str, Any], name: str) -> list[int]:
    o = outcomes.get(name)
    if not o:
        return []
    return [int(t) for t, s in zip(o["steps"], o["success"], strict=True) if s]


def pareto_caption(points: dict[str, Any], subject: str) -> str:
    """The caption of `plots.pareto_figure` for ``points``: the frontier line it draws, or why it
    draws none (one policy alone is the frontier; no policy succeeded)."""
    frontier = plots.pareto_frontier(points)
    if len(frontier) > 1:
        return f"{subject}; the line is the Pareto frontier ({', '.join(frontier)})."
    if frontier:
        return (
            f"{subject}; {frontier[0]} alone is the Pareto frontier (the fewest calls, and no policy has a "
            "higher success rate), so no frontier line is drawn."
        )
    return f"{subject}; no policy had a successful episode, so there is nothing to plot."


def comparison_section(sec: Section, suite: dict[str, Any], headline_mode: str, level: int = 2) -> None:
    """Tables and figures of a suite-format comparison (the headline mode first)."""
    modes = (
        [headline_mode] + [m for m in suite["modes"] if m != headline_mode]
        if headline_mode in suite["modes"]
        else list(suite["modes"])
    )
    windows = suite.get("windows", {})
    for i, mode in enumerate(modes):
        comp = suite["modes"][mode]
        main = _main_contender(comp)
        first = i == 0
        sec.add(h(f"{'Headline: ' if first else ''}{mode} mode, paired on the same test states", level))
        sec.add(
            p(
                f"Every policy ran on the same {suite.get('episodes_per_task', '?')} test states per task "
                f"with the same random numbers (seed {suite.get('seed', '?')}); "
                "SR drop is baseline − policy in points with Newcombe's paired 95% interval; T and C are "
                "means over successful episodes; "
                "calls speedup = mean C of the baseline / mean C of the policy (measured); paper speedup = "
                "(T_base/k_base)/(T/k)."
            )
        )
        sec.add(table(COMPARISON_HEADER, comparison_rows(comp)))
        if main and len(comp["policies"][main]["tasks"]) > 1:
            sec.add(h(f"Per task ({mode}): {comp['baseline']} vs {main}", level + 1))
            sec.add(table(per_task_header(comp["baseline"], main), per_task_rows(comp, main)))
        if not first:
            continue
        sweep = _sweep(comp, windows)
        trained = {
            n: (windows.get(n, comp["policies"][n]["overall"]["window"]), comp["policies"][n]["overall"])
            for n in comp["policies"]
            if n in ("stage1", "policytrim", "policy") and n != comp["baseline"]
        }
        trained = {n: v for n, v in trained.items() if isinstance(v[0], int)}
        if len(sweep) > 1:
            path = plots.chunk_length_figure(
                sweep,
                trained,
                sec.plot("chunk_length"),
                title=f"Success rate and steps vs executed chunk length ({mode})",
            )
            sec.add(
                figure(
                    path,
                    "Fig. 1 (ours): the starting policy executing fixed windows (no training; Table 11) "
                    f"and the trained policies at their windows, {mode} mode, test states.",
                )
            )
        points = {n: m["overall"] for n, m in comp["policies"].items()}
        path = plots.pareto_figure(
            points,
            sec.plot("pareto"),
            title=f"Success vs inference calls ({mode} mode)",
            highlight=[n for n in ("policytrim", "policy") if n in points],
        )
        sec.add(
            figure(
                path,
                pareto_caption(
                    points, "Success rate vs mean inference calls per successful episode for every policy compared"
                ),
            )
        )
        outcomes = suite.get("outcomes", {}).get("modes", {}).get(mode, {})
        if main and outcomes:
            steps = {comp["baseline"]: _successful_steps(outcomes, comp["baseline"])}
            if "stage1" in outcomes and main != "stage1":
                steps["stage1"] = _successful_steps(outcomes, "stage1")
            steps[main] = _successful_steps(outcomes, main)
            horizon = comp["policies"][main]["overall"].get("horizon")
            path = plots.steps_histogram_figure(
                steps, sec.plot("steps_hist"), horizon, title=f"Steps per successful episode ({mode} mode)"
            )
            sec.add(
                figure(
                    path,
                    "Fig. 1a (ours): distribution of physical steps of successful test episodes; dashed "
                    "lines are the means.",
                )
            )
    robust = suite.get("robustness") or {}
    if robust:
        first = next(iter(robust.values()))
        main = _main_contender(first)
        if main:
            sec.add(h(f"Robustness (Table 10): {first['baseline']} vs {main}, {first.get('mode', '')} mode", level))
            sec.add(
                p(
                    "SR / mean T / mean C under each perturbation, same states and same perturbation noise "
                    "for both policies (`policytrim.eval.robustness`)."
                )
            )
            sec.add(
                table(
                    ["condition", first["baseline"], main, "SR drop [paired 95% CI]", "calls speedup"],
                    robustness_rows(robust, main),
                )
            )


def _curves(sec: Section, train_dir: Path, title: str) -> None:
    records = plots.read_metrics(train_dir / "metrics.jsonl")
    if not any("reward" in r for r in records):
        return
    windows = {}
    for stage in ("extend", "trim"):
        res = _json(train_dir / stage / "result.json") or {}
        if res.get("eval_window"):
            windows[stage] = res["eval_window"]
    budget = _json(train_dir / "trim" / "budget.json") or {}
    if "trim" not in windows and budget.get("window"):
        windows["trim"] = budget["window"]
    path = plots.training_curves_figure(records, sec.plot("training_curves"), title=title, val_windows=windows)
    sec.add(
        figure(
            path,
            "Fig. 4 (ours): per-epoch reward, success rate, steps and window of the training rollouts "
            "(thin: raw, thick: moving average), validation points dashed; the dotted line separates the "
            "stages. The two stages' rewards have different scales (eq 2 in [0, 2], eq 7 below 1); Stage "
            "1's rollout window is the mean of the windows assigned to the group slots.",
        )
    )


def _decision(path: Path, read: Any) -> Any:
    """A decision record (`policytrim.train.decisions`) read from the run file ``path`` with ``read``
    (its ``from_json``), None when absent; a file that is not one: InputError naming it."""
    data = _json(path)
    if data is None:
        return None
    try:
        return read(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"{type(exc).__name__}: {exc}"
        raise InputError(f"{path} is not a PolicyTrim stage record ({what}); the report cannot use this run") from None


def _stage_decisions(sec: Section, train_dir: Path, level: int) -> None:
    from policytrim.train.decisions import BudgetCalibration
    from policytrim.train.stages import StageOutcome

    ext = _decision(train_dir / "extend" / "result.json", lambda d: StageOutcome.from_json(d, "extend"))
    trim = _decision(train_dir / "trim" / "result.json", lambda d: StageOutcome.from_json(d, "trim"))
    budget = _decision(train_dir / "trim" / "budget.json", BudgetCalibration.from_json)
    if not (ext or trim or budget):
        return
    sec.add(h("Stage decisions (validation states)", level))
    if ext and ext.window_choice:
        _window_choice(sec, ext.window_choice)
    items = []
    for name, res in (("Stage 1", ext), ("Stage 2", trim)):
        if res:
            best = f"best checkpoint at epoch {res.best.epoch} ({_best_vs_start(res)})"
            items.append(f"{name}: {_epochs_run(res)}; {best}")
    if budget:
        how = ""
        if budget.calibrated:
            how = f"; mean T {nice(budget.mean_steps, '.1f')} at SR {nice(budget.success_rate)}, k = {budget.window}"
        items.append(f"Stage 2 step budget B = {budget.budget} ({budget.source}{how})")
    if items:
        sec.add(ul(items))
    clip = _clip_notes(read_jsonl(train_dir / "metrics.jsonl") if (train_dir / "metrics.jsonl").is_file() else [])
    if clip:
        sec.add(p("Update diagnostics: " + " ".join(clip)))


def _epochs_run(res: Any) -> str:
    """'30 of 70 planned epochs run, stopped early (REASON)' or '70 epochs' (``res``: a `StageOutcome`)."""
    if res.epochs_run is None or res.epochs_run == res.epochs:
        return f"{res.epochs} epochs"
    reason = res.stop_reason or "no reason recorded"
    return f"{res.epochs_run} of {res.epochs} planned epochs run, stopped early ({reason})"


def _best_vs_start(res: Any) -> str:
    b, s = res.best, res.start
    return (
        f"validation SR {nice(s.success_rate)} → {nice(b.success_rate)}, "
        f"T {nice(s.mean_steps, '.1f')} → {nice(b.mean_steps, '.1f')}, "
        f"C {nice(s.calls_per_success, '.1f')} → {nice(b.calls_per_success, '.1f')} at k = {res.eval_window}"
    )


REFERENCE_WORDS = {
    "policy": "the Stage 1 policy's own validation SR at the shortest window",
    "baseline": "the validation SR of the policy entering Stage 1 (the BC policy) at the shortest window",
}


def _window_choice(sec: Section, wc: Any) -> None:
    """Stage 1's window choice (a `WindowChoice`): the reference it compared against, each window's
    SR and where it stands against that reference (above / within / below, in points)."""
    tol, per_window, ref = wc.tolerance_points, wc.per_window, wc.reference_success_rate
    reference = wc.reference or "policy"
    if ref is None and reference == "policy" and per_window:  # older results: the reference is k_1's own SR
        ref = per_window[min(per_window)].success_rate
    chosen = per_window[wc.window].success_rate if wc.window in per_window else None
    stands = ""
    if chosen is not None and ref is not None:
        stands = f"; its SR {nice(chosen)} is {relation_in_points(chosen, ref, tol)} the reference"
    sec.add(
        p(
            f"Stage 1 window choice: **k = {wc.window}**, the longest window whose validation SR is at "
            f"most {tol:g} points "
            f"below the reference, {REFERENCE_WORDS.get(reference, reference)} (SR {nice(ref)}){stands} "
            f"({wc.episodes_per_task} states per task, {wc.mode} mode)."
        )
    )
    rows = [[f"reference: {reference}", nice(ref), "", "", ""]]
    for k, m in per_window.items():
        vs = relation_in_points(m.success_rate, ref, tol) if ref is not None and m.success_rate is not None else "–"
        rows.append([str(k), nice(m.success_rate), nice(m.mean_steps, ".1f"), nice(m.calls_per_success, ".1f"), vs])
    sec.add(table(["window", "SR", "mean T", "calls C", "SR vs reference"], rows))


def _clip_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per stage: the epochs whose update hit the clip hard (``clip_hard``) and the largest
    approximate KL of an update step (``approx_kl_max``, else the epoch mean ``approx_kl``)."""
    notes = []
    for stage, title in (("extend", "Stage 1"), ("trim", "Stage 2")):
        rows = [r for r in records if r.get("stage") == stage and r.get("epoch", 0) > 0]
        rows = [r for r in rows if isinstance(r.get("approx_kl"), (int, float))]
        if not rows:
            continue
        kl_key = "approx_kl_max" if all(isinstance(r.get("approx_kl_max"), (int, float)) for r in rows) else "approx_kl"
        worst = max(rows, key=lambda r: r[kl_key])
        hard = [r["epoch"] for r in rows if r.get("clip_hard")]
        text = f"{title}: largest approximate KL of an update {worst[kl_key]:.3g} (epoch {worst['epoch']})"
        if any("clip_hard" in r for r in rows):
            shown = ", ".join(map(str, hard[:10])) + (", ..." if len(hard) > 10 else "")
            text += "; the clip was hit hard (a step clipped more than 30% of its chunks)"
            text += f" in {len(hard)} of {len(rows)} epochs"
            text += f" ({shown})" if hard else ""
        notes.append(text + ".")
    return notes


def pipeline_section(sec: Section, level: int = 2) -> None:
    d = sec.run_dir
    summary = _json(d / "summary.json") or {}
    mode = summary.get("mode", "sampled")
    sec.add(h(f"PolicyTrim pipeline: `{d.as_posix()}`", level))
    facts = [
        f"tasks: {', '.join(summary.get('tasks', []) or ['?'])}",
        f"horizon {summary.get('horizon', '?')}, {summary.get('episodes_per_task', '?')} test states per "
        f"task, headline mode: **{mode}**",
    ]
    if summary.get("stage1_window_choice"):
        facts.append(
            f"Stage 1 window choice: k = {summary['stage1_window_choice']['window']}; Stage 2 budget: "
            f"{(summary.get('stage2_budget') or {}).get('budget', '–')}"
        )
    if summary.get("calls_speedup") is not None:
        lo, hi = summary["success_rate_drop_ci95"]
        facts.append(
            f"PolicyTrim vs baseline: **{summary['calls_speedup']:.2f}× fewer calls** (paper formula "
            f"{nice(summary['speedup_paper'], '.2f')}×), steps "
            f"{-100 * (summary['steps_reduction'] or 0):+.0f}%, SR drop "
            f"{summary['success_rate_drop']:+.1f} points (paired 95% CI [{lo:+.1f}, {hi:+.1f}])"
        )
    if summary.get("temporal_ensembling"):
        te = summary["temporal_ensembling"]
        facts.append(
            "ACT temporal ensembling of the baseline (reference for calls): SR "
            f"{nice(te['success_rate'])}, T {nice(te['mean_steps'], '.1f')}, C "
            f"{nice(te['calls_per_success'], '.1f')} (one call per step)"
        )
    if summary.get("demonstrations"):
        dm = summary["demonstrations"]
        keys = (
            "episodes",
            "suboptimal",
            "speed_min",
            "speed_max",
            "pause_prob",
            "pause_min",
            "pause_max",
            "detour_prob",
            "detour_min",
            "detour_max",
            "jitter_std",
            "labels",
            "max_attempts",
            "on_shortfall",
        )
        facts.append("demonstrations: " + ", ".join(f"{k}={dm[k]}" for k in keys if k in dm))
        if dm.get("collected"):  # what BC trained on; below `episodes` when the experts fell short
            short = {t: n for t, n in dm["collected"].items() if n < dm.get("episodes", 0)}
            counts = ", ".join(f"{t} {n}" for t, n in dm["collected"].items())
            fewer = f" (**fewer than the {dm['episodes']} requested** for {', '.join(short)})" if short else ""
            facts.append(f"demonstrations collected per task: {counts}{fewer}")
    sec.add(ul(facts))
    if summary.get("targets"):
        sec.add(h("Targets", level + 1))
        sec.add(
            table(
                ["metric", "target", "measured", "met"],
                [
                    [k, t["target"], nice(t["measured"], ".3f"), "yes" if t["met"] else "**no**"]
                    for k, t in summary["targets"].items()
                ],
            )
        )
    suite = load_suite(d / "eval" / "suite", mode) or load_suite(d / "eval", mode)
    if suite is not None:
        suite.setdefault("episodes_per_task", summary.get("episodes_per_task"))
        suite.setdefault("seed", summary.get("eval_seed"))
        suite.setdefault("windows", summary.get("windows", {}))
        comparison_section(sec, suite, mode, level + 1)
    films = sorted((d / "eval" / "filmstrips").glob("*.png"))
    if films:
        sec.add(h("Before / after (Fig. 3)", level + 1))
        for film in films:
            dest = sec.plot(f"filmstrip_{film.stem}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(film.read_bytes())
            sec.add(
                figure(
                    dest,
                    f"{film.stem}: baseline (top) and PolicyTrim (bottom) from the same test state with "
                    "the same random numbers; frames at the same step numbers, so the shorter episode "
                    "ends earlier.",
                )
            )
    if summary.get("clean_expert_steps"):
        sec.add(h("For scale: the clean scripted experts", level + 1))
        base_tasks = summary.get("per_task") or {}
        rows = [
            [
                t,
                nice(v, ".1f"),
                nice(base_tasks.get(t, {}).get("baseline", {}).get("mean_steps"), ".1f"),
                nice(base_tasks.get(t, {}).get("policytrim", {}).get("mean_steps"), ".1f"),
            ]
            for t, v in summary["clean_expert_steps"].items()
        ]
        sec.add(table(["task", "clean expert T", "baseline T", "PolicyTrim T"], rows))
    _analysis(sec, summary, level + 1)
    _stage_decisions(sec, d / "train", level + 1)
    _curves(sec, d / "train", "Training curves (both stages)")
    timing = summary.get("timings_s") or summary.get("timings")
    if timing:
        sec.add(h("Wall time", level + 1))
        loads = (summary.get("machine") or {}).get("phases_load") or {}
        load = lambda k, w: nice((loads.get(k) or {}).get(w, [None])[0], ".2f")  # noqa: E731
        sec.add(
            table(
                ["phase", "seconds", "minutes", "load before", "load after"],
                [[k, f"{v:.0f}", f"{v / 60:.1f}", load(k, "before"), load(k, "after")] for k, v in timing.items()],
            )
        )
    if summary.get("machine"):
        m = summary["machine"]
        sec.add(
            p(
                f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')}; "
                f"load average at start {nice((m.get('load_average_start') or [None])[0], '.2f')}."
            )
        )


def _analysis(sec: Section, summary: dict[str, Any], level: int) -> None:
    """Where the speedup comes from and where success was lost, from the numbers alone."""
    base, s1, pt = summary.get("baseline"), summary.get("stage1"), summary.get("policytrim")
    if not (base and pt and base.get("mean_steps") and pt.get("mean_steps")):
        return
    items = []
    k_b, k_p = base["window"], pt["window"]
    items.append(
        f"Window: {k_b} → {k_p} (×{k_p / k_b:.2f} fewer calls at equal steps). Steps: {base['mean_steps']:.1f} → "
        + (f"{s1['mean_steps']:.1f} (Stage 1) → " if s1 and s1.get("mean_steps") else "")
        + f"{pt['mean_steps']:.1f} (×{base['mean_steps'] / pt['mean_steps']:.2f}). Calls: "
        f"{base['calls_per_success']:.1f} → "
        + (f"{s1['calls_per_success']:.1f} → " if s1 and s1.get("calls_per_success") else "")
        + f"{pt['calls_per_success']:.1f}."
    )
    per_task = summary.get("per_task") or {}
    lost = [(t, v["success_rate_drop"]) for t, v in per_task.items() if v.get("success_rate_drop", 0) > 2.0]
    if lost:
        items.append(
            "Tasks that lost more than 2 points of SR: "
            + ", ".join(f"{t} ({d:+.0f})" for t, d in sorted(lost, key=lambda x: -x[1]))
            + "."
        )
    slow = [(t, v.get("steps_reduction")) for t, v in per_task.items() if v.get("steps_reduction") is not None]
    if slow:
        slow.sort(key=lambda x: x[1])
        items.append(
            "Change in steps per task, smallest reduction first: " + ", ".join(f"{t} {-r:+.0%}" for t, r in slow) + "."
        )
    sweep = summary.get("fixed_horizon_sweep") or {}
    if sweep:
        items.append(
            "Fixed windows without training (Table 11): "
            + ", ".join(
                f"k={k}: SR {nice(m['success_rate'])}, T {nice(m['mean_steps'], '.1f')}"
                for k, m in sorted(sweep.items(), key=lambda kv: int(kv[0]))
            )
            + "."
        )
    sec.add(h("Where the numbers come from", level))
    sec.add(ul(items))
    if summary.get("analysis"):
        sec.add(ul(summary["analysis"]) if isinstance(summary["analysis"], list) else p(summary["analysis"]))


def train_section(sec: Section, level: int = 2) -> None:
    d = sec.run_dir
    meta = _json(d / "run.json") or {}
    summary = _json(d / "summary.json")
    sec.add(h(f"Training run: `{d.as_posix()}`", level))
    sec.add(
        ul(
            [
                f"stages: {', '.join(meta.get('stages', []))}; status: {meta.get('status', '?')}; starting "
                f"checkpoint: `{meta.get('init', '?')}`",
                _final_policy(d) if summary else "the run has not completed (no summary.json)",
            ]
        )
    )
    _stage_decisions(sec, d, level + 1)
    _curves(sec, d, f"Training curves: {d.name}")
    _executed_windows(sec, _json(d / "adapt" / "windows.json"), "the adapt stage's best policy on validation states")


def _executed_windows(sec: Section, metrics: dict[str, Any] | None, what: str) -> None:
    """The window-per-call plot of ``metrics`` (an evaluation of a policy carrying a window adaptor)."""
    if not metrics or not metrics.get("window_trace"):
        return
    trace = metrics["window_trace"]
    mean = metrics.get("overall", {}).get("mean_executed_window")
    path = plots.executed_windows_figure(
        trace, sec.plot("executed_windows"), title=f"Windows executed per call: {what}"
    )
    calls = len(trace["window"])
    caption = f"{calls} calls, mean window {mean:.2f}" if isinstance(mean, (int, float)) else f"{calls} calls"
    sec.add(figure(path, caption + " (left: window vs the env step of the call; right: calls per window and task)"))


def _final_policy(run_dir: Path) -> str:
    """Where the trained policy is and what its saved spec says it executes."""
    path = run_dir / "final" / "policy"
    spec = _json(path / "config.json") or {}
    budget = spec.get("step_budget")
    return (
        f"final policy: `{path.as_posix()}` (window k = {spec.get('default_window', '?')}, trained by "
        f"{spec.get('trained_stage', 'bc')}" + (f", step budget B = {budget:g})" if budget else ")")
    )


def eval_section(sec: Section, level: int = 2) -> None:
    d = sec.run_dir
    suite = load_suite(d)
    sec.add(h(f"Evaluation: `{d.as_posix()}`", level))
    if suite is None:
        sec.add(p("no comparison.json or metrics.json"))
        return
    mode = next(iter(suite["modes"]))
    comparison_section(sec, suite, mode, level + 1)
    _executed_windows(sec, _json(d / "metrics.json"), f"`{d.as_posix()}`")


ABLATION_HEADER = [
    "variant",
    "what was trained",
    "k",
    "SR [95% CI]",
    "SR drop [paired 95% CI]",
    "mean T",
    "calls C",
    "calls speedup",
    "paper speedup",
    "train min",
]


def ablation_section(sec: Section, level: int = 2) -> None:
    d = sec.run_dir
    ab = _json(d / "ablation.json")
    sec.add(h(f"Ablation: `{d.as_posix()}`", level))
    sec.add(
        ul(
            [
                f"starting checkpoint: `{ab.get('init', '?')}`; tasks: {', '.join(ab.get('tasks', []))}; "
                f"{ab.get('episodes_per_task', '?')} test states per task, {ab.get('mode', '?')} mode, "
                "paired",
                "every variant starts from the same checkpoint with the same settings except the one named; "
                "the sweeps (group size, budget multiplier, stability coefficient) run Stage 2 from the "
                "full run's Stage 1 policy at its chosen window",
            ]
        )
    )
    rows = []
    for v in ab["variants"]:
        m, vs = v.get("metrics"), v.get("vs_baseline")
        if m is None:
            rows.append([v["name"], v["description"], "–", "not run", "", "", "", "", "", ""])
            continue
        drop = (
            f"{vs['success_rate_drop']:+.1f} {_ci(vs['success_rate_drop_ci95'], spec='+.1f')}" if vs else "(baseline)"
        )
        rows.append(
            [
                v["name"],
                v["description"],
                _window(m["window"]),
                f"{nice(m['success_rate'])} {_ci(m['success_ci95'])}",
                drop,
                nice(m["mean_steps"], ".1f"),
                nice(m["calls_per_success"], ".1f"),
                nice(vs["calls_speedup"], ".2f") if vs else "1.00",
                nice(vs["speedup_paper"], ".2f") if vs else "1.00",
                nice((v.get("train_seconds") or 0) / 60, ".1f"),
            ]
        )
    sec.add(table(ABLATION_HEADER, rows))
    if ab.get("notes"):
        sec.add(ul(ab["notes"]))
    curves = {}
    for v in ab["variants"]:
        run = v.get("run_dir")
        if run and (d / run / "metrics.jsonl").is_file():
            curves[v["name"]] = plots.read_metrics(d / run / "metrics.jsonl")
    if curves:
        path = plots.ablation_curves_figure(
            curves, sec.plot("ablation_curves"), title="Training curves per ablation variant (its last stage)"
        )
        sec.add(
            figure(
                path,
                "Reward, rollout success rate and steps per epoch for each variant's defining stage "
                "(moving average); Fig. 4 compares 'step-saving only' with 'step-saving + stability'.",
            )
        )
    suite = load_suite(d / "eval", ab.get("mode", "sampled"))
    if suite is not None:
        comp = suite["modes"].get(ab.get("mode")) or next(iter(suite["modes"].values()))
        points = {n: m["overall"] for n, m in comp["policies"].items()}
        path = plots.pareto_figure(
            points,
            sec.plot("ablation_pareto"),
            title="Ablation variants: success vs inference calls",
            highlight=["full"],
        )
        sec.add(
            figure(
                path,
                pareto_caption(
                    points,
                    "Success rate vs mean calls per successful episode of every ablation variant (same test states)",
                ),
            )
        )
    if ab.get("timings_s"):
        sec.add(
            p(
                f"Wall time: training {ab['timings_s'].get('train', 0) / 60:.1f} min, evaluation "
                f"{ab['timings_s'].get('eval', 0) / 60:.1f} min; load average at start "
                f"{nice((ab.get('machine') or {}).get('load_average_start', [None])[0], '.2f')}."
            )
        )


SECTIONS = {"ablation": ablation_section, "pipeline": pipeline_section, "train": train_section, "eval": eval_section}

STACKING_COLUMNS = (
    "name",
    "mode",
    "window",
    "median_latency_ms",
    "success_rate",
    "success_rate_drop",
    "seconds_per_success",
    "seconds_per_success_speedup",
    "idle_s_per_episode",
    "calls_per_episode",
)


def stacking_blocks(path: Path) -> list[Block]:
    """The measured Table-7 stacking table (a `benchmarks/deploy_timing.py` result file): seconds per
    success on the robot's clock for fewer calls x cheaper calls x asynchronous requests, beside the
    `--latency-ms` model of the eval tables."""
    data = _json(path)
    if data is None:
        raise InputError(
            f"--stacking {str(path)!r}: no such file (a benchmarks/deploy_timing.py result, e.g. "
            "benchmarks/results/stacking.json)"
        )
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and all(c in r for c in STACKING_COLUMNS) for r in rows
    ):
        raise InputError(
            f"--stacking {str(path)!r}: not a stacking result (expected 'rows' with {', '.join(STACKING_COLUMNS)})"
        )
    settings = data.get("settings") or {}
    return [
        h("Measured stacking: fewer calls x cheaper calls (Table 7)"),
        p(
            f"From `{path.as_posix()}`: seconds per success on the robot's clock ({settings.get('task', '?')}, "
            f"{settings.get('episodes', '?')} paired episodes per row): every action takes a control period, "
            "every call its measured latency; sync waits for each call, async requests the next chunk while "
            "the arm executes. Best stack: "
            f"{nice(data.get('combined_wallclock_speedup'), '.2f')}x at a success-rate drop of "
            f"{nice(data.get('combined_success_rate_drop'), '.1f')} points."
        ),
        table(
            ["row", "mode", "window", "latency ms", "SR", "SR drop", "s / success", "x", "idle s / ep", "calls / ep"],
            [
                [
                    r["name"],
                    r["mode"],
                    r["window"],
                    nice(r["median_latency_ms"], ".2f"),
                    nice(r["success_rate"]),
                    nice(r["success_rate_drop"], ".1f"),
                    nice(r["seconds_per_success"], ".3f"),
                    nice(r["seconds_per_success_speedup"], ".2f"),
                    nice(r["idle_s_per_episode"], ".3f"),
                    nice(r["calls_per_episode"], ".1f"),
                ]
                for r in rows
            ],
        ),
    ]


def write_report(run_dirs: Sequence[str | Path], out: str | Path, stacking: str | Path | None = None) -> Path:
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and ``out/plots/*.png`` for the
    run directories; returns the HTML path. ``stacking``: a `benchmarks/deploy_timing.py` result file whose
    measured latency table is shown beside the runs' modelled wall-clock."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise InputError("report: give at least one run directory")
    out = Path(out)
    check_output_dir(out, "--out")
    kinds = [detect_kind(d) for d in dirs]
    # built in a scratch directory and moved into ``out`` only once every run was read: a corrupt
    # file in the third run directory must not leave half a report behind
    with tempfile.TemporaryDirectory(prefix="policytrim-report-") as scratch:
        staged = Path(scratch)
        blocks: list[Block] = [
            h("PolicyTrim report", 1),
            p(
                "Generated by `policytrim report "
                + " ".join(d.as_posix() for d in dirs)
                + "`. Every number below was measured on these runs; nothing is copied from the paper."
            ),
        ]
        for i, (d, kind) in enumerate(zip(dirs, kinds, strict=True)):
            sec = Section(d, staged / "plots", f"{i}_{kind}_" if len(dirs) > 1 else f"{kind}_")
            SECTIONS[kind](sec)
            blocks += sec.blocks
        if stacking:
            blocks += stacking_blocks(Path(stacking))
        markdown, page = to_markdown(blocks, staged).encode(), to_html(blocks, "PolicyTrim report").encode()
        names = [f"plots/{plot.name}" for plot in sorted((staged / "plots").glob("*.png"))]
        for name in names:
            atomic_write_bytes(out / name, (staged / name).read_bytes())
    atomic_write_bytes(out / "report.md", markdown)
    atomic_write_bytes(out / "report.html", page)
    for name in ["report.md", "report.html", *names]:  # a report is for sharing: readable by all
        (out / name).chmod(0o644)
    return out / "report.html"
