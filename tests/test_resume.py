"""Crash safety of `policytrim train` (issue 7): a real training subprocess is killed with SIGKILL
at several points and `policytrim train --resume RUN_DIR` must finish with exactly the metrics,
decisions and weights of an uninterrupted run of the same config and seed (CPU).

Kill points. Precise moments use the test hook of `policytrim.io` (``POLICYTRIM_TEST_KILL_AT=POINT:N``:
the process SIGKILLs itself the N-th time it reaches POINT -- indistinguishable from a ``kill -9``
arriving then): half-way through writing a checkpoint, in the middle of an update, between a
complete checkpoint and its LATEST pointer, with half a metrics line written, and between the two
renames that replace ``best/``. The kills are chained on one run directory (each resume is killed
at the next point), so the chain costs about one training run plus process start-ups; its result
must equal the uninterrupted run's bit for bit.

One more kill is an ordinary external SIGKILL during a later epoch's rollouts, with two env worker
processes, which must not outlive the trainer. That run is compared with the uninterrupted one
up to float32 rounding (see the test for why).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_config
from policytrim.config import PolicyConfig, to_dict
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.io import KILL_AT_ENV, append_jsonl, read_jsonl
from policytrim.policies import load_policy
from policytrim.policies.tinyvla import TinyVLA
from policytrim.train.checkpoint import latest_checkpoint, restore_best, save_checkpoint
from policytrim.train.grpo import save_policy_dir
from policytrim.train.logger import TIMING_KEYS
from policytrim.train.rundir import RunDir

STAGE = dict(epochs=2, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=2)
# One torch thread in every process, so that results never depend on a thread pool's reductions.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ENV.pop(KILL_AT_ENV, None)


def write_config(path: Path, **rollout) -> Path:
    cfg = tiny_config(stage1=STAGE, stage2=STAGE, rollout=rollout)
    cfg.eval.latency_ms = 1.0  # a given latency: the wall-clock estimate in val_* is then exact
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "policytrim.cli", "train", *args]


def canonical(value):
    """JSON data with NaN made comparable (NaN != NaN) and timing fields dropped."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def weights(policy_dir: Path) -> dict[str, list]:
    """Tensor values (and, separately in `outcome`, the file's SHA-256: identical tensors are
    written as identical bytes since issue 12)."""
    return {k: v.tolist() for k, v in sorted(load_file(str(policy_dir / "model.safetensors")).items())}


def weights_sha256(policy_dir: Path) -> str:
    return json.loads((policy_dir / "config.json").read_text())["weights_sha256"]


def outcome(run: Path, stages=("extend", "trim")) -> dict:
    """Everything a run decided and produced, for comparing two runs."""
    out = {"metrics": canonical([r for r in read_jsonl(run / "metrics.jsonl") if r["stage"] in stages])}
    for stage in stages:
        out[f"{stage}/result"] = canonical(json.loads((run / stage / "result.json").read_text()))
        out[f"{stage}/best"] = weights(run / stage / "best" / "policy")
        out[f"{stage}/best/weights_sha256"] = weights_sha256(run / stage / "best" / "policy")
    if "trim" in stages:
        out["final"] = weights(run / "final" / "policy")
        out["final/weights_sha256"] = weights_sha256(run / "final" / "policy")
        summary = json.loads((run / "summary.json").read_text())
        summary.pop("run_dir")
        out["summary"] = canonical(summary)
    return out


def assert_consistent(run: Path) -> None:
    """What a resume may read is whole: every visible checkpoint is complete and loads (hash
    checked, finite), LATEST names a complete one, the metrics log parses."""
    for stage in ("extend", "trim"):
        folder = run / stage
        if not folder.is_dir():
            continue
        for checkpoint in folder.glob("epoch_*"):
            assert (checkpoint / "trainer_state.json").is_file(), f"half-written checkpoint visible: {checkpoint}"
            load_policy(checkpoint / "policy")
        if (folder / "LATEST").is_file():
            assert (folder / (folder / "LATEST").read_text().strip() / "trainer_state.json").is_file()
    read_jsonl(run / "metrics.jsonl")


def hidden_leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*"))


