"""Process-level faults on the shared deployment: a worker SIGKILLed mid-stream,
memcached stopped and restarted mid-run, and slow clients trying to exhaust a worker."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from gateway import create_app
from tests.conftest import make_env

from .conftest import World, bearer, chat


def _workers(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def _server_pid_for(world: World, client_port: int) -> int:
    """The worker holding the server side of the connection from ``client_port``."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{client_port} )"],
                         capture_output=True, text=True, timeout=5).stdout
    match = re.search(r"pid=(\d+)", out)
    assert match, out
    return int(match.group(1))


class Stream(threading.Thread):
    """A streaming chat request read on a thread; remembers its connection's port."""

    def __init__(self, world: World, key: str, model: str) -> None:
        super().__init__(daemon=True)
        self.world, self.key, self.model = world, key, model
        self.port = 0
        self.first = threading.Event()
        self.raw = b""
        self.error: str | None = None

    def run(self) -> None:
        try:
            with requests.post(self.world.url + "/v1/chat/completions", headers=bearer(self.key), stream=True,
                               timeout=30, json=chat(self.model, "[[tokens:16]] [[interval:0.25]]",
                                                     stream=True)) as response:
                self.port = response.raw._connection.sock.getsockname()[1]  # type: ignore[union-attr]
                for chunk in response.iter_content(chunk_size=None):
                    self.raw += chunk
                    self.first.set()
        except requests.RequestException as exc:
            self.error = type(exc).__name__
        finally:
            self.first.set()
            self.world.saw(self.raw)


def test_worker_killed_mid_stream_leaves_other_streams_intact_and_its_reservation_swept(world: World) -> None:
    master = world.gateway.process.pid
    workers = _workers(master)
    assert len(workers) == 2
    model = world.backend()
    streams: list[Stream] = []
    for _attempt in range(4):  # bursts of parallel streams until both workers hold one
        burst = []
        for _ in range(6):
            key, user_id, _ = world.new_key()
            stream = Stream(world, key, model)
            stream.user_id = user_id  # type: ignore[attr-defined]
            burst.append(stream)
        for stream in burst:
            stream.start()
        for stream in burst:
            assert stream.first.wait(10)
            stream.pid = _server_pid_for(world, stream.port)  # type: ignore[attr-defined]
        streams += burst
        if len({s.pid for s in streams}) == 2:  # type: ignore[attr-defined]
            break
    victim_pid = streams[0].pid  # type: ignore[attr-defined]
    os.kill(victim_pid, signal.SIGKILL)
    for stream in streams:
        stream.join(30)
        assert not stream.is_alive()
    killed = [s for s in streams if s.pid == victim_pid]  # type: ignore[attr-defined]
    survived = [s for s in streams if s.pid != victim_pid]  # type: ignore[attr-defined]
    assert killed and survived
    for stream in survived:
        assert stream.error is None and stream.raw.rstrip().endswith(b"data: [DONE]")
        assert stream.raw.count(b'"content"') >= 16
    for stream in killed:
        assert b"[DONE]" not in stream.raw
    # the worker is replaced
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (len(_workers(master)) != 2 or victim_pid in _workers(master)):
        time.sleep(0.1)
    assert len(_workers(master)) == 2 and victim_pid not in _workers(master)
    for stream in killed:
        assert world.counters(stream.user_id)["reserved_requests"] == 1  # type: ignore[attr-defined]
    # the sweep (what `flask release-reservations --older-than 0` runs) frees the dead request's hold
    app = create_app(env=make_env(world.database_url, Path(world.gateway.log_path).parent / "sweep"))
    with app.app_context():
        from gateway.extensions import db
        from gateway.proxy import quota

        assert quota.release_stale(0) >= len(killed)
        db.engine.dispose()
    for stream in streams:
        counters = world.counters(stream.user_id)  # type: ignore[attr-defined]
        assert counters["reserved_tokens"] == 0 and counters["reserved_requests"] == 0
    time.sleep(0.5)  # the respawned worker serves
    for _ in range(4):
        assert requests.post(world.url + "/v1/chat/completions", headers=bearer(world.key),
                             json=chat("gpt-4o-mini"), timeout=10).status_code == 200


def test_memcached_stopped_and_restarted_mid_run_fails_open_and_recovers(world: World) -> None:
    model = world.backend()
    key, user_id, _ = world.new_key()
    stream = Stream(world, key, model)
    stream.start()
    assert stream.first.wait(10)
    world.memcached.stop()
    try:
        for _ in range(4):
            t0 = time.monotonic()
            response = world.http().post(world.url + "/v1/chat/completions", headers=bearer(key),
                                         json=chat(model), timeout=10)
            assert response.status_code == 200, response.text  # fail-open: quotas in the database still bound spend
            assert "X-RateLimit-Limit" not in response.headers
            assert time.monotonic() - t0 < 3
    finally:
        world.memcached.start()
    stream.join(30)
    assert stream.raw.rstrip().endswith(b"data: [DONE]")
    deadline = time.monotonic() + 10
    limited = None
    while time.monotonic() < deadline:
        response = world.http().post(world.url + "/v1/chat/completions", headers=bearer(key), json=chat(model))
        assert response.status_code == 200
        if "X-RateLimit-Limit" in response.headers:
            limited = response
            break
        time.sleep(0.2)
    assert limited is not None, "rate limiting did not come back after memcached restarted"
    assert limited.headers["X-RateLimit-Limit"] == "120"
    assert len(world.wait_rows(user_id, 1 + 4 + 1)) >= 6
    metrics = world.http().get(world.url + "/metrics", headers={"Authorization": "Bearer " + _metrics_token()})
    counted = re.search(r"^keygate_limiter_storage_errors_total (\S+)$", metrics.text, re.M)
    assert counted and float(counted.group(1)) >= 1  # the outage was counted, not just survived


def _metrics_token() -> str:
    from .conftest import METRICS_TOKEN

    return METRICS_TOKEN


def _slow_socket(world: World) -> socket.socket:
    """A connection from 127.0.0.2: the slow clients are one address of their own, so
    the per-address cap on bodies being read (BODY_READS_PER_ADDRESS) bites them and
    not the well-behaved client measured beside them."""
    parts = urlsplit(world.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5, source_address=("127.0.0.2", 0))


def test_slow_clients_cannot_exhaust_a_worker(world: World) -> None:
    model = world.backend()
    key, _, _ = world.new_key()
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(60):  # trickled headers: a request line and one header byte at a time
            sock = _slow_socket(world)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(sock)
        for _ in range(30):  # trickled body: headers complete, 100 KB promised, a few bytes sent
            sock = _slow_socket(world)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\"")
            held.append(sock)
        readers = []
        for _ in range(3):  # readers that stop reading a multi-megabyte answer
            response = requests.post(world.url + "/v1/chat/completions", headers=bearer(key), stream=True,
                                     timeout=10, json=chat(model, "[[big_event:4000000]] [[tokens:2]]",
                                                           stream=True))
            readers.append(response)

        def trickle() -> None:
            while not stop.is_set():
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                stop.wait(0.5)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        latencies = []
        for _ in range(12):  # fresh connections: both workers get measured
            t0 = time.monotonic()
            response = requests.post(world.url + "/v1/chat/completions", headers=bearer(world.key),
                                     json=chat("gpt-4o-mini"), timeout=10)
            latencies.append(time.monotonic() - t0)
            assert response.status_code == 200
            world.saw(response.text)
        assert max(latencies) < 2.0, latencies
    finally:
        stop.set()
        for sock in held:
            sock.close()
        for response in locals().get("readers", []):
            response.close()
