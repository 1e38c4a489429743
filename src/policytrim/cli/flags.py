"""The flags of each `policytrim` command: one dataclass per command, whose fields and their
docstrings are the command's flags and ``--help`` lines (tyro builds the parser from them).
Commands that run something extend `RunConfig`, so the whole config tree is a flag
(``--stage1.lr 1e-4``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from policytrim.config import ConfigError, RunConfig

# Field docstrings are --help text and tyro keeps their line breaks: long ones stay on one line (noqa: E501).


@dataclass
class _Base(RunConfig):
    config: str = ""
    """YAML/JSON config file, laid on the preset (layers: --preset, then --config, then the other flags)."""
    preset: str = ""
    """Named preset from policytrim/configs/ (e.g. demo): the bottom layer; --config and flags go on top."""


@dataclass
class DemoCmd(_Base):
    """The embedded demo: collect -> pretrain -> Stage 1 -> Stage 2 -> evaluate -> report."""

    preset: str = "demo"
    """Named preset, the bottom layer ('demo' unless named; '' = plain defaults); --config and flags go on top."""
    overwrite: bool = False
    """Replace an existing output directory."""


@dataclass
class CollectCmd(_Base):
    """Run the scripted experts and write a demonstration dataset to --out."""

    overwrite: bool = False
    """Replace an existing dataset directory."""
    format: Literal["policytrim", "lerobot"] = "policytrim"
    """Dataset format: policytrim (safetensors) or lerobot (a LeRobotDataset, written by LeRobot; needs the lerobot extra)."""  # noqa: E501


@dataclass
class ConvertCmd:
    """Write a dataset collected in policytrim's format as a LeRobotDataset (run where LeRobot is installed)."""

    data: tyro.conf.Positional[str]
    """The policytrim dataset directory (output of `policytrim collect`)."""
    out: tyro.conf.Positional[str]
    """The LeRobotDataset directory to write (LIBERO data under the public LIBERO datasets' feature names)."""
    format: Literal["lerobot"] = "lerobot"
    """Format to write: lerobot (a LeRobotDataset, written by LeRobot's own writer; needs the lerobot extra)."""
    overwrite: bool = False
    """Replace an existing output directory."""


@dataclass
class PretrainCmd(_Base):
    """Behaviour cloning from a demonstration dataset to a baseline checkpoint in --out."""

    # not named `data`: that is RunConfig's demonstration-collection section (`data:` in every config
    # file), which a field of the same name would shadow; `--data DIR` stays the flag users type
    demos: Annotated[str, tyro.conf.arg(aliases=("--data",))] = ""
    """Demonstration dataset directory: output of `policytrim collect`, or a local LeRobotDataset."""
    overwrite: bool = False
    """Replace an existing output directory."""


@dataclass
class TrainCmd(_Base):
    """PolicyTrim post-training: Stage 1 (extend), Stage 2 (trim), both, the window adaptor (adapt) or all three."""

    stage: Literal["extend", "trim", "both", "adapt", "all"] = "both"
    """Which stage(s) to run: one, both (extend then trim) or all (extend, trim, then adapt)."""
    init: str = ""
    """Starting checkpoint directory (the baseline)."""
    resume: str = ""
    """Continue the run in this directory from its last complete checkpoint."""
    overwrite: bool = False
    """Replace an existing run directory."""


