"""A robot loop through `policytrim serve`: Meta-World plays the robot, the policy is remote.

Start a server in one process and the loop in another::

    policytrim serve --policy runs/demo/train/final/policy --port 8000
    python -m policytrim.serve.robot_loop --port 8000 --task drawer-close-v3 --episodes 5

Each control step asks the `ActionChunkBroker` for one action; the broker calls the server only
when the advertised window is used up. Printed per episode and overall: success, env steps, server
calls, control rate in Hz (env steps per second of wall time, simulator + network + policy) and
the mean round-trip latency of a call. The loop never imports torch or the policy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from policytrim.config import EnvConfig
from policytrim.envs.base import OBS_IMAGE, OBS_STATE, InitialState
from policytrim.errors import InputError
from policytrim.serve.client import ActionChunkBroker, PolicyClient


@dataclass
class RobotLoopArgs:
    """Drive Meta-World through a running `policytrim serve`."""

    host: str = "127.0.0.1"
    """Server host."""
    port: int = 8000
    """Server port."""
    api_key_env: str = ""
    """Name of an environment variable holding the server's API key (none when empty)."""
    task: str = "drawer-close-v3"
    """Meta-World task (its instruction is sent as the prompt)."""
    episodes: int = 3
    """Episodes to run, on initial states 0..episodes-1 of --seed."""
    horizon: int = 200
    """Env steps before an episode counts as a failure."""
    seed: int = EnvConfig().test_seed
    """Initial-state seed (default: the test split's, as `policytrim eval`)."""
    window: int = 0
    """Actions executed per server call; 0 = the window the server advertises."""
    json: bool = False
    """Print one JSON summary instead of text lines."""


@dataclass
class EpisodeResult:
    """One episode: success, env steps, server calls, wall seconds and the mean round trip (ms)."""

    index: int
    success: bool
    steps: int
    calls: int
    wall_s: float
    control_hz: float
    round_trip_ms: float


def run_episodes(args: RobotLoopArgs) -> list[EpisodeResult]:
    """Run ``args.episodes`` episodes against the server; one `EpisodeResult` each."""
    from policytrim.envs.metaworld import MetaWorldEnv

    if args.episodes < 1 or args.horizon < 1:
        raise InputError(f"episodes and horizon must be >= 1, got {args.episodes} and {args.horizon}")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    with PolicyClient(args.host, args.port, api_key=api_key) as client:
        observation = client.metadata["observation"]
        image = observation.get(OBS_IMAGE)
        env = MetaWorldEnv(
            args.task,
            args.horizon,
            image=image is not None,
            image_size=image["shape"][0] if image else 64,
            camera=EnvConfig().camera,
        )
        broker = ActionChunkBroker(client, args.window or None)
        results = []
        try:
            for i in range(args.episodes):
                obs = env.reset(InitialState(args.task, args.seed, i))
                broker.reset()
                success, steps, t_calls = False, 0, 0.0
                start = time.perf_counter()
                while steps < args.horizon and not success:
                    request = {OBS_STATE: np.asarray(obs[OBS_STATE], np.float32), "prompt": env.instruction}
                    if image is not None:
                        request[OBS_IMAGE] = obs[OBS_IMAGE]
                    calls_before, t0 = broker.calls, time.perf_counter()
                    action = broker.act(request)
                    if broker.calls > calls_before:
                        t_calls += time.perf_counter() - t0
                    obs, success = env.step(action)
                    steps += 1
                wall = time.perf_counter() - start
                results.append(
                    EpisodeResult(
                        i,
                        bool(success),
                        steps,
                        broker.calls,
                        wall,
                        steps / wall,
                        1000.0 * t_calls / max(broker.calls, 1),
                    )
                )
        finally:
            env.close()
    return results


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate, mean steps / calls per episode, overall control Hz, mean round trip."""
    steps = sum(r.steps for r in results)
    calls = sum(r.calls for r in results)
    wall = sum(r.wall_s for r in results)
    return {
        "episodes": len(results),
        "success_rate": sum(r.success for r in results) / len(results),
        "mean_steps": steps / len(results),
        "mean_calls": calls / len(results),
        "control_hz": steps / wall,
        "round_trip_ms": sum(r.round_trip_ms * r.calls for r in results) / max(calls, 1),
        "per_episode": [asdict(r) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = tyro.cli(RobotLoopArgs, args=argv)
    try:
        results = run_episodes(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # refused, unreachable, reset
        print(f"error: cannot reach the policy server at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    summary = summarize(results)
    if args.json:
        print(json.dumps(summary))
        return 0
    for r in results:
        print(
            f"episode {r.index}: success={r.success} steps={r.steps} calls={r.calls} "
            f"control={r.control_hz:.1f} Hz round-trip={r.round_trip_ms:.2f} ms"
        )
    print(
        f"{args.task}: success {summary['success_rate']:.2f} over {summary['episodes']} episodes, "
        f"{summary['mean_calls']:.1f} calls/episode, {summary['mean_steps']:.1f} steps/episode, "
        f"{summary['control_hz']:.1f} Hz control, {summary['round_trip_ms']:.2f} ms per call"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
