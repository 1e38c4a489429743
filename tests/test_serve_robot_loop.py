"""End to end across processes: `policytrim serve` (a real BC-trained TinyVLA, `tiny_baseline`) in
one process, the Meta-World robot loop (`python -m policytrim.serve.robot_loop`) in another; and
the command's bad-input handling."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("websockets", reason="needs the serve extra: pip install 'policytrim[serve]'")
pytest.importorskip("msgpack", reason="needs the serve extra: pip install 'policytrim[serve]'")

from policytrim.cli import main  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402


@pytest.mark.slow
def test_robot_loop_drives_metaworld_through_a_served_policy(tiny_baseline):
    window = load_policy(tiny_baseline).default_window
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policytrim.cli",
            "serve",
            "--policy",
            str(tiny_baseline),
            "--port",
            "0",
            "--mode",
            "deterministic",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line, server.stderr.read() if server.poll() is not None else line
        port = line.split("ws://127.0.0.1:")[1].split(" ")[0].rstrip(";")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "policytrim.serve.robot_loop",
                "--port",
                port,
                "--task",
                "drawer-close-v3",
                "--episodes",
                "2",
                "--horizon",
                "120",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        text = subprocess.run(
            [
                sys.executable,
                "-m",
                "policytrim.serve.robot_loop",
                "--port",
                port,
                "--episodes",
                "1",
                "--horizon",
                "120",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert text.returncode == 0 and "calls/episode" in text.stdout and " Hz control" in text.stdout, text.stderr[
            -2000:
        ]
        assert server.poll() is None  # still serving
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    for episode in summary["per_episode"]:
        assert 1 <= episode["steps"] <= 120
        assert episode["calls"] == math.ceil(episode["steps"] / window)  # one round trip per window
        assert episode["control_hz"] > 0 and episode["round_trip_ms"] > 0
    gone = subprocess.run(
        [sys.executable, "-m", "policytrim.serve.robot_loop", "--port", port, "--episodes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1 and gone.stderr.strip().startswith("error: cannot reach the policy server")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--policy", "no/such/dir"], "no/such/dir"),
        (["serve", "--policy", "expert", "--api-key-env", "POLICYTRIM_TEST_UNSET_KEY"], "POLICYTRIM_TEST_UNSET_KEY"),
        (["serve", "--policy", "expert", "--port", "70000"], "port must be in"),
        (["serve", "--policy", "expert", "--mode", "train"], "mode"),
        (["serve", "--policy", "expert", "--max-message-mb", "nan"], "--max-message-mb must be a number in (0, 1024]"),
        (["serve", "--policy", "expert", "--max-message-mb", "1e9"], "--max-message-mb must be a number in (0, 1024]"),
        (["serve", "--policy", "expert", "--threads", "1000000"], "threads must be an integer in [0, 1024]"),
        pytest.param(
            ["serve", "--policy", "expert", "--device", "cuda"],
            "torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_serve_refuses_bad_input_in_one_line(argv, message, capsys):
    os.environ.pop("POLICYTRIM_TEST_UNSET_KEY", None)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
