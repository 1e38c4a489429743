"""`policytrim serve`: a policy behind openpi's websocket + msgpack policy-server protocol.

The protocol (as openpi's ``WebsocketPolicyServer`` / ``openpi_client.WebsocketClientPolicy``):

1. The client opens a websocket (optionally with the header ``Authorization: Api-Key <key>``);
   the server sends one binary frame: msgpack(metadata), see `PolicyService.metadata`.
2. Each request is one binary frame: msgpack(observation dict) for ONE robot (unbatched), e.g.
   ``{"state": float32 [D], "prompt": "close the drawer"}`` (plus ``"image"`` uint8 [h, w, 3]
   for image policies). Arrays use `policytrim.serve.wire`'s encoding (openpi's).
3. Each reply is one binary frame: msgpack({"actions": float32 [H, A], "server_timing":
   {"infer_ms", "prev_total_ms"}, "policy_timing": {"infer_ms"}}). The reply carries the whole
   chunk; the client executes ``metadata["window"]`` actions of it (the window the policy was
   trained to execute, ``policy.default_window``) before asking again. A policy carrying a window
   adaptor (``metadata["adaptive_window"]``: true) adds ``"n_actions"`` (int) to each reply: how
   many actions of this chunk to execute, chosen per call; a client that ignores the field (openpi's)
   still works, at the fixed ``window``.
4. A bad request (malformed msgpack, missing key, wrong shape / dtype, unknown instruction) gets
   one text frame ``"error: <what was wrong and what is accepted>"`` and the connection is closed
   (code 1008); a message over ``max_message_bytes`` is closed by the websocket layer (code 1009).
   Other clients are not affected. ``GET /healthz`` answers 200 ``OK``.

One client's cost stays on that client: a request is decoded and validated on a decoder thread, not
on the event loop, after `policytrim.serve.wire.check_structure` has bounded its number of values and
its nesting (a legal-size message of a million map keys is refused in milliseconds instead of
costing every other client seconds); policy calls run one at a time on a policy thread. The event
loop only moves frames, so it keeps answering health checks and other connections; replies on one
connection come in request order. Each refused request is logged once (peer and reason) by
`RefusalLog`, at most ``max_lines`` per ``interval_s``, with a count of those not logged.
Nothing is unpickled: the only decoder is msgpack with numpy arrays rebuilt by ``np.frombuffer``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import http
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from policytrim import limits as L
from policytrim.envs.base import OBS_IMAGE, OBS_STATE
from policytrim.errors import InputError
from policytrim.policies.adaptor import adaptor_of
from policytrim.runtime import check_device, device_of, torch_threads
from policytrim.serve import wire

logger = logging.getLogger("policytrim.serve")

PROTOCOL = "openpi-websocket-msgpack"
PROMPT_KEY = "prompt"  # openpi's name for the language instruction in an observation
MAX_PROMPT_CHARS = 1000
CLOSE_BAD_REQUEST = 1008  # RFC 6455 "policy violation": the request broke the advertised contract
CLOSE_INTERNAL_ERROR = 1011
# Accepted dtypes per observation key; the first is what the policy computes in.
_ACCEPTED_DTYPES = {OBS_STATE: ("float32", "float64"), OBS_IMAGE: ("uint8",)}
_EXPERT_STATE_DIM = 39  # Meta-World's state, what the scripted experts read


@dataclass
class ServeConfig:
    """How to serve one policy (`serve_policy`)."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise (0.0.0.0 = every interface)."""
    port: int = 8000
    """TCP port; 0 lets the OS pick one (the chosen port is printed)."""
    api_key: str | None = None
    """When set, clients must send ``Authorization: Api-Key <key>`` (health checks need none)."""
    max_message_bytes: int = 8 * 2**20
    """Largest request accepted, in bytes (larger ones are closed with code 1009)."""
    mode: Literal["sampled", "deterministic"] = "sampled"
    """Sampling mode (`policytrim.policies.base`): sampled = how it acts deployed; deterministic = mean / zero noise."""
    seed: int = 0
    """Seed of the per-connection random generators (sampled mode)."""
    threads: int = 0
    """torch intra-op threads for policy calls; 0 = torch's default (one per core)."""
    device: str = "cpu"
    """Where the policy computes: cpu or cuda (`PolicyService` moves it there; requests and replies stay numpy)."""

    def __post_init__(self) -> None:
        if not (_is_int(self.port) and 0 <= self.port <= 65535):
            raise InputError(f"port must be in [0, 65535], got {self.port!r}")
        if not (_is_int(self.max_message_bytes) and 1024 <= self.max_message_bytes <= L.MAX_MESSAGE_BYTES):
            raise InputError(
                f"max message size must be at least 1024 bytes and at most {L.MAX_MESSAGE_BYTES} (1 GiB), "
                f"got {self.max_message_bytes!r}"
            )
        if self.mode not in ("sampled", "deterministic"):
            raise InputError(f"serve mode must be sampled or deterministic, got {self.mode!r}")
        L.check_int("threads", self.threads, 0, L.MAX_THREADS, " (0 = torch's default)")
        L.check_int("seed", self.seed, 0, L.MAX_SEED)
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty; set a non-empty key or serve without one")
        check_device(self.device)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _peer(websocket: Any) -> str:
    address = getattr(websocket, "remote_address", None)
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return "unknown peer"


