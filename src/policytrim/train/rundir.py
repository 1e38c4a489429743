"""A training run's directory::

    RUN/
      config.yaml          the resolved RunConfig (what --resume reads back)
      run.json             stage(s), starting checkpoint, version, status, config.yaml's SHA-256
      metrics.jsonl        one record per epoch and per validation (always written)
      tensorboard/         when tensorboard is installed
      extend/ trim/        per stage: reference/ (policy entering the stage), best/, epoch_NNNNNN/
                           (resumable checkpoints), LATEST, result.json when the stage completed
      final/policy/        the trained policy (the last stage's best checkpoint)

Resuming trusts nothing it cannot check: ``config.yaml`` must hash to the SHA-256 recorded in
``run.json`` when the run was created (an edited, truncated or replaced file is refused), and it must
hold every key (no default is ever filled in for a resumed run: a config cut at a line boundary
would otherwise run a different experiment). Runs made before the hash was recorded are accepted
when their config.yaml is complete. ``status`` is running, complete, interrupted (Ctrl-C) or failed (the disk filled
up; ``failure`` says so); every one but complete continues with --resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from policytrim import __version__
from policytrim.config import AdaptConfig, RunConfig, from_dict, parse_config_text, to_dict
from policytrim.errors import DiskFull, InputError
from policytrim.io import atomic_write_bytes, atomic_write_json, check_output_dir, read_json, read_jsonl, to_json

# `policytrim train --stage`: one stage, extend then trim (both), or all three (all)
STAGE_CHOICES = ("extend", "trim", "both", "adapt", "all")
STAGES_OF = {"both": ("extend", "trim"), "all": ("extend", "trim", "adapt")}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says where the run is and how to resume it."""


# Settings added after runs were made with versions that lacked them, and the value those runs ran
# with: a run directory missing one opens with it (every other missing key is an incomplete file).
ADDED_LATER: dict[tuple[str, str], object] = {
    ("adapt", "policy_lr"): 0.0,  # one rate for adaptor and policy
    ("env", "libero_reset"): "fast",  # hard resets then, which the fast reset equals bit for bit
    ("rollout", "delay"): 0,  # chunks never stale
    ("adapt", "scale_advantages"): True,  # eq 3 as it was
    ("adapt", "initial_window"): 0,  # the adaptor started on the policy's trained window
    ("adapt", "common_noise"): False,  # every member drew its own policy noise
    ("adapt", "length_normalized"): True,  # eq 4's 1/C_i
    ("adapt", "loss_rule"): "significant",  # Stage 2's best-checkpoint rule
    ("adapt", "credit"): "episode",  # one advantage for every call of an episode
    ("adapt", "branch_calls"): 0,  # branch calls over the typical episode
    ("data", "labels"): "executed",  # the executed (jittered) action recorded
    ("policy", "min_std"): 0.0,  # no floor on the Gaussian head's std
    ("env", "libero_perturbation"): "none",  # the original suites
    ("stage1", "fresh_choice"): False,  # the window choice reused the best checkpoint's validation
}


