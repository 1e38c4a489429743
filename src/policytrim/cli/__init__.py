"""The `policytrim` command line: the top floor. It parses flags into a config, calls library
functions a user could call from Python too (`policytrim.cli.commands`), prints and sets the exit
code. Nothing in the library imports it.

Every command that runs something accepts the whole `RunConfig` tree as flags
(``--stage1.lr 1e-4``), a base file (``--config FILE.yaml``) or a named preset (``--preset demo``),
with flags overriding the file. Bad input: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, NoReturn, Sequence

import tyro

from policytrim.cli import commands
from policytrim.config import RunConfig, from_dict, load_config, preset_path, to_dict
from policytrim.errors import InputError, one_line
from policytrim.preflight import check_preconditions


@dataclass
class _Base(RunConfig):
    config: str = ""
    """YAML/JSON file with the base config (flags override it)."""
    preset: str = ""
    """Named preset from policytrim/configs/ (e.g. demo); flags override it."""


@dataclass
class DemoCmd(_Base):
    """The embedded demo: collect -> pretrain -> Stage 1 -> Stage 2 -> evaluate -> report."""

    preset: str = "demo"
    """Named preset (the demo's default is 'demo')."""
    overwrite: bool = False
    """Replace an existing output directory."""


@dataclass
class CollectCmd(_Base):
    """Run the scripted experts and write a demonstration dataset to --out."""

    overwrite: bool = False
    """Replace an existing dataset directory."""
    format: Literal["policytrim", "lerobot"] = "policytrim"
    """Dataset format: policytrim (safetensors) or lerobot (a LeRobotDataset, written by LeRobot; needs the lerobot extra)."""


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
    """PolicyTrim post-training: Stage 1 (extend), Stage 2 (trim) or both."""

    stage: Literal["extend", "trim", "both"] = "both"
    """Which stage(s) to run."""
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
    """Add the fixed-horizon sweep: the starting policy (--baseline, else --policy) at every window 5, 10, ... H (Table 11)."""
    temporal_ensembling: bool = False
    """Add ACT temporal ensembling of the starting policy (one call per step; a reference for calls)."""
    ensemble_m: float = 0.01
    """ACT's m in the temporal-ensembling weights exp(-m i)."""
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


@dataclass
class AblateCmd(_Base):
    """Ablations and sensitivity sweeps from one starting checkpoint (Tables 5, 6, 9, 12): one table."""

    init: str = ""
    """Starting (baseline) checkpoint directory; every variant starts from it."""
    variants: tuple[str, ...] = ("none", "extend", "trim_no_stability", "trim", "full")
    """Variants to run (see --list): none extend trim_no_stability trim full fixed_k<K> group_size_<G> budget_<B> stability_<S>."""
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
    """A benchmarks/stacking.py result (e.g. benchmarks/results/stacking.json): its measured latency table beside the modelled wall-clock."""


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
    "pretrain": PretrainCmd,
    "train": TrainCmd,
    "eval": EvalCmd,
    "ablate": AblateCmd,
    "report": ReportCmd,
    "config": ConfigCmd,
    "serve": ServeCmd,
}


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _defaults(cls: type, argv: list[str]) -> object | None:
    """Base instance from --config / --preset, so that flags override the file."""
    if not issubclass(cls, RunConfig):
        return None
    config_file = _flag_value(argv, "--config")
    preset = _flag_value(argv, "--preset")
    if preset is None:
        preset = next((f.default for f in dataclasses.fields(cls) if f.name == "preset"), "")
    if config_file:
        base = to_dict(load_config(config_file))
    elif preset:
        base = to_dict(load_config(preset_path(preset)))
    else:
        return None
    return from_dict(cls, base)