@dataclass(frozen=True)
class ObsField:
    """One expected observation entry: exact shape and the dtypes accepted for it."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtypes[0], "accepted_dtypes": list(self.dtypes)}


def observation_fields(policy: Any) -> dict[str, ObsField]:
    """What one (unbatched) observation must hold for ``policy``."""
    state_dim = int(getattr(policy, "state_dim", _EXPERT_STATE_DIM))
    fields = {OBS_STATE: ObsField((state_dim,), _ACCEPTED_DTYPES[OBS_STATE])}
    image_shape = getattr(policy, "image_shape", None)
    if image_shape:
        fields[OBS_IMAGE] = ObsField(tuple(int(s) for s in image_shape), _ACCEPTED_DTYPES[OBS_IMAGE])
    return fields


def known_instructions(policy: Any) -> list[str]:
    """The instructions ``policy`` was trained on (scripted experts: those of their tasks)."""
    text = getattr(policy, "text", None)
    if text is not None:
        return list(text.instructions)
    from policytrim.envs.tasks import INSTRUCTIONS

    return [INSTRUCTIONS[t] for t in getattr(policy, "tasks", ())] or list(INSTRUCTIONS.values())


@dataclass
class PolicyService:
    """The transport-free part of the server: metadata, request validation, one policy call. The
    policy is moved to ``config.device`` (in place, as `torch.nn.Module.to` does); scripted experts
    have no parameters and stay on the CPU."""

    policy: Any
    config: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.policy, torch.nn.Module):
            self.policy = self.policy.to(self.config.device)
        self.fields = observation_fields(self.policy)
        self.instructions = known_instructions(self.policy)
        self.default_instruction = self.instructions[0] if len(self.instructions) == 1 else None
        self.adaptor = adaptor_of(self.policy)
        if self.adaptor is not None:
            self.adaptor.eval()  # it acts on the CPU copy of the state and the chunk

    @property
    def metadata(self) -> dict[str, Any]:
        """Sent on connect. ``window``: actions to execute per call; ``chunk_size``: rows per reply."""
        from policytrim import __version__

        spec = self.policy.spec()
        vocabulary = getattr(getattr(self.policy, "text", None), "vocabulary", None)
        return {
            "server": "policytrim",
            "policytrim_version": __version__,
            "protocol": PROTOCOL,
            "policy_kind": spec.get("kind"),
            "window": int(self.policy.default_window),
            "chunk_size": int(self.policy.chunk_size),
            "action_dim": int(self.policy.action_dim),
            "trained_stage": spec.get("trained_stage"),
            "step_budget": spec.get("step_budget"),
            "mode": self.config.mode,
            "device": device_of(self.policy).type,
            "observation": {k: f.describe() for k, f in self.fields.items()},
            "instruction": {
                "key": PROMPT_KEY,
                "required": self.default_instruction is None,
                "default": self.default_instruction,
                "known": self.instructions,
                "handling": (
                    "known instructions, or new phrasings made only of their words"
                    if vocabulary is not None
                    else "known instructions only"
                ),
            },
            "reply": self._reply_contract(),
            "max_message_bytes": int(self.config.max_message_bytes),
            "adaptive_window": self.adaptor is not None,
            "windows": None if self.adaptor is None else list(self.adaptor.windows),
        }

    def _reply_contract(self) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "actions": {"shape": [int(self.policy.chunk_size), int(self.policy.action_dim)], "dtype": "float32"}
        }
        if self.adaptor is not None:
            reply["n_actions"] = {"type": "int", "meaning": "actions of this chunk to execute before the next call"}
        return reply

    def validate(self, obs: Any) -> tuple[dict[str, torch.Tensor], str]:
        """Batched tensors (batch of 1) and the instruction of one request; else `InputError`."""
        if not isinstance(obs, dict):
            raise InputError(f"a request must be a msgpack map (observation dict), got {type(obs).__name__}")
        missing = [k for k in self.fields if k not in obs]
        if missing:
            raise InputError(
                f"observation is missing {', '.join(map(repr, missing))}; expected keys: {self._expected()}"
            )
        tensors = {}
        for key, spec in self.fields.items():
            value = obs[key]
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"observation {key!r} must be a numpy array {self._expected_one(key)}, got {type(value).__name__}"
                )
            if value.dtype.name not in spec.dtypes:
                raise InputError(
                    f"observation {key!r} has dtype {value.dtype.name}; accepted: {', '.join(spec.dtypes)}"
                )
            if tuple(value.shape) != spec.shape:
                raise InputError(
                    f"observation {key!r} has shape {tuple(value.shape)}, expected {spec.shape} (one "
                    "unbatched observation)"
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise InputError(f"observation {key!r} holds NaN or infinite values")
            tensors[key] = torch.from_numpy(value.astype(spec.dtypes[0], copy=True)).unsqueeze(0)
        prompt = obs.get(PROMPT_KEY, self.default_instruction)
        if prompt is None:
            raise InputError(
                f"observation needs {PROMPT_KEY!r} (the instruction, a string); this policy knows: {self.instructions}"
            )
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"{PROMPT_KEY!r} must be a non-empty string of at most {MAX_PROMPT_CHARS} characters")
        return tensors, prompt

    def decode(self, message: bytes) -> tuple[dict[str, torch.Tensor], str]:
        """`validate` of one msgpack request (`policytrim.serve.wire.unpack`, bounded); else `InputError`."""
        return self.validate(wire.unpack(message))

    def infer(self, obs: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Reply to one request: ``{"actions": float32 [H, A], "policy_timing": {"infer_ms"}}``."""
        return self.act(*self.validate(obs), generator)

    def act(
        self, tensors: dict[str, torch.Tensor], prompt: str, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """`infer` of a validated request (`validate` / `decode`)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            sample = self.policy.sample(
                tensors, [prompt], self.config.mode, [generator] if generator is not None else None
            )
            chunk = sample.actions.detach().to("cpu", torch.float32)
            n_actions = None
            if self.adaptor is not None:
                state = tensors["state"].to("cpu", torch.float32)
                chosen, _ = self.adaptor.sample(
                    state, chunk, self.config.mode, [generator] if generator is not None else None
                )
                n_actions = int(chosen[0])
        infer_ms = (time.perf_counter() - t0) * 1000.0
        reply = {"actions": chunk[0].numpy(), "policy_timing": {"infer_ms": infer_ms}}
        if n_actions is not None:
            reply["n_actions"] = n_actions
        return reply

    def _expected_one(self, key: str) -> str:
        f = self.fields[key]
        return f"of shape {f.shape} and dtype {'/'.join(f.dtypes)}"

    def _expected(self) -> str:
        return ", ".join(f"{k!r} {self._expected_one(k)}" for k in self.fields) + f", {PROMPT_KEY!r} (string)"


class RefusalLog:
    """One warning per refused request (peer and reason), at most ``max_lines`` per ``interval_s``:
    a client sending bad requests in a loop must not flood the log. Refusals over the limit are
    counted, and the count is logged when the next interval's first refusal comes, or on `close`."""

    def __init__(
        self, max_lines: int = 20, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_lines, self.interval_s, self._clock = max_lines, interval_s, clock
        self._start, self._lines, self._suppressed = clock(), 0, 0

    def refused(self, peer: str, reason: str) -> None:
        now = self._clock()
        if now - self._start >= self.interval_s:
            self._summarise(now)
            self._start, self._lines = now, 0
        if self._lines < self.max_lines:
            self._lines += 1
            logger.warning("refused a request from %s: %s", peer, reason)
        else:
            self._suppressed += 1

    def close(self) -> None:
        self._summarise(self._clock())

    def _summarise(self, now: float) -> None:
        if self._suppressed:
            logger.warning(
                "%d more refused requests were not logged in the last %.0f s (at most %d lines per %g s)",
                self._suppressed,
                now - self._start,
                self.max_lines,
                self.interval_s,
            )
            self._suppressed = 0


class PolicyServer:
    """A `PolicyService` on a websocket server (``websockets``' asyncio implementation)."""

    def __init__(self, service: PolicyService, refusals: RefusalLog | None = None) -> None:
        self.service = service
        self.config = service.config
        self.refusals = refusals or RefusalLog()
        self._metadata = wire.pack(service.metadata)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._decoder = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self._connections = 0

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Health checks and the API-key check, before the websocket handshake."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {key}".encode()):
                self.refusals.refused(_peer(connection), "missing or wrong API key (HTTP 401)")
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
                )
        return None

    async def _handler(self, websocket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self._connections += 1
        generator = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + self._connections)
        loop = asyncio.get_running_loop()
        prev_total_ms = None
        peer = _peer(websocket)
        try:
            await websocket.send(self._metadata)
            while True:
                message = await websocket.recv()
                start = time.perf_counter()
                try:
                    if isinstance(message, str):
                        raise InputError("requests must be binary msgpack frames, got a text frame")
                    tensors, prompt = await loop.run_in_executor(self._decoder, self.service.decode, message)
                    del message  # up to max_message_bytes: not kept while the policy computes
                    reply = await loop.run_in_executor(self._executor, self.service.act, tensors, prompt, generator)
                except InputError as exc:
                    self.refusals.refused(peer, str(exc))
                    await self._refuse(websocket, f"error: {exc}", CLOSE_BAD_REQUEST)
                    return
                except Exception as exc:  # a policy bug must not take the server down
                    logger.exception("policy call failed")
                    await self._refuse(websocket, f"internal error: {type(exc).__name__}: {exc}", CLOSE_INTERNAL_ERROR)
                    return
                reply["server_timing"] = {"infer_ms": (time.perf_counter() - start) * 1000.0}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await websocket.send(wire.pack(reply))
                prev_total_ms = (time.perf_counter() - start) * 1000.0
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:  # the websocket layer refused an oversize frame
                self.refusals.refused(peer, f"message over {self.config.max_message_bytes} bytes (closed with 1009)")
            return

    @staticmethod
    async def _refuse(websocket: Any, text: str, code: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await websocket.send(text)
            await websocket.close(code=code, reason=text[:120])
        except ConnectionClosed:
            pass

    async def run(self, stop: asyncio.Event | None = None, ready: Callable[[str, int], None] | None = None) -> None:
        """Serve until ``stop`` is set (forever without one); ``ready(host, port)`` once bound."""
        try:
            from websockets.asyncio.server import serve
        except ImportError:
            raise InputError("serving needs websockets and msgpack: pip install 'policytrim[serve]'") from None
        try:
            server = await serve(
                self._handler,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=int(self.config.max_message_bytes),
                compression=None,
            )
        except OSError as exc:
            raise InputError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}") from None
        async with server:
            host, port = server.sockets[0].getsockname()[:2]
            if ready is not None:
                ready(host, port)
            try:
                await (stop.wait() if stop is not None else server.serve_forever())
            finally:
                self.refusals.close()
        self._executor.shutdown(wait=True)
        self._decoder.shutdown(wait=True)


