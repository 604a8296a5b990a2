"""Streaming load client for bench/run.py: time to first event and total time.

gevent + raw sockets, one connection per stream (``Connection: close``), so the client
stays cheap even at 500 concurrent streams. Two modes:

- closed loop (default): ``--concurrency`` greenlets each open short streams
  (``--tokens`` events ``--interval`` s apart) back to back until ``--duration``
  seconds have passed or ``--max-streams`` streams were started in total. At high
  concurrency this is a new-streams-per-second (throughput) test.
- held-open (``--hold``): ``--concurrency`` clients each open exactly ONE long stream
  (``--hold-events`` content events ``--hold-gap-ms`` apart, default 40 x 250 ms, about
  10 s), their starts staggered evenly over ``--hold-ramp`` seconds (default 2.5 s), so
  that all of them are open at the same time. Also reports the peak number of streams
  simultaneously open as seen by the client, computed from per-stream start/end times.

Every socket operation has a timeout and the whole run is joined with a deadline
(greenlets still running then are killed and counted as ``unfinished``), so a run is
bounded by roughly duration (or ramp + stream length) + timeout. Prints one JSON line
prefixed with ``BENCHJSON``.

TTFB = connect start -> first ``data:`` byte of the response body; total = connect
start -> end of the response (EOF). A stream counts as ok when the status is 200 and the
body contains ``[DONE]`` (OpenAI) or ``message_stop`` (Anthropic).

The fake upstream (gateway.fake_upstream) is told the stream shape by directives in the
prompt: ``[[tokens:N]]`` = N content events (plus the role event, the finish event and
``[DONE]``), ``[[interval:S]]`` = S seconds after every event. ``max_tokens`` is raised
to at least N because the fake caps the events at it, like a real model.
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


def one_stream(host: str, port: int, request: bytes, timeout: float,
               progress: dict[str, float] | None = None) -> tuple[bool, float | None, float, str]:
    """One stream; ``progress`` (if given) gets ``connected`` and ``ttfb`` (seconds since
    the start) as soon as they are known, so a caller still has them if this raises."""
    started = time.perf_counter()
    ttfb = None
    buf = bytearray()
    header_end = -1
    sock = socket.create_connection((host, port), timeout=timeout)
    if progress is not None:
        progress["connected"] = time.perf_counter() - started
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
                if progress is not None:
                    progress["ttfb"] = ttfb
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


def build_request(url: str, key: str, tokens: int, interval: float) -> tuple[str, int, bytes]:
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": max(64, tokens), "messages": [
        {"role": "user", "content": f"Stream a short answer. [[tokens:{tokens}]] [[interval:{interval}]]"}]},
        separators=(",", ":")).encode()
    request = (f"POST {parsed.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nAccept: text/event-stream\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return host, port, request


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of [start, end) intervals open at one instant (an end at the same
    instant as a start is counted first, so touching intervals do not overlap)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def held_open(args: argparse.Namespace) -> dict:
    """``--concurrency`` clients, one long stream each, starts spread over the ramp."""
    gap = args.hold_gap_ms / 1000.0
    host, port, request = build_request(args.url, args.key, args.hold_events, gap)
    n = max(1, args.concurrency)
    step = args.hold_ramp / n
    ttfbs: list[float] = []
    totals: list[float] = []
    errors: dict[str, int] = {}
    finished: list[int] = []
    connected: list[tuple[float, float]] = []   # connect start -> end, streams whose connect succeeded
    streaming: list[tuple[float, float]] = []   # first event -> end
    t0 = time.perf_counter()

    def client(index: int) -> None:
        gevent.sleep(max(0.0, t0 + index * step - time.perf_counter()))
        progress: dict[str, float] = {}
        started = time.perf_counter()
        try:
            ok, ttfb, total, why = one_stream(host, port, request, args.timeout, progress)
        except (TimeoutError, OSError) as exc:
            ok, ttfb, total, why = False, progress.get("ttfb"), time.perf_counter() - started, type(exc).__name__
        finished.append(index)
        if "connected" in progress:
            connected.append((started - t0, started - t0 + total))
        if ttfb is not None:
            streaming.append((started - t0 + ttfb, started - t0 + total))
        if ok and ttfb is not None:
            ttfbs.append(ttfb)
            totals.append(total)
        else:
            errors[why] = errors.get(why, 0) + 1

    stream_seconds = (args.hold_events + 3) * gap  # role event + content + finish + [DONE]
    pool = Pool(n)
    for index in range(n):
        pool.spawn(client, index)
    pool.join(timeout=args.hold_ramp + stream_seconds + args.timeout + 5)
    pool.kill(timeout=1)
    elapsed = time.perf_counter() - t0
    unfinished = n - len(finished)
    if unfinished:
        errors["unfinished"] = errors.get("unfinished", 0) + unfinished
    return {"ttfbs": ttfbs, "totals": totals, "errors": errors, "elapsed": elapsed, "extra": {
        "mode": "held-open", "hold_events": args.hold_events, "hold_gap_ms": args.hold_gap_ms,
        "hold_ramp_s": args.hold_ramp, "peak_open": peak_overlap(streaming),
        "peak_connected": peak_overlap(connected), "unfinished": unfinished}}


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
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="closed loop: spread the first stream of each client evenly over this many seconds "
                             "(0 = all at once; run.py passes one stream's length, see bench/README.md)")
    parser.add_argument("--hold", action="store_true",
                        help="held-open mode: --concurrency clients each open ONE long stream, all open at once")
    parser.add_argument("--hold-events", type=int, default=40, help="held-open: content events per stream (40)")
    parser.add_argument("--hold-gap-ms", type=float, default=250.0, help="held-open: ms between events (250)")
    parser.add_argument("--hold-ramp", type=float, default=2.5,
                        help="held-open: seconds over which the stream starts are spread evenly (2.5)")
    args = parser.parse_args()
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731

    def report(ttfbs: list[float], totals: list[float], errors: dict[str, int], elapsed: float,
               extra: dict | None = None) -> None:
        print("BENCHJSON " + json.dumps({
            "streams_ok": len(ttfbs), "streams_failed": sum(errors.values()), "errors": errors,
            "elapsed_s": round(elapsed, 3), "streams_per_s": round(len(ttfbs) / elapsed, 1) if elapsed else None,
            "ttfb_p50_ms": ms(percentile(ttfbs, 50)), "ttfb_p90_ms": ms(percentile(ttfbs, 90)),
            "ttfb_p99_ms": ms(percentile(ttfbs, 99)), "total_p50_ms": ms(percentile(totals, 50)),
            "total_p90_ms": ms(percentile(totals, 90)), "total_p99_ms": ms(percentile(totals, 99)),
            **(extra or {}),
        }), flush=True)

    if args.hold:
        held = held_open(args)
        report(held["ttfbs"], held["totals"], held["errors"], held["elapsed"], held["extra"])
        return

    host, port, request = build_request(args.url, args.key, args.tokens, args.interval)

    ttfbs: list[float] = []
    totals: list[float] = []
    errors: dict[str, int] = {}
    started_count = 0
    deadline = time.perf_counter() + args.duration

    def worker(index: int) -> None:
        nonlocal started_count
        if args.stagger > 0:  # clients that all start at once stay in lock-step (equal stream lengths)
            gevent.sleep(args.stagger * index / args.concurrency)
        for _ in range(args.max_streams):  # bounded; normally ends on the deadline
            if time.perf_counter() >= deadline or started_count >= args.max_streams:
                return
            started_count += 1
            try:
                ok, ttfb, total, why = one_stream(host, port, request, args.timeout)
            except (TimeoutError, OSError) as exc:
                ok, ttfb, total, why = False, None, 0.0, type(exc).__name__
            if ok and ttfb is not None:
                ttfbs.append(ttfb)
                totals.append(total)
            else:
                errors[why] = errors.get(why, 0) + 1
                gevent.sleep(0.05)  # no hot loop against a dead server

    pool = Pool(args.concurrency)
    t0 = time.perf_counter()
    for index in range(args.concurrency):
        pool.spawn(worker, index)
    pool.join(timeout=args.duration + args.timeout + 5)
    pool.kill(timeout=1)
    report(ttfbs, totals, errors, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