@pytest.fixture(scope="module")
def reference(tiny_baseline, tmp_path_factory):
    """An uninterrupted run, started in the background (the tests wait for it when they need it)."""
    root = tmp_path_factory.mktemp("reliability_reference")
    config = write_config(root / "tiny.yaml", num_workers=0)
    run = root / "run"
    proc = subprocess.Popen(
        train_cmd("--config", str(config), "--init", str(tiny_baseline), "--out", str(run)),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait() -> Path:
        if proc.returncode is None:
            err = proc.communicate(timeout=600)[1]
            assert proc.returncode == 0, err[-3000:]
        assert proc.returncode == 0
        return run

    yield {"config": config, "wait": wait}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def killed_at(point: str, args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_cmd(*args), env={**ENV, KILL_AT_ENV: point}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, (
        f"not killed at {point}: rc={result.returncode}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.mark.slow
def test_kill_9_at_every_kind_of_moment_then_resume_equals_uninterrupted(reference, tiny_baseline, tmp_path):
    run = tmp_path / "run"
    resume = ["--resume", str(run)]
    extend, trim = run / "extend", run / "trim"

    # 1. half-way through writing Stage 1's first checkpoint: only a hidden temporary exists
    killed_at(
        "checkpoint.partial:1", ["--config", str(reference["config"]), "--init", str(tiny_baseline), "--out", str(run)]
    )
    assert not list(extend.glob("epoch_*")) and not (extend / "LATEST").exists()
    assert any(p.name.startswith(".epoch_000001.") for p in extend.iterdir())
    assert_consistent(run)

    # 2. resumed (no checkpoint: the stage restarts), killed while best/ is being replaced: the old
    #    best/ has been moved aside, the new one is not in place yet
    killed_at("directory.swap:1", resume)
    assert not (extend / "best").exists()
    assert_consistent(run)

    # 3. killed in the middle of epoch 2's update (after its first optimiser step)
    killed_at("update.step:3", resume)
    assert (extend / "LATEST").read_text() == "epoch_000001"
    assert [(r["stage"], r["epoch"]) for r in read_jsonl(run / "metrics.jsonl")] == [("extend", 0), ("extend", 1)]
    assert_consistent(run)

    # 4. Stage 1 finishes; killed after Stage 2's first checkpoint is in place but before LATEST
    killed_at("checkpoint.pointer:2", resume)
    assert (
        (run / "extend" / "result.json").is_file()
        and (trim / "epoch_000001").is_dir()
        and not (trim / "LATEST").exists()
    )
    assert_consistent(run)

    # 5. killed with half of Stage 2's epoch-2 metrics line written
    killed_at("metrics.torn:1", resume)
    assert not (run / "metrics.jsonl").read_text().endswith("\n"), "the hook should leave a torn line"
    assert_consistent(run)

    # 6. killed while resuming restores Stage 2's best/ from its checkpoint
    killed_at("directory.swap:1", resume)
    assert not (trim / "best").exists()
    assert_consistent(run)

    # 7. the last resume completes the run
    result = subprocess.run(train_cmd(*resume), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [
        (s, e) for s in ("extend", "trim") for e in range(3)
    ]  # no duplicates, no gaps
    assert (run / "metrics.jsonl").read_text().count("\n") == len(records)  # no torn fragment left inside
    assert hidden_leftovers(run) == []

    expected = outcome(reference["wait"]())
    got = outcome(run)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], f"resumed run differs from the uninterrupted one in {key}"


def _children(pid: int) -> set[int]:
    """Descendant process ids of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not reaped it


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_during_rollouts_with_env_workers_leaves_no_orphans_and_resumes_exactly(
    reference, tiny_baseline, tmp_path
):
    run = tmp_path / "run"
    config = write_config(tmp_path / "workers.yaml", num_workers=2)
    proc = subprocess.Popen(
        train_cmd("--config", str(config), "--init", str(tiny_baseline), "--out", str(run), "--stage", "extend"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(
            lambda: (run / "extend" / "epoch_000001" / "trainer_state.json").is_file() or proc.poll() is not None,
            300,
            "the first checkpoint",
        )
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(
            0.05
        )  # now inside epoch 2 (its rollouts on the workers take ~0.3 s since the initial-state draws got cheaper)
        workers = _children(proc.pid)
        logged_records = read_jsonl(run / "metrics.jsonl")
        logged = [(r["stage"], r["epoch"]) for r in logged_records]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(workers) >= 2, "expected two env worker processes"
    assert ("extend", 2) not in logged, "the kill should land inside epoch 2"
    _wait_for(lambda: not any(_alive(p) for p in workers), 30, "env workers to exit after the trainer died")
    assert_consistent(run)

    result = subprocess.run(train_cmd("--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("extend", e) for e in range(3)]
    assert canonical(records[:2]) == canonical([r for r in logged_records if r["epoch"] < 2])  # kept as written
    # Against the uninterrupted run, which stepped its envs in-process: the same outcomes, and the
    # same losses up to float32 rounding. (With worker processes the pipelined engine batches the
    # policy calls of whichever lanes answer first, and a batch's size changes the last bits of a
    # CPU matmul: ~1e-6 relative in recorded log-probs. Bit-exact resume needs equal batching,
    # as in the chained test above.)
    got, expected = outcome(run, ("extend",)), outcome(reference["wait"](), ("extend",))
    assert got["extend/best"] == expected["extend/best"]
    assert got["extend/result"]["window_choice"] == expected["extend/result"]["window_choice"]
    for mine, theirs in zip(got["metrics"], expected["metrics"], strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert mine[key] == (pytest.approx(value, rel=1e-3, abs=1e-5) if isinstance(value, float) else value), (
                mine["epoch"],
                key,
            )


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_marks_the_run_interrupted_and_resumes(tiny_baseline, tmp_path):
    """A real SIGINT to the whole process group, as a terminal's Ctrl-C sends it (env workers get it
    too), during Stage 1's second epoch with two env worker processes."""
    run = tmp_path / "run"
    config = write_config(tmp_path / "workers.yaml", num_workers=2)
    # Enough epochs that the run cannot finish in the ~0.35 s between the checkpoint and the signal
    # (a tiny epoch with its validation takes ~0.5 s on a quiet machine, and seven are left then);
    # few enough that the resume, which runs all of them, stays short.
    epochs = 8
    proc = subprocess.Popen(
        train_cmd(
            "--config",
            str(config),
            "--init",
            str(tiny_baseline),
            "--out",
            str(run),
            "--stage",
            "extend",
            "--stage1.epochs",
            str(epochs),
        ),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a test runner started in the background (`cmd &`) ignores SIGINT, and
        # a child inherits that, so Python would never raise KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(
            lambda: (run / "extend" / "epoch_000001" / "trainer_state.json").is_file() or proc.poll() is not None,
            300,
            "the first checkpoint",
        )
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.3)  # inside epoch 2
        workers = _children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(workers) >= 2, "expected two env worker processes"
    assert proc.returncode == 130, err[-3000:]
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and "Error" not in err, (
        err
    )  # no KeyboardInterrupt / BrokenPipeError
    assert err.startswith(f"error: interrupted: the run in {run} ") and f"policytrim train --resume {run}" in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    _wait_for(lambda: not any(_alive(p) for p in workers), 30, "env workers to exit")
    assert_consistent(run)

    result = subprocess.run(train_cmd("--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert [(r["stage"], r["epoch"]) for r in read_jsonl(run / "metrics.jsonl")] == [
        ("extend", e) for e in range(epochs + 1)
    ]


# ---------------------------------------------------------------------------------------------
# the pieces, at unit size (no simulator)


def _tiny_policy(seed: int) -> TinyVLA:
    torch.manual_seed(seed)
    return TinyVLA.from_config(
        PolicyConfig(chunk_size=4, default_window=2, hidden_dim=16, num_layers=1),
        39,
        4,
        [INSTRUCTIONS["drawer-close-v3"]],
    )


def test_resume_drops_a_torn_metrics_line_so_later_appends_stay_readable(tmp_path):
    cfg = tiny_config()
    run = RunDir.create(tmp_path / "run", cfg, {"stage": "extend", "stages": ["extend"], "init": "x"})
    for epoch in range(3):
        append_jsonl(run.path / "metrics.jsonl", {"stage": "extend", "epoch": epoch})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "extend", "epo')  # kill -9 mid-append
    run.truncate_metrics("extend", 2)  # resuming from the epoch-2 checkpoint
    append_jsonl(run.path / "metrics.jsonl", {"stage": "extend", "epoch": 3})
    assert [r["epoch"] for r in read_jsonl(run.path / "metrics.jsonl")] == [0, 1, 2, 3]


def test_resume_restores_the_best_policy_its_checkpoint_recorded(tmp_path):
    stage_dir = tmp_path / "extend"
    best_then, later = _tiny_policy(0), _tiny_policy(1)
    save_policy_dir(best_then, stage_dir / "best")
    optimizer = torch.optim.Adam(later.parameters())
    checkpoint = save_checkpoint(
        stage_dir, 3, later, optimizer, {"stage": "extend", "best": {"epoch": 2}}, best_dir=stage_dir / "best"
    )
    save_policy_dir(later, stage_dir / "best")  # improved after the checkpoint, then the run died
    assert restore_best(checkpoint, stage_dir / "best")
    restored = load_policy(stage_dir / "best" / "policy")
    assert all(
        torch.equal(a, b) for a, b in zip(restored.state_dict().values(), best_then.state_dict().values(), strict=True)
    )


def test_only_complete_checkpoints_are_found_and_pruning_never_leaves_a_lookalike(tmp_path):
    stage_dir = tmp_path / "run" / "extend"
    policy = _tiny_policy(0)
    optimizer = torch.optim.Adam(policy.parameters())
    for epoch in (1, 2, 3):
        save_checkpoint(stage_dir, epoch, policy, optimizer, {"stage": "extend"})
    assert sorted(p.name for p in stage_dir.iterdir()) == ["LATEST", "epoch_000002", "epoch_000003"]
    (stage_dir / ".epoch_000004.abc.tmp").mkdir()  # a checkpoint being written when the run died
    (stage_dir / "LATEST").unlink()  # and the pointer lost: scanning finds the newest complete one
    assert latest_checkpoint(stage_dir) == stage_dir / "epoch_000003"
    (tmp_path / "run" / ".best.old-12-ab").mkdir()
    run = RunDir(tmp_path / "run", tiny_config(), {})
    run.remove_temporaries()
    assert hidden_leftovers(tmp_path / "run") == []