@dataclass
class EvalCmd(_Base):
    """Evaluate a checkpoint or the scripted experts on test states; writes metrics.json."""

    checkpoint: Annotated[str, tyro.conf.arg(aliases=("--policy",))] = "expert"
    """Checkpoint directory, or 'expert' for Meta-World's scripted experts."""
    window: int = 0
    """Execution window; 0 = the policy's default window."""
    overwrite: bool = False
    """Replace existing result files."""
    baseline: str = ""
    """Starting checkpoint to compare against on the same states (paired); its default window is the reference."""
    sweep: bool = False
    """Add the fixed-horizon sweep: the starting policy (--baseline, else --policy) at every window 5, 10, ... H (Table 11)."""  # noqa: E501
    temporal_ensembling: bool = False
    """Add ACT temporal ensembling of the starting policy (one call per step; a reference for calls)."""
    ensemble_m: float = 0.01
    """ACT's m in the temporal-ensembling weights exp(-m i) (a finite number >= 0)."""
    modes: tuple[Literal["sampled", "deterministic"], ...] = ()
    """Evaluation modes, e.g. sampled deterministic (default: --eval.mode only); the first is the headline."""
    obs_noise: tuple[float, ...] = ()
    """Robustness: std(s) of Gaussian noise on the state fed to the policy, one comparison each (Table 10)."""
    act_noise: tuple[float, ...] = ()
    """Robustness: std(s) of Gaussian noise added to executed actions (clipped), one comparison each."""
    blur_sigma: tuple[float, ...] = ()
    """Robustness (image policies): Gaussian blur std(s) in pixels."""
    occlusion: tuple[float, ...] = ()
    """Robustness (image policies): fraction(s) of the image hidden by a random grey rectangle, e.g. 0.5."""
    libero_pro: tuple[Literal["swap", "object", "lan", "task"], ...] = ()
    """Robustness (LIBERO): LIBERO-PRO's perturbed scenes, one comparison each: swap (objects' positions exchanged), object (other objects), lan (a paraphrased instruction), task (another goal)."""  # noqa: E501

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.ensemble_m
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
            raise ConfigError(f"--ensemble-m must be a finite number >= 0 (ACT's m in exp(-m i)), got {m!r}")


@dataclass
class AblateCmd(_Base):
    """Ablations and sensitivity sweeps from one starting checkpoint (Tables 5, 6, 9, 12): one table."""

    init: str = ""
    """Starting (baseline) checkpoint directory; every variant starts from it."""
    variants: tuple[str, ...] = ("none", "extend", "trim_no_stability", "trim", "full")
    """Variants to run (see --list): none extend trim_no_stability trim full fixed_k<K> group_size_<G> budget_<B> stability_<S>."""  # noqa: E501
    list_variants: bool = False
    """List the known variants with what each trains and an estimate of its cost, then exit."""
    overwrite: bool = False
    """Replace an existing ablation directory (otherwise finished variants are kept and reused)."""


@dataclass
class ReportCmd:
    """Write the Markdown + HTML report with plots for one or more run directories."""

    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """Run directories (outputs of demo, train, eval or ablate)."""
    out: str = ""
    """Report directory; default: the first run directory."""
    stacking: str = ""
    """A benchmarks/deploy_timing.py result (e.g. benchmarks/results/stacking.json): its seconds-per-success table beside the modelled wall-clock."""  # noqa: E501


@dataclass
class ConfigCmd(_Base):
    """Print the resolved configuration."""

    dump: bool = False
    """Print the resolved config as YAML (the default action)."""
    json: bool = False
    """Print JSON instead of YAML."""


@dataclass
class ServeCmd:
    """Serve a policy over openpi's websocket + msgpack protocol (an openpi-client robot can use it unchanged)."""

    policy: str
    """Checkpoint directory to serve (its trained window is advertised), or 'expert'."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default (0.0.0.0 serves every interface)."""
    port: int = 8000
    """TCP port (0 = any free port; the chosen one is printed)."""
    api_key_env: str = ""
    """Name of an environment variable holding an API key clients must send (none when empty)."""
    max_message_mb: float = 8.0
    """Largest request accepted, in MiB (at most 1024)."""
    mode: Literal["sampled", "deterministic"] = "sampled"
    """Sampling mode: sampled (as deployed) or deterministic (mean / zero noise)."""
    seed: int = 0
    """Seed of the per-connection random generators (sampled mode)."""
    threads: int = 0
    """torch threads for policy calls; 0 = torch's default (one per core); at most 1024."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the policy computes (cuda: the first visible GPU)."""


COMMANDS: dict[str, type] = {
    "demo": DemoCmd,
    "collect": CollectCmd,
    "convert": ConvertCmd,
    "pretrain": PretrainCmd,
    "train": TrainCmd,
    "eval": EvalCmd,
    "ablate": AblateCmd,
    "report": ReportCmd,
    "config": ConfigCmd,
    "serve": ServeCmd,
}
