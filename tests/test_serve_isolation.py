"""One client's cost stays on that client (issue 31): a `policytrim serve` process receives, from one
client, legal-size requests that are each a msgpack map of ~1.4 M short keys (8.0 MB, under the
8 MiB limit; msgpack alone takes about a second to decode one) while a second client keeps
asking for chunks. The attacker gets one error frame per request; the second client's round trips
stay close to its own quiet baseline; the server's memory does not grow by the ~135 MB per message
the decoding cost before; each refusal is logged once, with its peer, and the log is rate-limited.

Real processes and sockets: the server is the `policytrim serve` command in its own process (so
its memory and its event loop are its own), the clients are `websockets` clients in threads here.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets", reason="needs the serve extra: pip install 'policytrim[serve]'")
msgpack = pytest.importorskip("msgpack", reason="needs the serve extra: pip install 'policytrim[serve]'")

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from policytrim.serve import wire  # noqa: E402
from policytrim.serve.client import PolicyClient  # noqa: E402
from policytrim.serve.server import (  # noqa: E402
    CLOSE_BAD_REQUEST,
    PolicyServer,
    PolicyService,
    RefusalLog,
    ServeConfig,
    ServerThread,
)
from test_serve import make_policy, request  # noqa: E402

ATTACKS = 10


def map_bomb(limit: int = 8 * 2**20 - 4096) -> bytes:
    """A msgpack map of as many short keys as fit under ``limit`` bytes (~1.4 M)."""
    keys = (limit - 16) // 6  # 4-character keys: 5 bytes each, plus a 1-byte value
    chars = [chr(c) for c in range(33, 127)]
    n = len(chars)
    key = lambda i: chars[i % n] + chars[i // n % n] + chars[i // n**2 % n] + chars[i // n**3 % n]  # noqa: E731
    return msgpack.packb({key(i): 0 for i in range(keys)})


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def round_trips(port: int, seconds: float, out: list[float], stop: threading.Event | None = None) -> None:
    state = np.zeros(39, np.float32)
    with PolicyClient("127.0.0.1", port) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            t0 = time.perf_counter()
            client.infer(request(state))
            out.append(time.perf_counter() - t0)


def attack(port: int, bomb: bytes, replies: list[tuple[str, int | None, int]]) -> None:
    """``ATTACKS`` bombs, one per connection (each is refused and closed); (reply, close code, local port)."""
    for _ in range(ATTACKS):
        with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
            ws.recv(timeout=30)  # metadata
            local_port = ws.socket.getsockname()[1]
            ws.send(bomb)
            reply = ws.recv(timeout=60)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=60)
            replies.append((reply, closed.value.rcvd.code if closed.value.rcvd else None, local_port))


@pytest.fixture()
def served(tmp_path):
    make_policy().save_pretrained(tmp_path / "policy")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policytrim.cli",
            "serve",
            "--policy",
            str(tmp_path / "policy"),
            "--port",
            "0",
            "--mode",
            "deterministic",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line, server.stderr.read() if server.poll() is not None else line
        yield server, int(line.split("ws://127.0.0.1:")[1].split(";")[0])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_client_sending_map_bombs_does_not_stall_another_client(served):
    server, port = served
    bomb = map_bomb()
    assert len(bomb) < 8 * 2**20  # legal size: not closed by the 8 MiB frame limit
    quiet: list[float] = []
    round_trips(port, 2.0, quiet)
    rss_before = rss_kb(server.pid)

    during: list[float] = []
    replies: list[tuple[str, int | None, int]] = []
    stop = threading.Event()
    victim = threading.Thread(target=round_trips, args=(port, 120.0, during, stop))
    victim.start()
    try:
        attack(port, bomb, replies)
    finally:
        stop.set()
        victim.join(timeout=60)
    rss_after = rss_kb(server.pid)
    server.terminate()
    _, stderr = server.communicate(timeout=30)

    quiet_ms, during_ms = statistics.median(quiet) * 1e3, statistics.median(during) * 1e3
    p90_ms = sorted(during)[int(0.9 * (len(during) - 1))] * 1e3
    print(
        f"round trip: quiet median {quiet_ms:.1f} ms ({len(quiet)}); under attack median {during_ms:.1f} ms, "
        f"p90 {p90_ms:.1f} ms, max {max(during) * 1e3:.1f} ms ({len(during)}); RSS {rss_before} -> {rss_after} kB"
    )
    assert len(during) >= 10
    assert during_ms < max(10 * quiet_ms, 20.0) and p90_ms < 300.0
    assert rss_after - rss_before < 64 * 1024  # decoding cost ~135 MB per message before the bound
    assert len(replies) == ATTACKS
    for reply, code, _ in replies:  # one error frame each, then a 1008 close
        assert isinstance(reply, str) and reply.startswith("error: message holds more than"), reply
        assert code == CLOSE_BAD_REQUEST
    refusals = [line for line in stderr.splitlines() if line.startswith("refused a request from 127.0.0.1:")]
    assert len(refusals) == ATTACKS, stderr[-3000:]
    for _, _, local_port in replies:  # each attacker connection once, with the reason
        mine = [line for line in refusals if line.startswith(f"refused a request from 127.0.0.1:{local_port}: ")]
        assert len(mine) == 1 and "message holds more than" in mine[0], refusals


def test_refusals_are_logged_once_each_and_rate_limited(caplog):
    now = [0.0]
    refusals = RefusalLog(max_lines=3, interval_s=60.0, clock=lambda: now[0])
    config = ServeConfig(port=0, mode="deterministic", max_message_bytes=2**20)
    bad = [wire.pack([1]), wire.pack({"prompt": "x"}), b"\xc1", wire.pack(request(np.zeros(3, np.float32))), "text"]
    ports = []
    with caplog.at_level(logging.WARNING, logger="policytrim.serve"):
        with ServerThread(PolicyServer(PolicyService(make_policy(), config), refusals)) as running:

            def refuse(frame: bytes | str) -> int:
                with connect(f"ws://{running.host}:{running.port}", max_size=None) as ws:
                    ws.recv(timeout=10)
                    local_port = ws.socket.getsockname()[1]
                    ws.send(frame)
                    if len(frame) <= 2**20:
                        assert ws.recv(timeout=30).startswith("error: ")
                    with pytest.raises(ConnectionClosed):
                        ws.recv(timeout=30)
                    return local_port

            ports = [refuse(frame) for frame in bad]  # 3 logged, 2 counted
            now[0] = 61.0  # the next interval: the count of those not logged, then the line
            ports.append(refuse(wire.pack(np.zeros(2**18 + 64, np.float32))))  # over the size limit: 1009
            with PolicyClient(running.host, running.port) as client:  # good requests are not logged
                client.infer(request(np.zeros(39, np.float32)))
    lines = [r.getMessage() for r in caplog.records if r.name == "policytrim.serve"]
    assert len(lines) == 5, lines
    reasons = ("must be a msgpack map", "missing 'state'", "malformed msgpack")
    for line, port, reason in zip(lines[:3], ports[:3], reasons, strict=True):
        assert line.startswith(f"refused a request from 127.0.0.1:{port}: ") and reason in line, line
    assert lines[3] == "2 more refused requests were not logged in the last 61 s (at most 3 lines per 60 s)"
    assert lines[4] == f"refused a request from 127.0.0.1:{ports[5]}: message over {2**20} bytes (closed with 1009)"
    assert not [line for line in lines for p in ports[3:5] if line.startswith(f"refused a request from 127.0.0.1:{p}:")]


def test_refusals_over_the_limit_are_summarised_when_the_server_stops(caplog):
    refusals = RefusalLog(max_lines=1, interval_s=3600.0)
    with caplog.at_level(logging.WARNING, logger="policytrim.serve"):
        for peer in ("a:1", "b:2", "c:3"):
            refusals.refused(peer, "bad")
        refusals.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "refused a request from a:1: bad"
    assert lines[1].startswith("2 more refused requests were not logged in the last ") and len(lines) == 2