class ServerThread:
    """A `PolicyServer` on its own event loop in a background thread (tests, notebooks)::

    with ServerThread(PolicyServer(PolicyService(policy, ServeConfig(port=0)))) as running:
        client = PolicyClient(running.host, running.port)
    """

    def __init__(self, server: PolicyServer, timeout_s: float = 30.0) -> None:
        self.server, self.timeout_s = server, timeout_s
        self.host, self.port = "", 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="policytrim-serve", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.server.run(self._stop, self._bound)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    def _bound(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.timeout_s):
            raise RuntimeError(f"the policy server did not start within {self.timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout_s)


def serve_policy(policy_dir: str, config: ServeConfig, ready: Callable[[str, int], None] | None = None) -> None:
    """Load the policy at ``policy_dir`` (a checkpoint directory or ``"expert"``) onto
    ``config.device`` and serve it until interrupted, with ``config.threads`` torch threads (0:
    torch's default); ``ready(host, port)`` is called once the socket is bound. Bad input (an
    unreadable policy, a busy port, a device this machine lacks) raises `InputError`."""
    from policytrim.policies import load_policy

    policy = load_policy(policy_dir)
    policy.eval()
    server = PolicyServer(PolicyService(policy, config))
    with torch_threads(config.threads or None):
        try:
            asyncio.run(server.run(ready=ready))
        except KeyboardInterrupt:
            pass