def _one_line(captured: str) -> str:
    """tyro's boxed error message as one line: the box's first paragraph, unwrapped."""
    text: list[str] = []
    for line in captured.splitlines()[1:]:  # the first line is the box's title
        content = line.strip().strip("│┃|").strip()
        if not content or set(content) <= set("─━╰╯-+="):  # rich draws ASCII boxes without UTF-8
            if text:
                break
            continue
        text.append(content)
    message = " ".join(text) if text else " ".join(captured.split())
    return re.sub(r"^Error parsing (?!-)[\w.-]+: ", "", message)


def _sequence_flags(cls: type, prefix: str = "") -> set[str]:
    """The flags of every tuple-typed field of a command (dotted and dashed spellings, aliases)."""
    flags: set[str] = set()
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        path = prefix + name
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        if dataclasses.is_dataclass(base):
            flags |= _sequence_flags(base, f"{path}.")
        elif typing.get_origin(base) is tuple:
            aliases = [a for m in typing.get_args(hint)[1:] for a in (getattr(m, "aliases", None) or ())]
            flags |= {f"--{path}", f"--{path.replace('_', '-')}", *aliases}
    return flags


def _check_no_empty_sequences(cls: type, argv: list[str]) -> None:
    """tyro reads a list flag given without values (``--stage1.windows``) as an empty list, which
    for some fields silently means "the default": refuse it instead."""
    flags = _sequence_flags(cls)
    for i, arg in enumerate(argv):
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            raise InputError(f"{arg} was given without values: give at least one value, or leave the flag out for the default")


def _parse(cls: type, argv: list[str], prog: str) -> object:
    buf = io.StringIO()
    try:
        _check_no_empty_sequences(cls, argv)
        default = _defaults(cls, argv)
        with contextlib.redirect_stderr(buf):
            return tyro.cli(cls, args=argv, default=default, prog=prog, description=cls.__doc__)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _fail(f"{prog}: {_one_line(buf.getvalue())}")
        sys.stderr.write(buf.getvalue())
        raise


def _launched_by_torchrun() -> bool:
    """``WORLD_SIZE`` > 1 (read here so that other commands never import torch.distributed)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def _usage() -> str:
    lines = ["usage: policytrim <command> [flags]   (policytrim <command> --help for its flags)", "", "commands:"]
    for name, cls in COMMANDS.items():
        lines.append(f"  {name:<9} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


# What each command runs (`policytrim.cli.commands`): parse -> config -> library call -> print.
HANDLERS: dict[str, Callable[[Any], int]] = {
    "demo": commands.demo,
    "collect": commands.collect,
    "pretrain": commands.pretrain,
    "train": commands.train,
    "eval": commands.evaluate,
    "ablate": commands.ablate,
    "report": commands.report,
    "config": commands.config,
    "serve": commands.serve,
}


def _check_common(args: object) -> None:
    """Checks every command that runs something shares, made before anything is written."""
    if isinstance(args, RunConfig):  # a resumed run writes into its own directory
        check_preconditions(args, getattr(args, "resume", "") or args.logging.out)


def dispatch(name: str, args: object) -> int:
    """Run one parsed command."""
    if name != "config":
        _check_common(args)
    return int(HANDLERS[name](args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    as_program = argv is None  # the console script / python -m, not a call from Python code
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _fail(f"unknown command {name!r}; commands are: {', '.join(COMMANDS)}")
    try:
        args = _parse(COMMANDS[name], rest, prog=f"policytrim {name}")
        code = dispatch(name, args)
    except InputError as exc:
        _fail(str(exc))
    except PermissionError as exc:  # what the up-front checks cannot see (e.g. sysfs refuses root)
        _fail(f"permission denied: {exc.filename!r} ({exc.strerror})")
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a training run says how to resume)
        _fail(str(exc) or "interrupted", code=130)
    if code == 0 and as_program and name == "train" and _launched_by_torchrun():
        from policytrim.train.distributed import exit_after_success

        exit_after_success(code)  # see there: a finished rank could abort in the interpreter's teardown
    return code
