"""What each `policytrim` command does: build the config, check the outputs, call the library,
print. Every library call here is a plain function a Python user can call with a `RunConfig`;
library modules are imported inside each command so that ``--help`` stays fast."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

from policytrim import limits as L
from policytrim.config import RunConfig, to_dict
from policytrim.errors import InputError


def run_config(cmd: RunConfig) -> RunConfig:
    """The plain `RunConfig` part of a parsed command (what gets saved with a run)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{n: getattr(cmd, n) for n in names})


def demo(args: Any) -> int:
    """`policytrim demo`: the whole pipeline (`policytrim.experiments.demo.run_demo`) and its report."""
    from policytrim.eval.report import write_report
    from policytrim.experiments.demo import format_summary, run_demo

    cfg = run_config(args)
    out = Path(cfg.logging.out)
    summary = run_demo(cfg, out, overwrite=args.overwrite)
    report = write_report([out], out / "report")
    print(format_summary(summary))
    print(f"summary: {out / 'summary.json'}\nreport: {report}")
    return 0


def collect(args: Any) -> int:
    """`policytrim collect`: `policytrim.data.collect.collect_demos` and a per-task summary."""
    from policytrim.data.collect import collect_demos
    from policytrim.data.demos import summarize_demos

    cfg = run_config(args)
    out = Path(cfg.logging.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    ds = collect_demos(cfg, out, overwrite=args.overwrite, progress=cfg.logging.progress, fmt=args.format)
    kind = "suboptimal" if cfg.data.suboptimal else "clean"
    print(
        f"wrote {ds.num_episodes} {kind} expert demonstrations ({ds.num_frames} frames) to {out}"
        + (" as a LeRobotDataset" if args.format == "lerobot" else "")
    )
    print(f"{'task':<28} {'episodes':>8} {'expert SR':>9} {'steps (mean ± sd)':>18}")
    for task, row in summarize_demos(ds).items():
        sr = f"{row['expert_success_rate']:.2f}" if row["expert_success_rate"] is not None else "-"
        print(f"{task:<28} {row['episodes']:>8} {sr:>9} {row['mean_steps']:>10.1f} ± {row['sd_steps']:<5.1f}")
    short = ds.meta.get("collection", {}).get("short_of_requested") or {}
    for task, n in short.items():
        print(f"warning: {task}: only {n} successful demonstrations of {cfg.data.episodes} requested")
    return 0


def convert(args: Any) -> int:
    """`policytrim convert`: `policytrim.data.lerobot_dataset.convert_to_lerobot`."""
    from policytrim.data.lerobot_dataset import convert_to_lerobot, dataset_suite

    ds = convert_to_lerobot(args.data, args.out, overwrite=args.overwrite)
    print(
        f"wrote {ds.num_episodes} episodes ({ds.num_frames} frames, {len(ds.tasks)} tasks) of {args.data} "
        f"to {args.out} as a {dataset_suite(ds)} LeRobotDataset"
    )
    return 0


def pretrain(args: Any) -> int:
    """`policytrim pretrain`: behaviour cloning (`policytrim.train.bc.pretrain`)."""
    from policytrim.train.bc import pretrain as run_pretrain

    if not args.demos:
        raise InputError(
            "--data is required: the demonstration dataset directory (output of `policytrim collect`, or a "
            "local LeRobotDataset)"
        )
    cfg = run_config(args)
    out = Path(cfg.logging.out)
    metrics = run_pretrain(cfg, Path(args.demos), out, overwrite=bool(args.overwrite))
    print(
        f"baseline checkpoint: {out}  (train {metrics['train_seconds']:.0f} s, val loss "
        f"{metrics['initial_val_loss']:.3f} -> {metrics['final_val_loss']:.3f})"
    )
    ev = metrics.get("eval")
    if ev:
        overall = ev.get("overall", ev)
        parts = [
            f"{k}={overall[k]:.3g}" if isinstance(overall.get(k), (int, float)) else f"{k}={overall.get(k)}"
            for k in ("success_rate", "mean_steps", "calls_per_success", "window")
            if k in overall
        ]
        print("validation-state evaluation: " + (" ".join(parts) if parts else str(overall)))
    return 0


def train(args: Any) -> int:
    """`policytrim train`: PolicyTrim's stages (`policytrim.train.grpo.train`)."""
    from policytrim.train.distributed import launched_as_main
    from policytrim.train.grpo import train as run_train

    summary = run_train(run_config(args), args.stage, args.init, args.resume, args.overwrite)
    if not launched_as_main():
        return 0  # under torchrun, rank 0 reports
    print(f"run directory: {summary.run_dir}")
    for stage in summary.stages:
        best = summary.outcome(stage).best
        # mean steps and calls per success are None when validation had no success
        print(
            f"{stage}: best at epoch {best.epoch}: SR {best.success_rate:.3f}, steps {_fmt(best.mean_steps, '.1f')}, "
            f"calls {_fmt(best.calls_per_success, '.1f')} (validation)"
        )
    if summary.extend is not None:
        print(f"Stage 1 window choice: {summary.extend.window}")
    if summary.trim is not None:
        print(f"Stage 2 budget: {summary.trim.budget_evidence.budget} ({summary.trim.budget_evidence.source})")
    if summary.adapt is not None:
        windows = summary.adapt.adaptor_windows
        chosen = f"a window per call among {list(windows)}" if windows else "no adaptor beat the fixed window"
        print(f"adapt: call budget {summary.adapt.call_budget.budget} ({summary.adapt.call_budget.source}); {chosen}")
    print(f"trained policy: {Path(summary.run_dir) / 'final' / 'policy'} (window {summary.window})")
    return 0


def _wants_comparison(args: Any) -> bool:
    flags = (
        "baseline",
        "sweep",
        "temporal_ensembling",
        "obs_noise",
        "act_noise",
        "blur_sigma",
        "occlusion",
        "libero_pro",
    )
    return any(getattr(args, f) for f in flags) or len(args.modes) > 1


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def evaluate(args: Any) -> int:
    """`policytrim eval`: one policy (`policytrim.eval.evaluate.evaluate_to_dir`) or, with
    baselines, several modes or perturbations, a paired suite (`policytrim.eval.suite.evaluate_suite`);
    then report.md / report.html beside metrics.json."""
    from policytrim.eval.evaluate import evaluate_to_dir, format_table, load_eval_policy
    from policytrim.eval.report import write_report
    from policytrim.windows import WindowPlan

    cfg = run_config(args)
    out = Path(cfg.logging.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise InputError(f"{str(out / 'metrics.json')!r} already exists; pass --overwrite to replace it")
    policy = load_eval_policy(cfg, args.checkpoint)
    window = WindowPlan.for_policy(policy).evaluation(args.window, "--window")  # 0: the window it was trained for
    if not _wants_comparison(args):
        metrics = evaluate_to_dir(cfg, policy, window, out, str(args.checkpoint), adaptive=not args.window)
        report = write_report([out], out)
        print(format_table(metrics))
        print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and {report}")
        return 0
    from policytrim.eval.robustness import Perturbation
    from policytrim.eval.suite import evaluate_suite

    perturbations = [Perturbation(f"obs_noise_{v:g}", obs_noise=v) for v in args.obs_noise]
    perturbations += [Perturbation(f"act_noise_{v:g}", act_noise=v) for v in args.act_noise]
    perturbations += [Perturbation(f"blur_sigma_{v:g}", blur_sigma=v) for v in args.blur_sigma]
    perturbations += [Perturbation(f"occlusion_{v:g}", occlusion=v) for v in args.occlusion]
    perturbations += [Perturbation(f"libero_pro_{v}", libero=v) for v in dict.fromkeys(args.libero_pro)]
    baseline = load_eval_policy(cfg, args.baseline) if args.baseline else None
    modes = tuple(dict.fromkeys(args.modes)) or (cfg.eval.mode,)
    result = evaluate_suite(
        cfg,
        policy,
        window,
        out,
        str(args.checkpoint),
        baseline,
        args.sweep,
        args.temporal_ensembling,
        args.ensemble_m,
        modes,
        perturbations,
    )
    report = write_report([out], out)
    for mode in modes:
        comparison = result["modes"][mode]
        print(f"== {mode} mode ==")
        for name, m in comparison["policies"].items():
            o = m["overall"]
            vs = comparison["vs_baseline"].get(name, {}).get("overall")
            extra = (
                f"  SR drop {vs['success_rate_drop']:+.1f} [{vs['success_rate_drop_ci95'][0]:+.1f}, "
                f"{vs['success_rate_drop_ci95'][1]:+.1f}], calls speedup {_fmt(vs['calls_speedup'], '.2f')}"
                if vs
                else "  (baseline)"
            )
            print(
                f"{name:<22} k={str(o['window']):<3} SR {_fmt(o['success_rate'], '.3f')}  T "
                f"{_fmt(o['mean_steps'], '.1f')}  C {_fmt(o['calls_per_success'], '.1f')}{extra}"
            )
    for pname, r in result["robustness"].items():
        print(f"== {pname} ({r['perturbation']['description']}) ==")
        for name, m in r["policies"].items():
            o = m["overall"]
            print(
                f"{name:<22} SR {_fmt(o['success_rate'], '.3f')}  T {_fmt(o['mean_steps'], '.1f')}  C "
                f"{_fmt(o['calls_per_success'], '.1f')}"
            )
    print(f"wrote {out / 'comparison.json'}, {out / 'metrics.json'}, {out / 'report.md'} and {report}")
    return 0


def ablate(args: Any) -> int:
    """`policytrim ablate`: `policytrim.experiments.ablate.run_ablation` and its table."""
    from policytrim.eval.report import write_report
    from policytrim.experiments.ablate import NAMED, describe_variants, format_table, run_ablation

    cfg = run_config(args)
    if args.list_variants:
        print(describe_variants(cfg, args.variants or NAMED))
        return 0
    if not args.init:
        raise InputError("--init is required: the starting (baseline) checkpoint every variant starts from")
    print(describe_variants(cfg, args.variants))
    out = Path(cfg.logging.out)
    result = run_ablation(cfg, args.init, args.variants, out, overwrite=args.overwrite)
    report = write_report([out], out / "report")
    print(format_table(result))
    print(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'}; report: {report}")
    return 0


def report(args: Any) -> int:
    """`policytrim report RUN_DIR... [--out DIR]`: `policytrim.eval.report.write_report`."""
    from policytrim.eval.report import write_report

    dirs = [Path(d) for d in args.run_dirs]
    if not dirs:
        raise InputError("report: give at least one run directory")
    out = Path(args.out) if args.out else dirs[0] / "report"
    path = write_report(dirs, out, stacking=args.stacking or None)
    print(f"report: {out / 'report.md'}\nHTML:   {path}")
    return 0


def config(args: Any) -> int:
    """`policytrim config`: the resolved configuration as YAML (or JSON)."""

    data = to_dict(run_config(args))
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def serve(args: Any) -> int:
    """`policytrim serve`: `policytrim.serve.server.serve_policy` until interrupted; the API key is
    read from the environment variable named by ``--api-key-env`` (never from the command line)."""
    from policytrim.serve.server import ServeConfig, serve_policy

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise InputError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if not (isinstance(args.max_message_mb, (int, float)) and 0 < args.max_message_mb <= L.MAX_MESSAGE_BYTES / 2**20):
        raise InputError(
            f"--max-message-mb must be a number in (0, {L.MAX_MESSAGE_BYTES / 2**20:g}], got {args.max_message_mb!r}"
        )
    config = ServeConfig(
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_message_bytes=int(args.max_message_mb * 2**20),
        mode=args.mode,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )

    def ready(host: str, port: int) -> None:
        auth = " (API key required)" if api_key else ""
        print(
            f"policytrim serve: {args.policy} ({args.device}) listening on ws://{host}:{port}{auth}; "
            f"health check http://{host}:{port}/healthz",
            flush=True,
        )

    serve_policy(args.policy, config, ready)
    return 0
