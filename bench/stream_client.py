"""Streaming load client for bench/run.py: time to first event and total time.

gevent + raw sockets, one connection per stream (``Connection: close``), so the client
stays cheap even at 500 concurrent streams. ``--concurrency`` greenlets each open streams
back to back until ``--duration`` seconds have passed or ``--max-streams`` streams were
started in total; every socket operation has a timeout, so the run is bounded by
roughly duration + timeout. Prints one JSON line prefixed with ``BENCHJSON``.

TTFB = connect start -> first ``data:`` byte of the response body; total = connect
start -> end of the response (EOF). A stream counts as ok when the status is 200 and the
body contains ``[DONE]`` (OpenAI) or ``message_stop`` (Anthropic).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(pct / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError:
            return bytes(data)  # not chunked after all
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def one_stream(host: str, port: int, request: bytes, timeout: float) -> tuple[bool, float | None, float, str]:
    started = time.perf_counter()
    ttfb = None
    buf = bytearray()
    header_end = -1
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            if header_end < 0:
                header_end = buf.find(b"\r\n\r\n")
            if ttfb is None and header_end >= 0 and buf.find(b"data:", header_end) >= 0:
                ttfb = time.perf_counter() - started
    finally:
        sock.close()
    total = time.perf_counter() - started
    if header_end < 0:
        return False, ttfb, total, "no headers"
    head = bytes(buf[:header_end]).decode("latin-1")
    status = head.split(" ", 2)[1] if " " in head else "?"
    body = bytes(buf[header_end + 4:])
    if "transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    ok = status == "200" and (b"[DONE]" in body or b"message_stop" in body)
    return ok, ttfb, total, "" if ok else f"status {status}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="http://host:port/v1/chat/completions")
    parser.add_argument("--key", default="sk-bench-direct")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--max-streams", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.025)
    args = parser.parse_args()

    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 64, "messages": [
        {"role": "user", "content": f"Stream a short answer. [[tokens:{args.tokens}]] [[interval:{args.interval}]]"}]},
        separators=(",", ":")).encode()
    request = (f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {args.key}\r\n"
               f"Content-Type: application/json\r\nAccept: text/event-stream\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    ttfbs: list[float] = []
    totals: list[float] = []
    errors: dict[str, int] = {}
    started_count = 0
    deadline = time.perf_counter() + args.duration

    def worker() -> None:
        nonlocal started_count
        for _ in range(args.max_streams):  # bounded; normally ends on the deadline
            if time.perf_counter() >= deadline or started_count >= args.max_streams:
                return
            started_count += 1
            try:
                ok, ttfb, total, why = one_stream(host, port, request, args.timeout)
            except (OSError, socket.timeout) as exc:
                ok, ttfb, total, why = False, None, 0.0, type(exc).__name__
            if ok and ttfb is not None:
                ttfbs.append(ttfb)
                totals.append(total)
            else:
                errors[why] = errors.get(why, 0) + 1
                gevent.sleep(0.05)  # no hot loop against a dead server

    pool = Pool(args.concurrency)
    t0 = time.perf_counter()
    for _ in range(args.concurrency):
        pool.spawn(worker)
    pool.join(timeout=args.duration + args.timeout + 5)
    pool.kill(timeout=1)
    elapsed = time.perf_counter() - t0
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    print("BENCHJSON " + json.dumps({
        "streams_ok": len(ttfbs), "streams_failed": sum(errors.values()), "errors": errors,
        "elapsed_s": round(elapsed, 3), "streams_per_s": round(len(ttfbs) / elapsed, 1) if elapsed else None,
        "ttfb_p50_ms": ms(percentile(ttfbs, 50)), "ttfb_p90_ms": ms(percentile(ttfbs, 90)),
        "ttfb_p99_ms": ms(percentile(ttfbs, 99)), "total_p50_ms": ms(percentile(totals, 50)),
        "total_p90_ms": ms(percentile(totals, 90)), "total_p99_ms": ms(percentile(totals, 99)),
    }), flush=True)


if __name__ == "__main__":
    main()
