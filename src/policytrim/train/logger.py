"""Metric sinks: JSONL always; TensorBoard and Weights & Biases when installed and asked for.

TensorBoard asked for (``logging.tensorboard``, on by default) but not installed is no error: the
run logs JSONL only and says so once per process on stderr, with how to install it."""

from __future__ import annotations

import functools
import importlib.util
import logging
import numbers
from pathlib import Path
from typing import Any

from policytrim.io import append_jsonl
from policytrim.preflight import check_backends

# Wall-clock seconds in a metrics record (rollout and its parts, update, epoch, validation): the only
# fields two runs of the same config and seed may differ in (determinism and resume tests drop them).
TIMING_KEYS = frozenset(
    {"rollout_s", "rollout_policy_s", "rollout_reset_s", "rollout_env_s", "update_s", "epoch_s", "val_s"}
)

log = logging.getLogger(__name__)


@functools.cache
def tensorboard_missing_notice() -> None:
    """The one warning (once per process) that TensorBoard scalars are asked for but not written."""
    log.warning(
        "logging.tensorboard is on but TensorBoard is not installed: metrics go to metrics.jsonl only (pip "
        "install 'policytrim[tensorboard]', or --logging.no-tensorboard)"
    )


class MetricsLogger:
    """Writes one record per call to ``metrics.jsonl`` and mirrors numeric fields to TB / W&B."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb_mode: str = "off",
        config: dict | None = None,
        resume: bool = False,
    ):
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            tensorboard_missing_notice()
        elif tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb_mode != "off":
            check_backends(wandb_mode)
            import wandb

            self._wandb = wandb.init(
                project="policytrim",
                dir=str(run_dir),
                mode=wandb_mode,
                config=config or {},
                resume="allow" if resume else None,
                id=run_dir.name if resume else None,
            )

    @property
    def backends(self) -> list[str]:
        return ["jsonl"] + (["tensorboard"] if self._tb else []) + (["wandb"] if self._wandb else [])

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        step = int(record.get("global_epoch", record.get("epoch", 0)))
        numeric = {k: float(v) for k, v in record.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        prefix = str(record.get("stage", "run"))
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
