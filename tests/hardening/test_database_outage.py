"""The database goes away while streams are running.

PostgreSQL: the gateway reaches the shared server through a TCP forwarder owned by the
test, which is closed (listener shut, every connection cut) and reopened - a stopped
database as the gateway sees it. SQLite: another connection holds the write lock
(BEGIN IMMEDIATE) for several seconds.

New requests get a clean 503 (no driver text); a stream already running finishes for
its client, and its usage is written exactly once after the database is back.
"""
from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.fixtures.gateway_server import GatewayServer, start_gateway

from .conftest import World, bearer, chat

OUTAGE_SECONDS = 4.0


class Forwarder:
    """A loopback TCP forwarder that can be closed (refusing and cutting connections)
    and reopened on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        # shutdown first: on Linux, close() alone leaves a listener that another thread
        # is blocked in accept() on still accepting connections
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def reopen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()


@pytest.fixture
def outage_gateway(world: World, gateway_env: dict[str, str], tmp_path) -> Iterator[tuple[GatewayServer, object]]:
    """A gateway on the shared database whose database the test can take away:
    yields (gateway, outage) where ``outage()`` is a context manager."""
    url = make_url(world.database_url)
    env = dict(gateway_env)
    if url.get_backend_name() == "postgresql":
        forwarder = Forwarder((url.host or "127.0.0.1", url.port or 5432))
        env["DATABASE_URL"] = url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)

        @contextlib.contextmanager
        def outage() -> Iterator[None]:
            forwarder.close()
            try:
                yield
            finally:
                forwarder.reopen()
    else:
        forwarder = None

        @contextlib.contextmanager
        def outage() -> Iterator[None]:
            holder = sqlite3.connect(url.database, timeout=1, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                holder.execute("ROLLBACK")
                holder.close()
    server = start_gateway(env, tmp_path / "outage.log", workers=2)
    world.extra_logs.append(server.log_path)
    yield server, outage
    server.stop()
    if forwarder is not None:
        forwarder.close()


def test_database_outage_gives_fast_clean_503_and_running_streams_record_once(
        world: World, outage_gateway: tuple[GatewayServer, object]) -> None:
    server, outage = outage_gateway
    model = world.backend()
    key, user_id, _ = world.new_key()
    started = threading.Event()
    result: dict[str, object] = {}

    def run_stream() -> None:
        with requests.post(server.url + "/v1/chat/completions", headers=bearer(key), stream=True, timeout=60,
                           json=chat(model, "[[tokens:20]] [[interval:0.25]]", stream=True)) as response:
            parts = []
            for chunk in response.iter_content(chunk_size=None):
                parts.append(chunk)
                started.set()
            result["status"], result["raw"] = response.status_code, b"".join(parts)

    streamer = threading.Thread(target=run_stream)
    streamer.start()
    assert started.wait(10)
    answers = []
    with outage():
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline and len(answers) < 8:
            t0 = time.monotonic()
            response = requests.post(server.url + "/v1/chat/completions", headers=bearer(key), timeout=30,
                                     json=chat(model))
            answers.append((response.status_code, time.monotonic() - t0, response.text))
            world.saw(response.text)
            time.sleep(0.2)
    streamer.join(60)
    assert not streamer.is_alive()
    assert result["status"] == 200 and bytes(result["raw"]).rstrip().endswith(b"data: [DONE]")  # type: ignore[arg-type]
    world.saw(bytes(result["raw"]))  # type: ignore[arg-type]
    refused = [a for a in answers if a[0] != 200]
    assert refused, answers
    for status, elapsed, body in refused:
        assert status == 503, body
        assert "database is unavailable" in body
        for marker in ("psycopg", "sqlite", "OperationalError", "Traceback", "SELECT", "UPDATE"):
            assert marker not in body
        assert elapsed < 3.0, answers
    # after recovery: the stream's usage exactly once (plus any request admitted meanwhile)
    admitted = sum(1 for a in answers if a[0] == 200)
    rows = world.wait_rows(user_id, 1 + admitted, timeout=30)
    streamed = [r for r in rows if r["streamed"]]
    assert len(streamed) == 1 and streamed[0]["tokens_out"] == 20
    time.sleep(1.0)
    assert len(world.log_rows(user_id)) == 1 + admitted
    counters = world.counters(user_id)
    assert counters["requests"] == 1 + admitted and counters["reserved_tokens"] == 0
    assert requests.post(server.url + "/v1/chat/completions", headers=bearer(key), json=chat(model),
                         timeout=10).status_code == 200


@pytest.fixture
def single_worker_outage(world: World, gateway_env: dict[str, str], tmp_path) -> Iterator[tuple[GatewayServer, object]]:
    """As ``outage_gateway`` but one worker, so requests right after the cut reach the
    same worker whose snapshot was fresh a moment ago (its refresh is not due, so the
    first database statement of the request is the reserve step's)."""
    url = make_url(world.database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the unwrapped driver error comes from PostgreSQL's raw pool checkout")
    forwarder = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    env = dict(gateway_env, CACHE_REFRESH_SECONDS="1",
               DATABASE_URL=url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False))
    server = start_gateway(env, tmp_path / "outage1.log", workers=1)
    world.extra_logs.append(server.log_path)
    yield server, forwarder
    server.stop()
    forwarder.close()


def test_refused_reconnect_on_the_hot_path_is_503_and_a_stream_ending_in_the_outage_keeps_its_row(
        world: World, single_worker_outage: tuple[GatewayServer, Forwarder]) -> None:
    """PostgreSQL refusing connections while the hot path opens a new one: the driver's
    own OperationalError (raised by a raw pool checkout, outside SQLAlchemy's wrapping)
    must take the same path as every other database failure - 503 with Retry-After for
    the reserve step, retries for the record step - never a 500 or a lost row."""
    server, forwarder = single_worker_outage
    model = world.backend()
    key, user_id, _ = world.new_key()
    started = threading.Event()
    result: dict[str, object] = {}

    def run_stream() -> None:
        # ends ~1.5 s into a 4 s outage, so its record step meets a refused database
        with requests.post(server.url + "/v1/chat/completions", headers=bearer(key), stream=True, timeout=60,
                           json=chat(model, "[[tokens:8]] [[interval:0.25]]", stream=True)) as response:
            parts = []
            for chunk in response.iter_content(chunk_size=None):
                parts.append(chunk)
                started.set()
            result["status"], result["raw"] = response.status_code, b"".join(parts)

    assert requests.post(server.url + "/v1/chat/completions", headers=bearer(key), json=chat(model),
                         timeout=10).status_code == 200
    streamer = threading.Thread(target=run_stream)
    streamer.start()
    assert started.wait(10)
    answers = []
    forwarder.close()
    try:
        for _ in range(6):
            response = requests.post(server.url + "/v1/chat/completions", headers=bearer(key), timeout=30,
                                     json=chat(model))
            answers.append((response.status_code, response.headers.get("Retry-After"), response.text))
        time.sleep(OUTAGE_SECONDS)
    finally:
        forwarder.reopen()
    streamer.join(60)
    assert result["status"] == 200
    assert [a[0] for a in answers] == [503] * 6, answers
    for _, retry_after, body in answers:
        assert retry_after == "5" and "database is unavailable" in body
        assert "psycopg" not in body and "Internal error" not in body
    rows = world.wait_rows(user_id, 2, timeout=30)
    streamed = [r for r in rows if r["streamed"]]
    assert len(streamed) == 1 and streamed[0]["tokens_out"] == 8
    time.sleep(1.0)
    assert len(world.log_rows(user_id)) == 2
    counters = world.counters(user_id)
    assert counters["requests"] == 2 and counters["reserved_tokens"] == 0
