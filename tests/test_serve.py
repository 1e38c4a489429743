"""`policytrim serve` on loopback: the msgpack-numpy codec, metadata, replies equal to a local policy
call, 8 concurrent clients, faults (bad requests, oversize messages, clients vanishing mid-request)
and the API key. A real websockets server and client; the policy is a small randomly initialised
TinyVLA (the protocol does not care whether it is trained; tests/test_serve_robot_loop.py uses a
trained one)."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("websockets", reason="needs the serve extra: pip install 'policytrim[serve]'")
msgpack = pytest.importorskip("msgpack", reason="needs the serve extra: pip install 'policytrim[serve]'")

from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from policytrim.config import PolicyConfig  # noqa: E402
from policytrim.envs.tasks import INSTRUCTIONS  # noqa: E402
from policytrim.errors import InputError  # noqa: E402
from policytrim.policies import load_policy  # noqa: E402
from policytrim.policies.tinyvla import TinyVLA  # noqa: E402
from policytrim.serve import wire  # noqa: E402
from policytrim.serve.client import ActionChunkBroker, PolicyClient, ServerError  # noqa: E402
from policytrim.serve.server import (  # noqa: E402
    CLOSE_BAD_REQUEST,
    PolicyServer,
    PolicyService,
    ServeConfig,
    ServerThread,
)

TASKS = ("drawer-close-v3", "reach-v3")
MAX_BYTES = 2**20


def make_policy() -> TinyVLA:
    torch.manual_seed(0)
    cfg = PolicyConfig(chunk_size=8, default_window=3, hidden_dim=32, num_layers=1)
    return TinyVLA.from_config(cfg, 39, 4, [INSTRUCTIONS[t] for t in TASKS]).eval()


def expected_actions(policy: TinyVLA, state: np.ndarray, prompt: str) -> np.ndarray:
    return policy.sample({"state": torch.from_numpy(state).unsqueeze(0)}, [prompt], "deterministic").actions[0].numpy()


@pytest.fixture(scope="module")
def policy() -> TinyVLA:
    return make_policy()


@pytest.fixture(scope="module")
def server(policy):
    config = ServeConfig(port=0, mode="deterministic", max_message_bytes=MAX_BYTES)
    with ServerThread(PolicyServer(PolicyService(policy, config))) as running:
        yield running


def healthy(running) -> bool:
    with urllib.request.urlopen(f"http://{running.host}:{running.port}/healthz", timeout=10) as response:
        return response.status == 200 and response.read() == b"OK\n"


def request(state: np.ndarray, prompt: str = INSTRUCTIONS["drawer-close-v3"]) -> dict:
    return {"state": state, "prompt": prompt}


# ---------------------------------------------------------------- codec


def test_arrays_travel_in_openpis_encoding_and_back():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(wire.pack({"a": x, "s": np.int64(7)}))
    assert raw["a"] == {b"__ndarray__": True, b"data": x.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i8"}
    back = wire.unpack(wire.pack({"a": x, "s": np.int64(7), "p": "text", "n": [1, 2.5]}))
    np.testing.assert_array_equal(back["a"], x)
    assert back["a"].dtype == np.float32 and back["s"] == 7 and back["s"].dtype == np.int64
    assert back["p"] == "text" and back["n"] == [1, 2.5]


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xc1", "malformed msgpack"),
        (msgpack.packb([1, 2])[:-1], "malformed msgpack"),
        (msgpack.packb(1) + b"x", "malformed msgpack"),
        (msgpack.packb(msgpack.ExtType(5, b"ab")), "extension type 5 is refused"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "object dtype"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<c8", b"shape": [1]}), "complex dtype"),
        (
            msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|V8", b"shape": [1]}),
            "void/structured dtype",
        ),
        (
            msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "(2,)<f4", b"shape": [1]}),
            "void/structured dtype",
        ),
        (
            msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}),
            "needs 8 bytes, got 7",
        ),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "non-negative integers"),
        (
            msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [2**32, 2**32]}),
            "needs 73786976294838206464 bytes, got 0",
        ),
        (
            msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}),
            "unknown numpy dtype",
        ),
        (msgpack.packb({b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}), "object dtype"),
    ],
)
def test_the_decoder_refuses_malformed_and_unsafe_messages(payload, message):
    with pytest.raises(InputError, match=message):
        wire.unpack(payload)


@pytest.mark.parametrize(
    "payload, message",
    [
        (msgpack.packb({str(i): 0 for i in range(6000)}), r"more than 10000 values \(a map of 6000 entries\)"),
        (msgpack.packb([[0] * 20] * 1000), r"more than 10000 values \(a list of 20 items\)"),
        (msgpack.packb([[0] * 9998, 0]), r"more than 10000 values \(keys, values and items\)"),
        (b"\x91" * 17 + b"\x01", "more than 16 deep"),
        (b"\xdf\xff\xff\xff\xff", r"a map of 4294967295 entries"),  # a header alone: refused before any entry is read
    ],
)
def test_the_decoder_bounds_values_and_nesting_before_decoding(payload, message):
    with pytest.raises(InputError, match=message):
        wire.unpack(payload)


def test_a_map_of_many_keys_is_refused_without_decoding_it():
    # 2 MB; tests/test_serve_isolation.py sends 1.4 M keys (8 MB) to a running server
    bomb = msgpack.packb({f"{i:x}": 0 for i in range(300_000)})
    t0 = time.perf_counter()
    msgpack.unpackb(bomb)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="a map of 300000 entries"):
        wire.unpack(bomb)
    refuse_s = time.perf_counter() - t0
    assert refuse_s < decode_s / 20, (refuse_s, decode_s)
    at_the_bound = {str(i): 0 for i in range(4999)}  # 1 + 2 x 4999 values
    assert len(wire.unpack(msgpack.packb(at_the_bound))) == 4999
    with pytest.raises(InputError, match="more than 10000 values"):
        wire.unpack(msgpack.packb({str(i): 0 for i in range(5000)}))


def test_the_encoder_refuses_object_and_complex_arrays():
    for bad in (np.array([{}], dtype=object), np.zeros(2, np.complex64)):
        with pytest.raises(InputError, match="refused"):
            wire.pack({"x": bad})


# ---------------------------------------------------------------- protocol


def test_metadata_advertises_the_trained_window_and_the_observation_contract(server, policy):
    with PolicyClient(server.host, server.port) as client:
        meta = client.metadata
    assert meta["window"] == policy.default_window == 3
    assert meta["chunk_size"] == 8 and meta["action_dim"] == 4
    assert meta["observation"] == {
        "state": {"shape": [39], "dtype": "float32", "accepted_dtypes": ["float32", "float64"]}
    }
    assert meta["instruction"]["key"] == "prompt" and meta["instruction"]["required"] is True
    assert meta["instruction"]["known"] == [INSTRUCTIONS[t] for t in TASKS]
    assert meta["max_message_bytes"] == MAX_BYTES and meta["mode"] == "deterministic" and meta["device"] == "cpu"
    assert meta["trained_stage"] == "bc" and meta["step_budget"] is None  # a freshly built policy's spec


def test_metadata_carries_how_a_saved_policy_was_trained(tmp_path):
    trained = make_policy()
    trained.mark_trained("trim", 6, 120.5)  # as the trainer marks a Stage 2 best checkpoint
    trained.save_pretrained(tmp_path / "policy")
    meta = PolicyService(load_policy(tmp_path / "policy")).metadata
    assert (meta["window"], meta["trained_stage"], meta["step_budget"]) == (6, "trim", 120.5)


def test_replies_carry_the_policys_chunk_and_timings(server, policy):
    rng = np.random.default_rng(0)
    with PolicyClient(server.host, server.port) as client:
        for task in TASKS:
            state = rng.normal(size=39).astype(np.float32)
            reply = client.infer(request(state, INSTRUCTIONS[task]))
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (8, 4)
            np.testing.assert_allclose(
                reply["actions"], expected_actions(policy, state, INSTRUCTIONS[task]), rtol=0, atol=1e-6
            )
            assert (
                reply["policy_timing"]["infer_ms"] > 0
                and reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"]
            )
        reply = client.infer(request(state.astype(np.float64)))  # float64 states are accepted and cast
        np.testing.assert_allclose(
            reply["actions"], expected_actions(policy, state, INSTRUCTIONS["drawer-close-v3"]), atol=1e-6
        )
        assert "prev_total_ms" in reply["server_timing"]


def test_the_broker_calls_the_server_once_per_window(server):
    with PolicyClient(server.host, server.port) as client:
        broker = ActionChunkBroker(client)
        state = np.zeros(39, np.float32)
        first = client.infer(request(state))["actions"]
        actions = [broker.act(request(state)) for _ in range(7)]
        assert broker.calls == 3 == client.calls - 1  # ceil(7 / 3)
        np.testing.assert_array_equal(np.stack(actions[:3]), first[:3])
        broker.reset()
        broker.act(request(state))
        assert broker.calls == 1
        with pytest.raises(InputError, match="window"):
            ActionChunkBroker(client, window=9)


def test_eight_concurrent_clients_get_their_own_replies_in_order(server, policy):
    clients, per_client = 8, 12
    rng = np.random.default_rng(1)
    states = rng.normal(size=(clients, per_client, 39)).astype(np.float32)
    prompts = [INSTRUCTIONS[TASKS[c % 2]] for c in range(clients)]
    expected = [[expected_actions(policy, states[c, i], prompts[c]) for i in range(per_client)] for c in range(clients)]
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def robot(c: int) -> None:
        try:
            with PolicyClient(server.host, server.port) as client:
                barrier.wait(timeout=30)
                got[c] = [client.infer(request(states[c, i], prompts[c]))["actions"] for i in range(per_client)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=robot, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - start
    assert not errors and len(got) == clients
    for c in range(clients):
        for i in range(per_client):
            np.testing.assert_allclose(got[c][i], expected[c][i], atol=1e-6)
    assert elapsed < 60, f"{clients * per_client} requests took {elapsed:.1f} s"
    assert healthy(server)


# ---------------------------------------------------------------- faults


def _raw_exchange(running, frame: bytes | str) -> tuple[str | bytes, int | None]:
    """Send one frame on a fresh connection; the reply and the close code that follows."""
    with connect(f"ws://{running.host}:{running.port}", max_size=None) as ws:
        wire.unpack(ws.recv(timeout=10))  # metadata
        ws.send(frame)
        try:
            reply = ws.recv(timeout=30)
        except ConnectionClosed as exc:
            return b"", exc.rcvd.code if exc.rcvd else None
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        return reply, closed.value.rcvd.code if closed.value.rcvd else None


def _array(data: bytes, dtype: str, shape: list[int]) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


BAD_REQUESTS = {
    "malformed msgpack": (b"\x93\x01", "malformed msgpack"),
    "text frame": ('{"state": []}', "binary msgpack frames"),
    "not a map": (wire.pack([1, 2, 3]), "must be a msgpack map"),
    "missing state": (wire.pack({"prompt": INSTRUCTIONS["reach-v3"]}), "missing 'state'"),
    "missing prompt": (wire.pack({"state": np.zeros(39, np.float32)}), "needs 'prompt'"),
    "wrong dtype": (wire.pack(request(np.zeros(39, np.int64))), "dtype int64; accepted: float32, float64"),
    "wrong shape": (wire.pack(request(np.zeros((1, 39), np.float32))), r"shape \(1, 39\), expected \(39,\)"),
    "huge array within the size limit": (wire.pack(request(np.zeros(200_000, np.float32))), r"shape \(200000,\)"),
    "state as a list": (wire.pack(request([0.0] * 39)), "must be a numpy array"),
    "NaN state": (wire.pack(request(np.full(39, np.nan, np.float32))), "NaN or infinite"),
    "unknown instruction": (wire.pack(request(np.zeros(39, np.float32), "fly to the moon")), "never saw"),
    "object array": (msgpack.packb({"state": _array(b"\0" * 8, "|O", [1]), "prompt": "x"}), "object dtype"),
    "pickle inside an ext type": (
        msgpack.packb({"state": msgpack.ExtType(1, b"\x80\x04K\x01."), "prompt": "x"}),
        "extension type 1 is refused",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_bad_requests_get_an_error_frame_and_the_server_keeps_serving(server, kind):
    frame, message = BAD_REQUESTS[kind]
    reply, code = _raw_exchange(server, frame)
    assert isinstance(reply, str) and reply.startswith("error: ")
    assert re.search(message, reply), reply
    assert "\n" not in reply and code == CLOSE_BAD_REQUEST
    assert healthy(server)
    with PolicyClient(server.host, server.port) as client:
        assert client.infer(request(np.zeros(39, np.float32)))["actions"].shape == (8, 4)


def test_a_message_over_the_size_limit_is_closed_with_1009(server):
    reply, code = _raw_exchange(server, wire.pack(request(np.zeros(MAX_BYTES // 4 + 16, np.float32))))
    assert reply == b"" and code == 1009
    assert healthy(server)


def test_the_client_raises_the_servers_error_line(server):
    with PolicyClient(server.host, server.port) as client:
        with pytest.raises(ServerError, match="missing 'state'"):
            client.infer({"prompt": "x"})


def test_clients_vanishing_mid_request_do_not_take_the_server_down(server, policy):
    for _ in range(5):
        with connect(f"ws://{server.host}:{server.port}") as ws:
            ws.recv(timeout=10)
            ws.send(wire.pack(request(np.ones(39, np.float32))))
            ws.socket.close()  # no close handshake: the TCP connection just goes away
    assert healthy(server)
    state = np.full(39, 0.5, np.float32)
    with PolicyClient(server.host, server.port) as client:
        np.testing.assert_allclose(
            client.infer(request(state))["actions"],
            expected_actions(policy, state, INSTRUCTIONS["drawer-close-v3"]),
            atol=1e-6,
        )


# ---------------------------------------------------------------- API key


def test_the_api_key_is_required_when_set(policy, caplog):
    config = ServeConfig(port=0, mode="deterministic", api_key="s3cret")
    with ServerThread(PolicyServer(PolicyService(policy, config))) as running:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as refused:
                PolicyClient(running.host, running.port, api_key=key)
            assert refused.value.response.status_code == 401
        logged = [r.getMessage() for r in caplog.records if r.name == "policytrim.serve"]
        line = r"refused a request from 127\.0\.0\.1:\d+: missing or wrong API key \(HTTP 401\)"
        assert len(logged) == 2 and all(re.fullmatch(line, m) for m in logged), logged
        assert healthy(running)  # health checks need no key
        with PolicyClient(running.host, running.port, api_key="s3cret") as client:
            assert client.infer(request(np.zeros(39, np.float32)))["actions"].shape == (8, 4)


def test_serve_config_is_validated():
    for kwargs, message in (
        ({"port": 70000}, "port"),
        ({"max_message_bytes": 10}, "at least 1024"),
        ({"api_key": " "}, "API key is empty"),
        ({"mode": "train"}, "sampled or deterministic"),
        ({"max_message_bytes": 2**40}, "at most"),
        ({"threads": 10**6}, r"threads must be an integer in \[0, 1024\]"),
        ({"seed": -1}, "seed must be"),
        ({"port": "8000"}, "port"),
        ({"device": "tpu"}, "device must be one of cpu, cuda"),
    ):
        with pytest.raises(InputError, match=message):
            ServeConfig(**kwargs)


def test_sampled_mode_draws_from_a_per_connection_generator(policy):
    with ServerThread(PolicyServer(PolicyService(policy, ServeConfig(port=0, mode="sampled", seed=3)))) as running:
        state = np.zeros(39, np.float32)
        with PolicyClient(running.host, running.port) as client:
            a, b = (client.infer(request(state))["actions"] for _ in range(2))
        assert not np.array_equal(a, b)  # fresh noise per call
        assert np.all(np.abs(a) <= 1.0)


def test_a_busy_port_is_one_clear_error(server, policy):
    config = ServeConfig(port=server.port, mode="deterministic")
    with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        with ServerThread(PolicyServer(PolicyService(policy, config))):
            pass
    assert healthy(server)
