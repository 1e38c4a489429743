"""Interoperability: the real `openpi-client` package (0.1.2, numpy < 2) talks to `policytrim serve`.

openpi-client cannot share our environment (it pins numpy < 2), so scripts/openpi_client_venv.sh
installs it once into a throwaway venv under .cache/ (about 12 s, 133 MB; reused afterwards). The
test then runs a small script in that venv which uses openpi's own `WebsocketClientPolicy` and
`ActionChunkBroker` against our server. It skips only when the package index cannot be reached.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("websockets", reason="needs the serve extra: pip install 'policytrim[serve]'")
pytest.importorskip("msgpack", reason="needs the serve extra: pip install 'policytrim[serve]'")

from policytrim.config import PolicyConfig  # noqa: E402
from policytrim.envs.tasks import INSTRUCTIONS  # noqa: E402
from policytrim.policies.tinyvla import TinyVLA  # noqa: E402
from policytrim.serve.server import PolicyServer, PolicyService, ServeConfig, ServerThread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INDEX_UNREACHABLE = 3  # exit code of scripts/openpi_client_venv.sh

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from openpi_client import action_chunk_broker, websocket_client_policy

    host, port, key, state = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    policy = websocket_client_policy.WebsocketClientPolicy(host, port, api_key=key)
    meta = policy.get_server_metadata()
    obs = {"state": np.asarray(state, dtype=np.float32), "prompt": meta["instruction"]["known"][0]}
    reply = policy.infer(obs)
    broker = action_chunk_broker.ActionChunkBroker(policy, action_horizon=meta["window"])
    steps = [broker.infer(obs)["actions"].tolist() for _ in range(meta["window"] + 1)]
    try:
        policy.infer({"prompt": "no state"})
        error = None
    except RuntimeError as exc:
        error = str(exc)
    print(json.dumps({"numpy": np.__version__, "metadata": meta, "actions": reply["actions"].tolist(),
                      "dtype": str(reply["actions"].dtype), "server_timing": reply["server_timing"],
                      "policy_timing": reply["policy_timing"], "broker_steps": steps, "error": error}))
    """
)


@pytest.fixture(scope="module")
def openpi_python() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/openpi_client_venv.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode == INDEX_UNREACHABLE:
        pytest.skip(f"openpi-client cannot be installed: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_openpi_client_gets_actions_from_policytrim_serve(openpi_python):
    torch.manual_seed(0)
    cfg = PolicyConfig(chunk_size=8, default_window=3, hidden_dim=32, num_layers=1)
    policy = TinyVLA.from_config(cfg, 39, 4, [INSTRUCTIONS["drawer-close-v3"]]).eval()
    state = np.linspace(-1, 1, 39).astype(np.float32)
    config = ServeConfig(port=0, mode="deterministic", api_key="k3y")
    with ServerThread(PolicyServer(PolicyService(policy, config))) as running:
        run = subprocess.run(
            [openpi_python, "-c", CLIENT_SCRIPT, running.host, str(running.port), "k3y", json.dumps(state.tolist())],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["numpy"].startswith("1.")  # really openpi's own environment, not ours
    assert out["metadata"]["window"] == 3 and out["metadata"]["chunk_size"] == 8
    expected = (
        policy.sample(
            {"state": torch.from_numpy(state).unsqueeze(0)}, [INSTRUCTIONS["drawer-close-v3"]], "deterministic"
        )
        .actions[0]
        .numpy()
    )
    assert out["dtype"] == "float32"
    np.testing.assert_allclose(np.asarray(out["actions"]), expected, atol=1e-6)
    assert out["policy_timing"]["infer_ms"] > 0 and out["server_timing"]["infer_ms"] > 0
    # openpi's broker executes the advertised window, one action per step, then asks again
    np.testing.assert_allclose(np.asarray(out["broker_steps"][:3]), expected[:3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["broker_steps"][3]), expected[0], atol=1e-6)
    assert out["error"] is not None and "missing 'state'" in out["error"]
