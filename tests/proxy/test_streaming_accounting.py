"""Accounting under load and under client disconnects: every stream produces exactly
one log row, and the totals match the fake upstream's deterministic numbers."""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from gateway.fake_upstream import count_prompt_tokens


def test_forty_concurrent_streams_are_recorded_with_exact_totals(deployment):
    client = openai.OpenAI(base_url=deployment.url + "/v1", api_key=deployment.key, max_retries=0, timeout=30)

    def one(i: int) -> int:
        messages = [{"role": "user", "content": f"stream number {i} [[interval:0.01]]"}]
        chunks = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=8, stream=True)
        return sum(1 for c in chunks if c.choices and c.choices[0].delta.content)

    with ThreadPoolExecutor(max_workers=40) as pool:
        counts = list(pool.map(one, range(40)))
    assert counts == [8] * 40
    rows = deployment.wait_for_logs(40, timeout=20)
    assert len(rows) == 40 and len({r["request_id"] for r in rows}) == 40
    expected_in = sum(
        count_prompt_tokens({"messages": [{"role": "user", "content": f"stream number {i} [[interval:0.01]]"}]})
        for i in range(40))
    assert sum(r["tokens_in"] for r in rows) == expected_in
    assert sum(r["tokens_out"] for r in rows) == 40 * 8
    user = deployment.admin.get(f"/users/{deployment.user_id}")
    assert user["usage"]["requests"] == 40
    assert user["usage"]["tokens_out"] == 320 and user["usage"]["tokens_in"] == expected_in
    assert user["usage"]["reserved_tokens"] == 0


def _raw_stream_request(url: str, key: str, body: dict) -> socket.socket:
    host, port = url.replace("http://", "").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_client_disconnect_mid_stream_still_records_one_row_with_full_usage(deployment):
    body = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 30,
            "messages": [{"role": "user", "content": "long one [[interval:0.05]] [[tokens:30]]"}]}
    sock = _raw_stream_request(deployment.url, deployment.key, body)
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(4096)
    sock.close()  # the client goes away after three events
    rows = deployment.wait_for_logs(1, timeout=15)
    assert len(rows) == 1
    [row] = rows
    assert row["outcome"] == "client_disconnected"
    # the gateway kept reading (DISCONNECT_DRAIN_SECONDS=2 covers 30 x 0.05 s) and saw the final usage
    assert row["tokens_out"] == 30 and row["estimated"] is False
    time.sleep(0.5)
    assert len(deployment.logs()) == 1
    user = deployment.admin.get(f"/users/{deployment.user_id}")
    assert user["usage"]["requests"] == 1 and user["usage"]["reserved_tokens"] == 0