class RunDir:
    def __init__(self, path: Path, cfg: RunConfig, meta: dict[str, Any]):
        self.path = path
        self.cfg = cfg
        self.meta = meta

    @classmethod
    def create(cls, path: str | Path, cfg: RunConfig, meta: dict[str, Any], overwrite: bool = False) -> RunDir:
        path = Path(path)
        check_output_dir(path, "--logging.out")
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                half_made = cls.half_made(path)
                if half_made:
                    raise InputError(half_made)
                raise InputError(
                    f"run directory {path} already exists; pass --resume {path} to continue it or "
                    "--overwrite to replace it"
                )
            shutil.rmtree(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:  # what `check_output_dir` cannot see (e.g. sysfs, for root)
            raise InputError(f"cannot create run directory {str(path)!r}: permission denied ({exc.strerror})") from None
        run = cls(path, cfg, {"policytrim_version": __version__, "status": "running", **meta})
        run.replace_config(cfg)
        return run

    def replace_config(self, cfg: RunConfig, **meta: Any) -> None:
        """Write ``cfg`` as config.yaml and its SHA-256 (and ``meta``) into run.json, the pair
        `open` verifies. Besides `create`: a benchmark continuing a finished run to more epochs."""
        config = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
        atomic_write_bytes(self.path / "config.yaml", config)
        self.cfg = cfg
        self.meta.update(meta, config_sha256=hashlib.sha256(config).hexdigest())
        atomic_write_json(self.path / "run.json", self.meta)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run, for --resume: its saved config, verified and validated again."""
        path = Path(path)
        where = f"--resume {path}"
        half_made = cls.half_made(path)
        if half_made:
            raise InputError(f"{where}: {half_made}")
        if not (path / "config.yaml").is_file() or not (path / "run.json").is_file():
            raise InputError(f"{where}: not a policytrim run directory (config.yaml and run.json are missing)")
        meta = read_json(path / "run.json", name=f"{where}: run.json", kind=None)
        if not (isinstance(meta, dict) and meta.get("stage") in STAGE_CHOICES and isinstance(meta.get("init"), str)):
            raise InputError(f"{where}: run.json does not describe a training run (needs stage and init)")
        raw = (path / "config.yaml").read_bytes()
        expected = meta.get("config_sha256")
        if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
            raise InputError(
                f"{where}: config.yaml is not the one this run was created with (its SHA-256 differs from run.json's "
                "config_sha256): it was edited, truncated or replaced; restore it, or start a new run with --config"
            )
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise InputError(f"{where}: config.yaml is not text") from None
        data = parse_config_text(text, f"{where}: config.yaml")
        if isinstance(data, dict) and "adapt" not in data:  # a run made before the adapt stage existed
            data["adapt"] = to_dict(AdaptConfig())
        for (section, key), value in ADDED_LATER.items():  # a run made before the setting existed
            if isinstance(data, dict) and isinstance(data.get(section), dict):
                data[section].setdefault(key, value)
        try:
            cfg = from_dict(RunConfig, data, complete=True)
        except InputError as exc:
            raise InputError(f"{where}: config.yaml: {exc}") from None
        return cls(path, cfg, meta)

    @staticmethod
    def half_made(path: Path) -> str | None:
        """What to do with a run directory holding one of config.yaml / run.json but not the other
        (its creation was cut short: nothing ran, there is nothing to resume), or None."""
        config, meta = (path / "config.yaml").is_file(), (path / "run.json").is_file()
        if config == meta:
            return None
        has, lacks = ("config.yaml", "run.json") if config else ("run.json", "config.yaml")
        return (
            f"{path} holds {has} but no {lacks}: a run whose creation was cut short, with nothing to resume; "
            f"start it afresh with --out {path} --overwrite (or delete the directory)"
        )

    def interrupted(self) -> RunInterrupted:
        """Mark the run "interrupted" (Ctrl-C) in run.json; the error to raise says how to resume."""
        self.set_status("interrupted")
        return RunInterrupted(
            f"interrupted: the run in {self.path} keeps its last complete checkpoint; continue it with "
            f"`policytrim train --resume {self.path}`"
        )

    def out_of_space(self, exc: BaseException) -> DiskFull:
        """Mark the run "failed" for lack of disk space in run.json (resumable: every checkpoint it
        shows is complete); the error to raise says how to go on. ``exc``: the write that failed."""
        marked = ""
        try:
            self.set_status("failed", failure="no space left on device")
        except OSError:
            # the disk is still full, so the atomic write's new file found no room: rewrite run.json
            # in place instead, within the block it already has (a few hundred bytes; not atomic, but
            # a kill in this one small write is the only way to tear it)
            try:
                with open(self.path / "run.json", "r+b") as f:
                    f.write(to_json(self.meta).encode())
                    f.truncate()
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                marked = " (run.json could not be updated either)"
        where = f" writing {exc.filename!r}" if isinstance(exc, OSError) and exc.filename else ""
        return DiskFull(
            f"no space left on device{where}: the run in {self.path} keeps its last complete checkpoint{marked}; "
            f"free some space, then continue it with `policytrim train --resume {self.path}`"
        )

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def global_epoch(self, stage: str, epoch: int) -> int:
        """Epoch counted across stages (x axis of combined curves)."""
        stages = self.meta.get("stages", [])
        before = stages[: stages.index(stage)] if stage in stages else []
        epochs = {"extend": self.cfg.stage1.epochs, "trim": self.cfg.stage2.epochs}
        return sum(epochs.get(s, 0) for s in before) + epoch

    def truncate_metrics(self, stage: str, epoch: int) -> None:
        """Drop metric records after ``epoch`` of ``stage`` (and of later stages), so a resumed run
        logs each epoch exactly once."""
        path = self.path / "metrics.jsonl"
        records = read_jsonl(path)
        stages = self.meta.get("stages", [stage])
        later = set(stages[stages.index(stage) + 1 :]) if stage in stages else set()

        def kept(record: dict[str, Any]) -> bool:
            if record.get("stage") in later:
                return False
            if record.get("stage") == stage:  # epoch 0 (the starting evaluation) is redone when epoch == 0
                return epoch > 0 and record.get("epoch", 0) <= epoch
            return True

        text = "".join(to_json(r, indent=None) + "\n" for r in records if kept(r))
        # also rewrites a torn last line (a kill -9 mid-append), which later appends would corrupt
        if path.exists() and path.read_text() != text:
            atomic_write_bytes(path, text.encode())

    def remove_temporaries(self) -> None:
        """Delete what a killed run left half-written: hidden ``.NAME.*.tmp`` / ``.NAME.old-PID``
        siblings of atomic writes (`policytrim.io`). Only for a run no other process is writing."""
        for folder in [self.path, *(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            for child in folder.iterdir():
                if child.name.startswith(".") and (child.name.endswith(".tmp") or ".old-" in child.name):
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def write_json(self, relative: str, data: Any) -> None:
        atomic_write_json(self.path / relative, data)

    def read_json(self, relative: str) -> Any | None:
        """A JSON file of the run (None when absent; unreadable: InputError naming it)."""
        return read_json(self.path / relative, missing_ok=True, kind=None)

    def set_status(self, status: str, **extra: Any) -> None:
        self.meta.pop("failure", None)  # a resumed run is no longer failed
        self.meta.update(status=status, **extra)
        atomic_write_json(self.path / "run.json", self.meta)
