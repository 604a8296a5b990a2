"""A worker's memory stays bounded whatever the upstream's framing (issue 15, finding 3):
a 300 MB ``Content-Length`` download and a gzip bomb through the pass-through, under
real gunicorn with one gevent worker whose peak resident size (``VmHWM`` in
``/proc/<pid>/status``) is read before and after. Before the fix a 300 MB download took a
worker from 108 to 681 MB and a 305 kB bomb cost 601 MB: ``iter_content(None)`` read a
non-chunked body in one call, and the bomb was inflated whole."""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.admin_client import Admin
from tests.fixtures.gateway_server import GatewayServer, start_gateway
from tests.fixtures.http_server import serving

DOWNLOAD = 300 * 1000 * 1000
BLOCK = bytes(range(256)) * 4096  # 1 MiB
MAX_GROWTH_KB = 64 * 1024  # one chunk per stream is what bounded relaying costs; 64 MB is lenient


def _bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(300)) + compressor.flush()  # 300 MiB of zeros


BOMB = _bomb()


class Huge(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/bomb"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(BOMB)))
            self.end_headers()
            self.wfile.write(BOMB)
            return
        size = DOWNLOAD if self.path.endswith("/big") else 1000
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))  # not chunked: the framing that was read whole
        self.end_headers()
        left = size
        try:
            while left > 0:
                piece = BLOCK[:min(left, len(BLOCK))]
                self.wfile.write(piece)
                left -= len(piece)
        except OSError:
            pass


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _worker_pid(master: int) -> int:
    [child] = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(child)


@pytest.fixture
def one_worker(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[GatewayServer, str, str]]:
    with serving(Huge) as upstream:
        server = start_gateway({**env, "UPSTREAM_READ_TIMEOUT": "30"}, tmp_path / "gateway.log", workers=1)
        try:
            admin = Admin(server.url)
            admin.post("/backends", {"name": "huge", "kind": "http", "base_url": upstream})
            key = admin.post("/keys", {"name": "downloader", "tier": "pro"})["key"]
            yield server, upstream, key
        finally:
            server.stop()


def _download(server: GatewayServer, key: str, path: str) -> int:
    with requests.get(f"{server.url}/proxy/huge/{path}", headers={"Authorization": f"Bearer {key}"},
                      stream=True, timeout=60) as response:
        assert response.status_code == 200
        return sum(len(chunk) for chunk in response.iter_content(1 << 20))


def test_a_300_mb_download_and_a_gzip_bomb_leave_the_worker_s_memory_bounded(one_worker, capsys) -> None:
    server, _upstream, key = one_worker
    pid = _worker_pid(server.process.pid)
    assert _download(server, key, "small") == 1000  # warm: imports, pools, first connection
    before = _status_kb(pid, "VmHWM")

    assert _download(server, key, "big") == DOWNLOAD
    after_download = _status_kb(pid, "VmHWM")
    relayed = _download(server, key, "bomb")
    after_bomb = _status_kb(pid, "VmHWM")

    with capsys.disabled():
        print(f"\nworker peak RSS: {before / 1024:.0f} MB before, {after_download / 1024:.0f} MB after a 300 MB "
              f"download, {after_bomb / 1024:.0f} MB after a {len(BOMB) / 1024:.0f} kB gzip bomb "
              f"({relayed} bytes of it relayed); now {_status_kb(pid, 'VmRSS') / 1024:.0f} MB")
    assert after_download - before < MAX_GROWTH_KB
    assert after_bomb - before < MAX_GROWTH_KB
    assert relayed < 8 << 20  # cut at the ratio cap, not inflated to 300 MiB
