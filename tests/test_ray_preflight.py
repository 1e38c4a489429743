"""Ray env workers are checked before a run is created (issue 31): a malformed ``--ray.address``, a
cluster that does not answer (bounded by ``--ray.connect-timeout-s``, where Ray's own connect
retried for minutes) and workers that cannot be placed are each one error line and exit 2, with
nothing written; and what a local instance started with ``include_dashboard=False`` runs.

The address checks need no Ray instance (they fail before one is joined); the placement and
dashboard checks start a local one in a subprocess, so that this process stays free of Ray.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from conftest import tiny_config
from policytrim.cli import main
from policytrim.config import RayConfig, to_dict
from policytrim.envs.tasks import INSTRUCTIONS
from policytrim.errors import InputError
from policytrim.policies.tinyvla import TinyVLA
from policytrim.rollout.ray_pool import bundles_that_fit

pytest.importorskip("ray")


def train_argv(out, *extra: str) -> list[str]:
    # --init is not read: every check here comes before the starting checkpoint is loaded
    return ["train", "--init", str(out.parent / "baseline"), "--out", str(out), "--rollout.backend", "ray", *extra]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:notaport",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "http://head:6379",
        "ray://head:10001",
        "head",
        ":6379",
        "a b:1",
    ],
)
def test_a_malformed_ray_address_is_one_line_and_writes_nothing(address, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(train_argv(tmp_path / "run", "--ray.address", address))
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and "ray.address must be empty" in err, err
    assert not (tmp_path / "run").exists()


def test_good_addresses_are_accepted():
    for address in ("", "auto", "10.0.0.5:6379", "head-node.example.org:6379", "[::1]:6379"):
        assert RayConfig(address=address).address == address
    with pytest.raises(InputError, match="ray.connect_timeout_s"):
        RayConfig(connect_timeout_s=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_ray_address_fails_at_once(tmp_path, capfd):
    start = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        main(train_argv(tmp_path / "run", "--ray.address", f"127.0.0.1:{_free_port()}"))
    elapsed = time.monotonic() - start
    err = capfd.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err
    assert "cannot reach the Ray cluster at 127.0.0.1:" in err and "Connection refused" in err
    assert elapsed < 10 and not (tmp_path / "run").exists()


def test_a_port_that_is_not_ray_fails_within_the_connect_timeout(tmp_path, capfd):
    """Something listens but is not a Ray GCS (e.g. the dashboard's port given by mistake)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections complete in the backlog; nothing ever answers
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(SystemExit) as exited:
            main(train_argv(tmp_path / "run", "--ray.address", f"127.0.0.1:{port}", "--ray.connect-timeout-s", "1"))
        elapsed = time.monotonic() - start
    err = capfd.readouterr().err.strip()
    print(f"refused after {elapsed:.1f} s")
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err  # Ray's client retry logs are not shown
    assert f"127.0.0.1:{port} accepts connections but no Ray cluster answered" in err
    # Ray's client waits 5 s for its pubsub channel on top of the timeout; before this check: minutes
    assert elapsed < 30 and not (tmp_path / "run").exists()


def test_bundles_that_fit_follow_the_placement_strategy():
    nodes = [{"CPU": 4.0, "memory": 8e9}, {"CPU": 1.0, "memory": 8e9}, {"CPU": 2.0, "GPU": 1.0, "memory": 1e9}]
    cpu = {"CPU": 1.0}
    assert bundles_that_fit(nodes, cpu, "SPREAD") == bundles_that_fit(nodes, cpu, "PACK") == 7
    assert bundles_that_fit(nodes, cpu, "STRICT_SPREAD") == 3 and bundles_that_fit(nodes, cpu, "STRICT_PACK") == 4
    assert bundles_that_fit(nodes, {"CPU": 1.0, "GPU": 0.5}, "SPREAD") == 2
    assert bundles_that_fit(nodes, {"CPU": 0.5, "memory": 4e9}, "SPREAD") == 4
    assert bundles_that_fit([], cpu, "STRICT_PACK") == 0


@pytest.mark.slow
def test_workers_that_cannot_be_placed_fail_before_the_run_is_created(tmp_path):
    """A valid run (a real starting checkpoint) asking a 1-CPU local instance for 2 workers."""
    cfg = tiny_config(stage1=dict(epochs=1))
    cfg.rollout.backend, cfg.rollout.num_workers, cfg.ray.num_cpus = "ray", 2, 1
    cfg.logging.out = str(tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    baseline = TinyVLA.from_config(cfg.policy, 39, 4, [INSTRUCTIONS[t] for t in cfg.env.tasks])
    baseline.save_pretrained(tmp_path / "baseline")
    argv = ["train", "--config", str(tmp_path / "cfg.yaml"), "--stage", "extend", "--init", str(tmp_path / "baseline")]
    proc = subprocess.run([sys.executable, "-m", "policytrim.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # nothing written, so the same command with more CPUs is not told "already exists; pass --resume"
    assert not (tmp_path / "run").exists()
    last = proc.stderr.strip().splitlines()[-1]
    expected = "error: Ray cannot place 2 env workers of {'CPU': 1.0} (SPREAD) on the local Ray instance"
    assert last.startswith(expected), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


LOCAL_INSTANCE = textwrap.dedent(
    """
    import json, os, subprocess
    from policytrim.config import RayConfig
    from policytrim.rollout.ray_pool import connect

    ray = connect(RayConfig(num_cpus=1))
    def tree(pid):
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [int(k) for k in kids] + [g for k in kids for g in tree(k)]
    procs = {}
    for pid in tree(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\\0", b" ").decode()
            with open(f"/proc/{pid}/environ", "rb") as f:
                usage = b"RAY_USAGE_STATS_ENABLED=0" in f.read().split(b"\\0")
        except OSError:
            continue
        if "/ray/" in cmd or cmd.startswith("ray::"):  # not this script's own pgrep
            procs[pid] = {"cmd": cmd, "usage_stats_off": usage}
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        listening |= {int(r[1].rsplit(":", 1)[1], 16) for r in rows if r[3] == "0A"}  # 0A: LISTEN
    print(json.dumps({"procs": procs, "port_8265": 8265 in listening}))
    ray.shutdown()
    """
)


@pytest.mark.slow
def test_a_local_instance_is_local_has_no_dashboard_ui_and_reports_no_usage_stats(tmp_path):
    """What ``include_dashboard=False`` leaves running (Ray 2.60): no web UI and no port 8265, but a
    ``dashboard.py`` head process restricted to the usage-stats module, which reports nothing here."""
    # an empty ray.address starts a local instance, whatever RAY_ADDRESS says (Ray would join that address)
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    proc = subprocess.run([sys.executable, "-c", LOCAL_INSTANCE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    dashboards = [p for p in found["procs"].values() if "dashboard/dashboard.py" in p["cmd"]]
    assert len(dashboards) == 1 and "--disable-frontend" in dashboards[0]["cmd"]
    assert "--modules-to-load=UsageStatsHead" in dashboards[0]["cmd"]
    assert not found["port_8265"]
    # the usage-stats module runs in dashboard.py; gcs_server and raylet inherit the same environment
    # (processes renamed "ray::..." by setproctitle no longer show theirs in /proc)
    named = [p for p in found["procs"].values() if not p["cmd"].startswith("ray::")]
    assert dashboards[0]["usage_stats_off"] and len(named) >= 3 and all(p["usage_stats_off"] for p in named), named
    # the per-node agent stays
    assert any("DashboardAgent" in p["cmd"] or "dashboard/agent.py" in p["cmd"] for p in found["procs"].values())
