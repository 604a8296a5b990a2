"""End to end through a real nginx running the shipped site config (deploy/nginx/
keygate.conf), adapted only in its addresses: streamed events arrive one by one, the
client's address reaches the gateway through one trusted hop, and the body limit
answers 413 at nginx."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from tests.fixtures.gateway_server import free_port
from tests.ops.conftest import chat

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENT_ADDRESS = "127.0.0.2"  # a loopback address nginx sees as the client, unlike its own 127.0.0.1


@pytest.fixture(scope="module")
def nginx(ops_gateway, tmp_path_factory) -> Iterator[int]:
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed (.ci/setup installs it)")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    gateway_address = ops_gateway.url.removeprefix("http://")
    site = (ROOT / "deploy/nginx/keygate.conf").read_text()
    adapted = (site.replace("server 127.0.0.1:8000;", f"server {gateway_address};")
               .replace("listen 80;", f"listen 127.0.0.1:{port};")
               .replace("/var/log/nginx/", f"{prefix}/"))
    assert adapted.count(gateway_address) == 1 and f"127.0.0.1:{port}" in adapted
    (prefix / "keygate.conf").write_text(adapted)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(f"{name}_temp_path {prefix}/{name};\n" for name in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n{temp_paths}include {prefix}/keygate.conf;\n}}\n")
    process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
            connection.close()
            break
        except OSError as error:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"nginx did not start: {process.stderr.read().decode() if process.stderr else ''}") from error
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)


def _connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(CLIENT_ADDRESS, 0))


def test_streamed_events_arrive_one_by_one_through_nginx(nginx, ops_deployment):
    connection = _connect(nginx)
    body = json.dumps(chat("count [[interval:0.1]] [[tokens:20]]", stream=True))
    connection.request("POST", "/v1/chat/completions", body=body, headers={
        "Authorization": f"Bearer {ops_deployment.key}", "Content-Type": "application/json",
        "Accept-Encoding": "gzip"})
    response = connection.getresponse()
    assert response.status == 200
    arrivals = []
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            arrivals.append(time.monotonic())
    connection.close()

    assert len(arrivals) >= 20
    assert arrivals[-1] - arrivals[0] > 1.2  # 20 tokens 0.1 s apart: spread, not one burst
    gaps = [b - a for a, b in pairwise(arrivals)]
    assert sum(1 for gap in gaps if gap > 0.05) >= 15


def test_the_client_address_reaches_the_gateway_through_one_trusted_hop(nginx, ops_deployment):
    connection = _connect(nginx)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(chat()), headers={
        "Authorization": f"Bearer {ops_deployment.key}", "Content-Type": "application/json",
        "X-Forwarded-For": "198.51.100.77",  # spoofed by the client: must not be believed
        "X-Request-ID": "via-nginx-1"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200

    [row] = [r for r in ops_deployment.wait_for_logs(1) if r["request_id"] == "via-nginx-1"]
    assert row["client_ip"] == CLIENT_ADDRESS


def test_behind_nginx_with_the_shipped_setting_one_clients_bad_keys_do_not_throttle_another(nginx, ops_deployment):
    """Issue 15, finding 10: with the shipped TRUSTED_PROXY_COUNT every client keeps its
    own address behind nginx, so the failed-authentication throttle of one is not all's."""
    def ask(source: str, key: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", nginx, timeout=15, source_address=(source, 0))
        connection.request("POST", "/v1/chat/completions", body=json.dumps(chat()), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status

    # AUTH_FAILURES_PER_MINUTE is 20 per worker here (memory:// storage, 2 workers):
    # enough failures that both workers block the failing address.
    bad = [ask("127.0.0.4", "sk-pro-" + "x" * 40) for _ in range(60)]
    assert bad[0] == 401 and bad[-5:] == [429] * 5, bad
    assert ask("127.0.0.5", ops_deployment.key) == 200   # another client is not throttled
    rows = [r for r in ops_deployment.wait_for_logs(1) if r["status"] == 200]
    assert {r["client_ip"] for r in rows} == {"127.0.0.5"}


def test_a_body_over_the_limit_is_refused_with_413_by_nginx(nginx, ops_deployment):
    connection = _connect(nginx)
    payload = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * (11 * 1024 * 1024) + b'"}]}'
    connection.request("POST", "/v1/chat/completions", body=payload, headers={
        "Authorization": f"Bearer {ops_deployment.key}", "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    connection.close()

    assert response.status == 413
    assert ops_deployment.logs() == []  # refused before the gateway did any work


def test_a_stalled_body_through_nginx_answers_408_from_the_gateway(nginx, ops_deployment):
    """Issue 15, finding 4: nginx streams bodies on (proxy_request_buffering off), so the
    gateway's own idle timeout (BODY_IDLE_TIMEOUT_SECONDS, 10 s by default) must end a
    body that stops arriving; the client gets the 408 in the route's shape."""
    sock = socket.create_connection(("127.0.0.1", nginx), timeout=45, source_address=(CLIENT_ADDRESS, 0))
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + ops_deployment.key.encode() + b"\r\nContent-Length: 500\r\n\r\n"
                     b'{"model": "gpt-4o-mini",')   # then nothing more
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"408", data
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and set(error) == {"message", "type", "code", "param"}
