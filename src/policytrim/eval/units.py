"""The unit of every number in the result files (summary.json, comparison.json, ablation.json).

Kept with evaluation, which writes most of these numbers (`policytrim.eval.suite.write_suite`), so
that the experiments above it (`policytrim.experiments.demo`, `policytrim.experiments.ablate`) and
evaluation read one table and nothing in evaluation imports an experiment.
"""

from __future__ import annotations

# The unit of every number in summary.json, comparison.json and ablation.json (their config and
# machine records aside, documented in policytrim.config and policytrim.machine), by field name (the
# same name has the same unit at every depth: overall, per task, sweep entries). A field whose name
# is not listed takes the unit of its parent (``timings.collect_s`` is in ``timings``' unit) and a
# sweep entry's ``vs_baseline_<field>`` that of ``<field>``. Written into those files as "units".
SUMMARY_UNITS: dict[str, str] = {
    # metric blocks (policytrim.eval.metrics, policytrim.eval.evaluate)
    "success_rate": "fraction of episodes (0 to 1)",
    "success_ci95": "fraction of episodes (0 to 1), 95% Wilson interval [lo, hi]",
    "mean_steps": "environment steps per successful episode (mean)",
    "calls_per_success": "policy calls per successful episode (mean)",
    "wall_clock_s": "seconds per successful episode (mean of calls x latency + steps x control period); at the top of "
    "benchmarks/results/demo.json: the whole run",
    "window": "environment steps executed per policy call (k); a list when several were used",
    "horizon": "actions per predicted chunk (H)",
    "episodes": "episodes",
    "seed": "random seed (integer)",
    "state_seed": "seed of the split's initial states (integer)",
    "latency_ms": "milliseconds per policy call used in wall_clock_s",
    "measured_latency_ms": "milliseconds per policy call, measured",
    "control_period_s": "seconds per environment step, per task",
    "dropped_groups": "groups of episodes dropped (simulator faults)",
    "version": "file format version (integer)",
    # paired comparisons with the baseline (policytrim.eval.compare.against_baseline)
    "success_rate_drop": "percentage points (baseline - policy)",
    "success_rate_drop_ci95": "percentage points (baseline - policy), paired 95% interval [lo, hi]",
    "paired_episodes": "episodes paired on the same test state",
    "calls_speedup": "ratio (baseline's mean calls per successful episode / the policy's)",
    "speedup_paper": "ratio ((T_base / k_base) / (T / k), the paper's formula)",
    "steps_reduction": "fraction of the baseline's mean steps (1 - T / T_base)",
    # one recorded episode (filmstrips)
    "index": "test-state index (integer)",
    "steps": "environment steps of the episode",
    "calls": "policy calls of the episode",
    # perturbed conditions (policytrim.eval.robustness.Perturbation)
    "obs_noise": "standard deviation of Gaussian noise on the state observation, in its own units",
    "act_noise": "standard deviation of Gaussian noise on every executed action, in its own units",
    "blur_sigma": "pixels (standard deviation of the Gaussian blur)",
    "occlusion": "fraction of the image (0 to 1)",
    # the run
    "episodes_per_task": "episodes (initial states) per task: test states, validation states in a stage's evidence",
    "eval_seed": "random seed of the evaluation (integer)",
    "windows": "environment steps executed per policy call (k), per contender",
    "budget": "environment steps (Stage 2's step budget)",
    "tolerance_points": "percentage points",
    "reference_success_rate": "fraction of episodes (0 to 1): the SR Stage 1's window choice held windows against",
    "clean_expert_steps": "environment steps per successful episode (mean), per task",
    "timings": "seconds per phase",
    "timings_s": "seconds per phase",
    "train_seconds": "seconds",
    "peak_rss_mb": "MiB (resident memory of this process and its env workers)",
    "peak_rss_mb_per_phase": "MiB per phase",
    "demonstrations": "the data section of the config (units in policytrim.config.DataConfig)",
    "collected": "demonstration episodes kept per task (what behaviour cloning trained on)",
    "overrides": "config values of an ablation variant by dotted key (units in policytrim.config)",
}
