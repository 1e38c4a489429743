"""The robot side of `policytrim serve`: a websocket client and an action-chunk broker.

`PolicyClient` speaks the same protocol as openpi's ``WebsocketClientPolicy`` (and works against
an openpi server too); `ActionChunkBroker` turns chunks into one action per control step and asks
the server again only when the advertised window (``metadata["window"]``, the window the policy was
trained to execute) has been executed, so the number of round trips per episode is ~T / k::

    client = PolicyClient("127.0.0.1", 8000)
    broker = ActionChunkBroker(client)              # window = client.metadata["window"]
    for step in range(horizon):
        action = broker.act({"state": state, "prompt": instruction})   # float32 [A]
        state, success = env.step(action)
"""

from __future__ import annotations

from collections import deque
from contextlib import ExitStack
from typing import Any

import numpy as np

from policytrim.errors import InputError
from policytrim.serve import wire
from policytrim.windows import resolve


class ServerError(RuntimeError):
    """The server refused a request (its text error frame is the message)."""


class PolicyClient:
    """A blocking websocket client for one robot (``websockets.sync.client``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = 8000, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        try:
            from websockets.sync.client import connect
        except ImportError:
            raise InputError(
                "the policy client needs websockets and msgpack: pip install 'policytrim[serve]'"
            ) from None
        uri = host if host.startswith("ws") else f"ws://{host}"
        if port is not None:
            uri += f":{port}"
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.uri = uri
        self.timeout_s = float(timeout_s)
        self._stack = ExitStack()  # entered as a context manager, as websockets >= 17 asks
        self._ws = self._stack.enter_context(
            connect(uri, compression=None, max_size=None, additional_headers=headers, open_timeout=timeout_s)
        )
        self.metadata: dict[str, Any] = wire.unpack(self._ws.recv(timeout=self.timeout_s))
        self.calls = 0

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One round trip: the reply dict (``"actions"`` float32 [H, A], timings)."""
        self._ws.send(wire.pack(obs))
        reply = self._ws.recv(timeout=self.timeout_s)
        if isinstance(reply, str):
            raise ServerError(reply)
        self.calls += 1
        return wire.unpack(reply)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ActionChunkBroker:
    """One action per `act` call, from chunks fetched ``window`` actions at a time; from a server
    whose policy carries a window adaptor, each reply's ``n_actions`` at a time (unless ``window``
    forces a fixed one)."""

    def __init__(self, client: PolicyClient, window: int | None = None) -> None:
        self.chunk_size = chunk_size = int(client.metadata["chunk_size"])
        # None / 0: the window the server advertises (the one the policy was trained for)
        self.window = resolve(window, int(client.metadata["window"]), chunk_size, "broker window", chunk_size)
        self.adaptive = not window and client.metadata.get("adaptive_window") is True
        self.client = client
        self.calls = 0
        self.executed: list[int] = []  # actions executed of each chunk fetched since `reset`
        self._queue: deque[np.ndarray] = deque()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The next action float32 [A]; calls the server when the current window is used up."""
        if not self._queue:
            reply = self.client.infer(obs)
            actions = np.asarray(reply["actions"], dtype=np.float32)
            n = self._n_actions(reply) if self.adaptive else self.window
            self._queue.extend(actions[:n])
            self.executed.append(n)
            self.calls += 1
        return self._queue.popleft()

    def _n_actions(self, reply: dict[str, Any]) -> int:
        n = reply.get("n_actions")
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= self.chunk_size):
            raise ServerError(
                f"the server announced per-call windows but replied n_actions={n!r} "
                f"(an integer in [1, {self.chunk_size}])"
            )
        return n

    def reset(self) -> None:
        """Forget the rest of the current chunk (call at every episode start)."""
        self._queue.clear()
        self.calls = 0
        self.executed = []
