#!/usr/bin/env python3
"""Profile the gateway hot path under load with py-spy (bench-only extra).

    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/profile.py [--config pg-1] [--concurrency 10] [--seconds 15]

Starts the fake upstream, memcached and ONE gateway configuration exactly as
bench/run.py does, drives non-streaming load with wrk, and samples the worker(s) with
``py-spy record --format raw`` (folded stacks; idle time in the gevent hub is excluded
by py-spy). Prints inclusive CPU shares of each request-flow step and of the hottest
functions, and writes the folded stacks and a summary to bench/results/profile-*.
Bounded: one load run of ``--seconds``.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

# Request-flow steps, matched on the innermost gateway frame that names them (first match
# walking from the root wins, so nested steps are attributed to the outermost step).
STEPS = [
    ("authenticate", r"proxy/authenticate\.py:authenticate"),
    ("ratelimit: before_request (global+ip)", r"proxy/rate_checks\.py:check_address"),
    ("ratelimit: key check", r"proxy/rate_checks\.py:check$"),
    ("quota.reserve (+sweep)", r"proxy/quota\.py:reserve"),
    ("routing.routes_for", r"proxy/routing\.py:routes_for"),
    ("pool.candidates (+decrypt)", r"proxy/pool\.py:candidates"),
    ("forward.open_upstream (HTTP to fake)", r"proxy/forward\.py:open_upstream"),
    ("relay generator (body + parser)", r"proxy/relay\.py:relay"),
    ("record (settle+counters+log row)", r"proxy/record\.py:record"),
    ("read/parse body", r"proxy/inbound\.py:"),
]


def frames_of(stack: str) -> list[str]:
    out = []
    for frame in stack.split(";"):
        m = re.match(r"(.*) \((.*?):(\d+)\)$", frame.strip())
        if m:
            func, path = m.group(1), m.group(2)
            path = path.split("site-packages/")[-1].split("/work/main/")[-1]
            out.append(f"{path}:{func}")
        else:
            out.append(frame.strip())
    return out


def analyse(folded: Path, requests: int, seconds: float) -> str:
    total = 0
    by_step: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf_pkg: collections.Counter[str] = collections.Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = frames_of(stack)
        step = "other (flask/werkzeug/gunicorn/gevent outside the steps)"
        for frame in frames:
            hit = next((name for name, pattern in STEPS if re.search(pattern, frame)), None)
            if hit:
                step = hit
                break
        by_step[step] += n
        for frame in set(frames):
            inclusive[frame] += n
        leaf = frames[-1] if frames else "?"
        pkg = leaf.split("/")[0].split(":")[0] if "/" in leaf else leaf.split(":")[0]
        leaf_pkg[pkg] += n
    lines = [f"samples: {total} (py-spy, non-idle), requests: {requests} in {seconds:.1f} s", "",
             "| step | share of worker CPU |", "|---|---|"]
    for step, n in by_step.most_common():
        lines.append(f"| {step} | {100.0 * n / max(total, 1):.1f}% |")
    lines += ["", "| hottest functions (inclusive) | share |", "|---|---|"]
    skip = ("gevent/", "gunicorn/", "greenlet", "<module>", "flask/app.py:wsgi_app", "flask/app.py:__call__",
            "flask/app.py:full_dispatch_request", "flask/app.py:dispatch_request", "threading.py")
    shown = 0
    for frame, n in inclusive.most_common(400):
        if any(s in frame for s in skip):
            continue
        lines.append(f"| `{frame}` | {100.0 * n / max(total, 1):.1f}% |")
        shown += 1
        if shown >= 45:
            break
    lines += ["", "| leaf package (self time) | share |", "|---|---|"]
    for pkg, n in leaf_pkg.most_common(15):
        lines.append(f"| {pkg} | {100.0 * n / max(total, 1):.1f}% |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pg-1", help="sqlite-1, sqlite-2, pg-1 or pg-2 (default pg-1)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--streams", action="store_true",
                        help="drive streaming chat completions (bench/stream_client.py, closed loop) instead of wrk")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(run.VENV_BIN / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install -r bench/requirements.txt", file=sys.stderr)
        return 2
    db, workers = args.config.split("-")[0], int(args.config.split("-")[1])
    tmp = Path(tempfile.mkdtemp(prefix="keygate-profile-"))
    ctx = {"tmp": tmp, "pg_admin_url": "postgresql://postgres@127.0.0.1:5432/postgres", "pg_db": "kg_profile",
           "pg_url": "postgresql://postgres@127.0.0.1:5432/kg_profile"}
    body_file = tmp / "chat.json"
    body_file.write_text(json.dumps(run.CHAT_BODY, separators=(",", ":")))
    ctx["body_file"] = body_file
    procs = run.Procs()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = run.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    try:
        fake = procs.start("fake", [run.PYTHON, "-m", "gateway.fake_upstream", "--host", "127.0.0.1", "--port", "0"],
                           tmp / "fake.log", cwd=run.ROOT, stdout=subprocess.PIPE)
        line = fake.stdout.readline().decode()  # the server prints it within a second
        ctx["fake_url"], ctx["fake_pid"] = line.strip().rsplit(" ", 1)[-1], fake.pid
        mc_port = run.free_port()
        cmd = ["memcached", "-l", "127.0.0.1", "-p", str(mc_port), "-U", "0", "-t", "1"]
        procs.start("memcached", cmd + (["-u", "root"] if run.os.geteuid() == 0 else []), tmp / "mc.log")
        run.wait_port(mc_port, 10)
        ctx["mc_port"] = mc_port
        gw = run.start_gateway(procs, ctx, db, workers, {})
        pids = run.children_of(gw["master"].pid)
        run.log(f"profiling {gw['name']} workers {pids} at c={args.concurrency} for {args.seconds:.0f} s; "
                f"load {run.loadavg()}")
        url = gw["target"].base_url + "/v1/chat/completions"
        if args.streams:
            load = subprocess.Popen([run.PYTHON, str(run.BENCH / "stream_client.py"), "--url", url, "--key",
                                     gw["target"].key, "--concurrency", str(args.concurrency), "--duration",
                                     str(int(args.seconds) + 2), "--max-streams", "100000", "--timeout", "15"],
                                    stdout=subprocess.PIPE, text=True)
        else:
            load = subprocess.Popen(["wrk", "-t", "2" if args.concurrency > 1 else "1", "-c", str(args.concurrency),
                                     "-d", f"{int(args.seconds) + 2}s", "--timeout", "10s",
                                     "-s", str(run.BENCH / "chat.lua"), url], stdout=subprocess.PIPE, text=True,
                                    env={**run.os.environ, "BENCH_KEY": gw["target"].key,
                                         "BENCH_BODY_FILE": str(body_file)})
        time.sleep(1)
        spies = []
        for pid in pids:
            out = tmp / f"folded-{pid}.txt"
            spies.append((out, subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration",
                                                 str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
                                                 "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)))
        for _, spy in spies:
            spy.wait(timeout=args.seconds + 30)
        stdout, _ = load.communicate(timeout=args.seconds + 60)
        result = next(json.loads(line[10:]) for line in stdout.splitlines() if line.startswith("BENCHJSON "))
        if args.streams:  # same shape as wrk's summary
            result = {"requests": result["streams_ok"] + result["streams_failed"],
                      "duration_us": (args.seconds + 2) * 1e6, "p50_us": (result["ttfb_p50_ms"] or 0) * 1000}
        folded = out_dir / f"profile-{stamp}-{gw['name']}.folded"
        with open(folded, "w") as fh:
            for out, _ in spies:
                if out.exists():
                    fh.write(out.read_text())
        seconds = result["duration_us"] / 1e6
        report = (f"# py-spy profile {gw['name']} c={args.concurrency}{' streams' if args.streams else ''}\n\n"
                  f"{'streams (p50 = time to first event)' if args.streams else 'wrk'}: {result['requests']} requests, "
                  f"{result['requests'] / seconds:.1f} req/s, p50 {result['p50_us'] / 1000:.1f} ms; load "
                  f"{run.loadavg()}\n\n" + analyse(folded, result["requests"], seconds))
        (out_dir / f"profile-{stamp}-{gw['name']}.md").write_text(report)
        print(report)
        run.log(f"wrote {folded} (open it with speedscope or flamegraph.pl)")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
