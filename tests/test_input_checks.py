"""Reliability round 2 (issue 12): the failures an outside probe found, beyond the one-line cases
of the bad-input table (`tests/test_bad_inputs.py`, which holds every instance as a row).

Here: what needs more than one command or a measurement -- `pretrain` with presets and saved run
configs, checkpoint specs refused before any allocation (peak memory measured), the alias bomb's
time, error lines capped, byte-identical checkpoints, no half-made run when a back-end is missing,
old runs without a recorded config hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import tiny_config
from fixtures.make_fixtures import random_demos
from policytrim.cli import main
from policytrim.config import ConfigError, RunConfig, from_dict, load_config, parse_config_text, preset_path, to_dict
from policytrim.data.demos import save_demos
from policytrim.envs.tasks import TASK_SETS, resolve_tasks
from policytrim.errors import MAX_MESSAGE_CHARS, InputError
from policytrim.io import read_jsonl
from policytrim.policies import load_policy
from policytrim.progress import EVERY_S_ENV as PROGRESS_EVERY_S_ENV
from policytrim.train.checkpoint import save_checkpoint
from policytrim.train.rundir import RunDir
from test_bad_inputs import SPEC_EDITS, SUBPROCESS_ENV, _edit_json, alias_bomb, make_checkpoint

TINY_BC = ["--pretrain.iterations", "2", "--pretrain.eval-episodes", "0", "--logging.no-progress"]


def test_pretrain_takes_a_preset_and_a_saved_run_config(tmp_path):
    """`PretrainCmd` no longer has a `data` field shadowing the config's `data:` section: the README's
    `pretrain --preset demo --data D` works, and so does `--config RUN/config.yaml`."""
    data = tmp_path / "demos"
    save_demos(random_demos(3, 5), data)
    preset = load_config(preset_path("demo"))

    assert main(["pretrain", "--preset", "demo", "--data", str(data), "--out", str(tmp_path / "a"), *TINY_BC]) == 0
    spec = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (spec["chunk_size"], spec["hidden_dim"]) == (preset.policy.chunk_size, preset.policy.hidden_dim)

    run = RunDir.create(tmp_path / "run", preset, {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    assert "data" in yaml.safe_load((run.path / "config.yaml").read_text())  # the section that was refused
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(run.path / "config.yaml"),
                "--demos",
                str(data),
                "--out",
                str(tmp_path / "b"),
                *TINY_BC,
            ]
        )
        == 0
    )
    assert load_policy(tmp_path / "b").chunk_size == preset.policy.chunk_size


def test_checkpoint_specs_with_absurd_sizes_fail_fast_without_allocating(tmp_path):
    """A config.json asking for hidden_dim 1e7 used to allocate 3.7 GB before failing, num_layers
    1e6 ran for minutes. Each is now one InputError, in a fresh process whose peak RSS stays that of
    importing torch (measured, not assumed)."""
    good = make_checkpoint(tmp_path / "good")
    names = []
    for name, changes in SPEC_EDITS.items():
        bad = tmp_path / name
        bad.mkdir()
        for f in good.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        _edit_json(bad / "config.json", **changes)
        names.append(str(bad))
    script = (
        "import sys, time, json\n"
        "from policytrim.errors import InputError\n"
        "from policytrim.policies import load_policy\n"
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        load_policy(path)\n"
        "        out.append([path, 'loaded', 0.0])\n"
        "    except InputError as exc:\n"
        "        out.append([path, str(exc), time.perf_counter() - t])\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of a big pytest
        # process would report its parent's peak; VmHWM belongs to this process's own memory map
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print(json.dumps({'results': out, 'peak_mb': int(hwm) / 1024}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for path, message, seconds in report["results"]:
        assert message != "loaded", path
        assert "\n" not in message and seconds < 2.0, (path, message, seconds)
    # importing torch and reading a 64-wide checkpoint is ~300-500 MB; one 1e7-wide layer is 3.7 GB
    assert report["peak_mb"] < 1500, report


def test_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels=8, width=9))  # 9**9 = 387 million values once expanded
    assert bomb.stat().st_size < 500
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 10000 values"):
        load_config(bomb)
    assert time.perf_counter() - t < 1.0


def test_an_error_that_echoes_a_huge_value_is_one_capped_line(capsys, tmp_path):
    """Under the expansion limit but still large: 9**4 = 6561 values where an integer belongs. The
    message keeps what was wrong and says what was cut, in one place (`policytrim.errors.one_line`)."""
    value = alias_bomb(levels=3, width=9).split("tasks: ", 1)[1]
    data = parse_config_text(f"seed: {value}", "x.yaml")  # under the limit: parsed
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, data)
    message = str(info.value)
    assert message.startswith("seed must be an integer, got [[[")
    assert len(message) <= MAX_MESSAGE_CHARS and "characters cut" in message
    assert len(str(InputError("x" * 10_000_000))) <= MAX_MESSAGE_CHARS
    config = tmp_path / "seed.yaml"
    config.write_text(f"seed: {value}\n")
    with pytest.raises(SystemExit):
        main(["config", "--config", str(config)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) <= MAX_MESSAGE_CHARS + len("error: \n")


def test_identical_tensors_give_byte_identical_checkpoints(tmp_path):
    """safetensors writes its metadata from a hash map (order varies call to call); we sort it, so
    weights_sha256 identifies the weights (an interrupted and an uninterrupted run agree)."""
    policy = load_policy(make_checkpoint(tmp_path / "ckpt"))
    for i in range(8):
        policy.save_pretrained(tmp_path / f"copy{i}")
    for name in ("model.safetensors", "config.json"):
        assert len({(tmp_path / f"copy{i}" / name).read_bytes() for i in range(8)}) == 1, name
    reloaded = load_policy(tmp_path / "copy0")
    assert all(
        torch.equal(a, b) for a, b in zip(policy.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )

    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for p in policy.parameters():  # one step, so that the optimiser has state tensors to save
        p.grad = torch.ones_like(p)
    optimizer.step()
    for i in range(4):
        save_checkpoint(tmp_path / f"stage{i}", 1, policy, optimizer, {"stage": "extend"})
    for name in ("optimizer.safetensors", "policy/model.safetensors", "trainer_state.json"):
        assert len({(tmp_path / f"stage{i}" / "epoch_000001" / name).read_bytes() for i in range(4)}) == 1, name


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_logging_backend_leaves_no_half_made_run(tmp_path):
    from policytrim.train.grpo import train

    cfg = RunConfig()
    cfg.logging.wandb = "offline"
    cfg.logging.out = str(tmp_path / "run")
    with pytest.raises(InputError, match="needs the wandb package"):
        train(cfg, "both", str(make_checkpoint(tmp_path / "ckpt")))
    assert not (tmp_path / "run").exists()


def test_resume_verifies_the_recorded_hash_and_accepts_complete_old_runs(tmp_path):
    cfg = RunConfig()
    cfg.stage2.epochs = 2
    run = RunDir.create(tmp_path / "run", cfg, {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    meta = json.loads((run.path / "run.json").read_text())
    assert len(meta["config_sha256"]) == 64
    assert RunDir.open(run.path).cfg == cfg
    run.set_status("interrupted")  # status updates keep the hash
    assert RunDir.open(run.path).cfg == cfg

    # a run made before the hash was recorded: accepted when its config.yaml is complete ...
    del meta["config_sha256"]
    (run.path / "run.json").write_text(json.dumps(meta))
    assert RunDir.open(run.path).cfg == cfg
    # ... and refused, naming the missing keys, when it is not (no defaults for a resumed run)
    data = to_dict(cfg)
    del data["stage2"]["epochs"]
    (run.path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError, match=r"config.yaml: missing key\(s\) stage2.epochs"):
        RunDir.open(run.path)


def test_a_run_saved_before_env_libero_reset_resumes(tmp_path):
    """env.libero_reset came later; such a run made hard LIBERO resets, which the default fast reset
    equals bit for bit (tests/test_libero.py), so it resumes with the default."""
    cfg = RunConfig()
    run = RunDir.create(tmp_path / "run", cfg, {"stage": "both", "stages": ["extend", "trim"], "init": "x"})
    data = to_dict(cfg)
    del data["env"]["libero_reset"]
    raw = yaml.safe_dump(data, sort_keys=False).encode()
    (run.path / "config.yaml").write_bytes(raw)
    meta = json.loads((run.path / "run.json").read_text())
    meta["config_sha256"] = hashlib.sha256(raw).hexdigest()
    (run.path / "run.json").write_text(json.dumps(meta))
    assert RunDir.open(run.path).cfg == cfg


def test_a_task_given_twice_is_refused_and_a_set_overlap_is_kept_once_with_a_warning(caplog):
    with pytest.raises(InputError, match="'push-v3' is given twice"):
        resolve_tasks(["push-v3", "reach-v3", "push-v3"])
    with pytest.raises(InputError, match="'mw8' is given twice"):
        resolve_tasks(["MW8", "mw8"])
    with caplog.at_level(logging.WARNING, logger="policytrim.envs.tasks"):
        assert resolve_tasks(["MW8", "push-v3"]) == TASK_SETS["MW8"]
    assert "push-v3 given again by 'push-v3'" in caplog.text


def test_config_file_and_preset_are_layered_preset_then_file_then_flags(tmp_path, capsys):
    """``--config FILE --preset NAME`` used to drop the preset silently; now the preset is the bottom
    layer, the file goes on top of it (a section merges key by key) and the flags on top of both."""
    demo = load_config(preset_path("demo"))
    path = tmp_path / "over.yaml"
    path.write_text("seed: 5\nstage1:\n  lr: 0.002\n")
    assert main(["config", "--preset", "demo", "--config", str(path), "--stage1.epochs", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (
        got["env"]["tasks"] == list(demo.env.tasks) and got["policy"]["hidden_dim"] == demo.policy.hidden_dim
    )  # preset
    assert got["seed"] == 5 and got["stage1"]["lr"] == 0.002  # file over the preset
    assert got["stage1"]["val_episodes"] == demo.stage1.val_episodes  # the rest of the preset's stage1 section kept
    assert got["stage1"]["epochs"] == 3  # flags over both
    # a file may rely on the preset: LIBERO task names are valid once the libero preset set env.suite
    (tmp_path / "libero_object.yaml").write_text("env:\n  tasks: [libero_object]\n")
    assert main(["config", "--preset", "libero", "--config", str(tmp_path / "libero_object.yaml"), "--json"]) == 0
    env = json.loads(capsys.readouterr().out)["env"]
    assert env["suite"] == "libero" and env["tasks"] and all(t.startswith("libero_object/") for t in env["tasks"])
    # --help says how the layers stack
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    assert "then --config, then the other flags" in " ".join(capsys.readouterr().out.split())


def _mount_tmpfs(path, size: int) -> bool:
    """A small tmpfs at ``path`` (a real file system that fills up, without filling the machine's
    disk); False where this process may not mount one (not root)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def _tree_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_a_full_disk_is_one_line_marks_the_run_failed_and_resume_after_freeing_space_is_exact(tmp_path):
    """A real full disk (a tmpfs, topped up with a filler file): `train` stops with one line and exit
    code 2, run.json says "failed" (no space), every checkpoint it shows is whole; after the filler is
    deleted, --resume finishes with exactly the metrics and weights of a run that never ran out."""
    from test_resume import canonical, weights

    make_checkpoint(tmp_path / "ckpt")
    stage = dict(epochs=3, eval_every=1, val_episodes=2, checkpoint_every=1, lr=1e-3, update_epochs=1)
    cfg = tiny_config(stage1=stage, env=dict(horizon=40))
    cfg.eval.latency_ms = 1.0
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def train(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "policytrim.cli", "train", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    base = ["--config", str(config), "--init", str(tmp_path / "ckpt"), "--stage", "extend"]
    reference = train(*base, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    size = _tree_bytes(tmp_path / "reference")

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 4 * size + (1 << 20)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - size // 2))  # room for about half the run
        run = disk / "run"
        full = train(*base, "--out", str(run))
        assert full.returncode == 2, full.stderr[-3000:]
        assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr, full.stderr
        assert "no space left on device" in full.stderr and f"--resume {run}" in full.stderr
        meta = json.loads((run / "run.json").read_text())
        assert meta["status"] == "failed" and meta["failure"] == "no space left on device"
        for checkpoint in (run / "extend").glob("epoch_*"):  # what a resume may read is whole
            load_policy(checkpoint / "policy")
        (disk / "filler").unlink()
        resumed = train("--resume", str(run))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        assert "failure" not in json.loads((run / "run.json").read_text())
        assert canonical(read_jsonl(run / "metrics.jsonl")) == canonical(
            read_jsonl(tmp_path / "reference" / "metrics.jsonl")
        )
        assert weights(run / "final" / "policy") == weights(tmp_path / "reference" / "final" / "policy")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_collect_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """safetensors writes the dataset itself and reports ENOSPC as its own SafetensorError: still
    one line, exit code 2, and no half-written dataset."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 1 << 20):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 8192))  # room for the folders, not the frames
        cmd = [
            sys.executable,
            "-m",
            "policytrim.cli",
            "collect",
            "--tasks",
            "reach-v3",
            "--data.episodes",
            "2",
            "--env.horizon",
            "60",
            "--rollout.num-workers",
            "0",
            "--logging.no-progress",
            "--out",
            str(disk / "demos"),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: no space left on device") and "free some space" in result.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_libero_task_given_twice_is_refused_as_for_meta_world_and_a_suite_overlap_warns(caplog):
    from policytrim.envs.libero import resolve_libero_tasks

    suite = resolve_libero_tasks("libero_object")
    address = suite[0]
    with pytest.raises(InputError, match="'libero_object' is given twice"):
        resolve_libero_tasks(["libero_object", "libero_goal", "libero_object"])
    with pytest.raises(InputError, match=f"is given twice \\(also as '{address}'\\)"):  # two spellings, one task
        resolve_libero_tasks([address, address.split("/")[1]])
    with caplog.at_level(logging.WARNING, logger="policytrim.envs.libero"):
        assert resolve_libero_tasks(["libero_object", address]) == suite
    assert f"{address} given again by '{address}'" in caplog.text


def test_progress_in_a_log_is_plain_lines_every_few_seconds_for_every_phase(tmp_path):
    """With stderr not a terminal (a pipe here, as in CI or `2> log`), collect, pretrain, training
    epochs, validations and the evaluation each print plain progress lines -- no carriage returns --
    at most one per interval (POLICYTRIM_PROGRESS_EVERY_S, made short here so that these small runs
    print some); a phase shorter than the interval prints nothing at all."""
    every = 0.2
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1", PROGRESS_EVERY_S_ENV: str(every)}
    tiny = [
        "--tasks",
        "reach-v3",
        "--env.horizon",
        "60",
        "--rollout.num-workers",
        "0",
        "--policy.chunk-size",
        "8",
        "--policy.default-window",
        "4",
        "--policy.hidden-dim",
        "32",
        "--policy.num-layers",
        "1",
    ]
    stage = [
        "--stage1.epochs",
        "2",
        "--stage1.val-episodes",
        "3",
        "--stage1.eval-every",
        "1",
        "--rollout.group-size",
        "2",
        "--rollout.groups-per-epoch",
        "2",
        "--stage1.windows",
        "4",
        "8",
    ]
    commands = {
        "collect": ["collect", *tiny, "--data.episodes", "4", "--out", str(tmp_path / "demos")],
        "pretrain": [
            "pretrain",
            *tiny,
            "--data",
            str(tmp_path / "demos"),
            "--pretrain.iterations",
            "400",
            "--pretrain.eval-episodes",
            "0",
            "--out",
            str(tmp_path / "baseline"),
        ],
        "extend": [
            "train",
            *tiny,
            *stage,
            "--stage",
            "extend",
            "--init",
            str(tmp_path / "baseline"),
            "--out",
            str(tmp_path / "run"),
        ],
        "evaluation": [
            "eval",
            *tiny,
            "--policy",
            str(tmp_path / "baseline"),
            "--episodes",
            "6",
            "--out",
            str(tmp_path / "eval"),
        ],
    }
    seen = {}
    for phase, argv in commands.items():
        t0 = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "policytrim.cli", *argv], capture_output=True, text=True, env=env, timeout=600
        )
        elapsed = time.monotonic() - t0
        assert result.returncode == 0, result.stderr[-3000:]
        assert "\r" not in result.stderr, "a progress bar's carriage returns in a log"
        lines = [
            line for line in result.stderr.splitlines() if re.match(r"^[\w ]+( \(k=\d+, \w+\))?: \d+/\d+ \w+, ", line)
        ]
        assert any(line.startswith(f"{phase}") for line in lines), result.stderr
        assert len(lines) <= elapsed / every + 8, (
            f"{len(lines)} lines in {elapsed:.1f} s"
        )  # + the 'done' line of each phase
        seen[phase] = lines
    assert any(line.startswith("validation (k=") for line in seen["extend"])  # validations inside training say so too
    quiet = subprocess.run(
        [sys.executable, "-m", "policytrim.cli", *commands["evaluation"], "--overwrite"],
        capture_output=True,
        text=True,
        env={**env, PROGRESS_EVERY_S_ENV: "3600"},
        timeout=600,
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
