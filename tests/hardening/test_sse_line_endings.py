"""A hostile upstream that streams 48 MB of bare ``\\r`` (issue 15, finding 8), through
a real single-worker gunicorn+gevent gateway: the SSE parser treats every ``\\r`` as a
line ending, so the stream is relayed whole with the worker's memory bounded, the usage
event after the run is still read, and the worker keeps serving other requests while
the run streams."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.gateway_server import GatewayServer, start_gateway
from tests.fixtures.http_server import serving

from .conftest import World, bearer, chat

RUN_BYTES = 48 * 1024 * 1024
BLOCK = b"\r" * 65_536
USAGE = (b'data: {"id":"c","object":"chat.completion.chunk","model":"cr-model","choices":[],'
         b'"usage":{"prompt_tokens":27,"completion_tokens":3,"total_tokens":30}}\n\n')
DONE = b"data: [DONE]\n\n"
TAIL = USAGE + DONE
HEAD = b'data: {"id":"c","object":"chat.completion.chunk","model":"cr-model","choices":[{"delta":{}}]}'


class _BareCarriageReturns(BaseHTTPRequestHandler):
    """An OpenAI-style chat endpoint whose event stream is one event, 48 MB of ``\\r``,
    then a usage event and ``[DONE]``, in 64 kB HTTP chunks."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for block in [HEAD, *[BLOCK] * (RUN_BYTES // len(BLOCK)), TAIL]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


def _worker_pid(server: GatewayServer) -> int:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def one_worker(gateway_env: dict[str, str], tmp_path: Path) -> Iterator[GatewayServer]:
    server = start_gateway(gateway_env, tmp_path / "gateway.log", workers=1)
    try:
        yield server
    finally:
        server.stop()


def test_48_mb_of_bare_cr_is_relayed_with_bounded_memory_while_the_worker_serves_others(
        world: World, one_worker: GatewayServer) -> None:
    with serving(_BareCarriageReturns) as hostile:
        model = world.backend(base_url=hostile + "/v1")
        plain = world.backend()
        key, user_id, _ = world.new_key()
        worker = _worker_pid(one_worker)
        # Warm the worker up (imports, pools, caches) so the peak measures the stream alone.
        assert requests.post(one_worker.url + "/v1/chat/completions", json=chat(plain), headers=bearer(key),
                             timeout=30).status_code == 200
        before = _peak_rss_kib(worker)

        received: dict[str, Any] = {}

        def read_stream() -> None:
            with requests.post(one_worker.url + "/v1/chat/completions", json=chat(model, stream=True),
                               headers=bearer(key), stream=True, timeout=60) as response:
                received["status"] = response.status_code
                total, last = 0, b""
                for piece in response.iter_content(chunk_size=1 << 20):
                    total += len(piece)
                    last = (last + piece)[-len(DONE) - 1:]
                received["total"], received["last"] = total, last

        reader = threading.Thread(target=read_stream)
        reader.start()
        side_statuses = []
        while reader.is_alive() and len(side_statuses) < 50:
            side_statuses.append(requests.post(one_worker.url + "/v1/chat/completions", json=chat(plain),
                                               headers=bearer(key), timeout=30).status_code)
        reader.join(timeout=120)
        assert not reader.is_alive()

    assert received["status"] == 200
    # Relayed whole, once, less the usage chunk the gateway asked for on the client's behalf.
    assert received["total"] == len(HEAD) + RUN_BYTES + len(DONE)
    assert received["last"] == b"\r" + DONE
    assert side_statuses and set(side_statuses) == {200}   # the worker went on serving others
    growth_mib = (_peak_rss_kib(worker) - before) / 1024
    assert growth_mib < 24, f"the worker's peak memory grew {growth_mib:.0f} MiB relaying a 48 MB run"
    rows = [row for row in world.wait_rows(user_id, len(side_statuses) + 2) if row["model"] == model]
    assert [(row["status"], row["outcome"]) for row in rows] == [(200, "ok")]
    # The usage event after the run was still read: reported, not estimated.
    assert (rows[0]["tokens_in"], rows[0]["tokens_out"]) == (27, 3)
    assert not rows[0]["estimated"]
