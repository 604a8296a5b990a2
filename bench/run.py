#!/usr/bin/env python3
"""KeyGate benchmark suite: one command, every number side by side.

    .venv/bin/python bench/run.py            # full run (~7-9 min)
    .venv/bin/python bench/run.py --quick    # PostgreSQL, 2 workers, fewer points (~2 min)

Starts the fake upstream, memcached, nginx (pass-through floor) and, per configuration,
the gateway under gunicorn + gevent; drives non-streaming load with wrk (bench/chat.lua)
and streams with bench/stream_client.py; measures throughput, latency percentiles, time
to first event, CPU per request from /proc, RSS per worker, database statements and
memcached operations per proxied request. Writes bench/results/<timestamp>.csv and .md
(git-ignored) and bench/RESULTS.md (the latest summary, committed). See bench/README.md.

Everything listens on 127.0.0.1 on free ports; every wait and loop is bounded.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHAT_BODY = {"model": "gpt-4o-mini", "max_tokens": 64,
             "messages": [{"role": "user", "content": "Say hello in a few words. [[tokens:16]]"}]}

# -- small helpers ------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


class Procs:
    """Every process this run started, stopped in reverse order (by pid, never by name)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], logfile: Path, **kw: Any) -> subprocess.Popen:
        with open(logfile, "ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True, **kw)
        self.items.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.items = [(n, p) for n, p in self.items if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self.items)):
            self.stop(proc)


# -- /proc and service counters -------------------------------------------------------


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (the database's share of the work)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_ticks(pids: list[int], field: int | None = None) -> int:
    """utime + stime of ``pids`` in clock ticks (only stime, kernel time, with field=12)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[field]) if field else int(fields[11]) + int(fields[12])  # utime + stime
    return total


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def memcached_stats(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        deadline = time.monotonic() + 2
        while not buf.endswith(b"END\r\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    stats = {}
    for line in buf.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT":
            with contextlib.suppress(ValueError):
                stats[parts[1]] = int(parts[2])
    return stats


MC_OPS = {
    "get": ("cmd_get",),
    "set_add": ("cmd_set",),
    "incr_decr": ("incr_hits", "incr_misses", "decr_hits", "decr_misses"),
    "other": ("cmd_touch", "delete_hits", "delete_misses"),
}


def mc_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {name: sum(after.get(k, 0) - before.get(k, 0) for k in keys) for name, keys in MC_OPS.items()}
    out["total"] = sum(out.values())
    return out


def db_counts(counts_dir: Path | None) -> dict[str, int]:
    total: dict[str, int] = {}
    if counts_dir is None:
        return total
    for path in counts_dir.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for k, v in data.items():
            total[k] = total.get(k, 0) + v
    return total


def pg_stats(admin_url: str, dbname: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, "
            "tup_deleted, numbackends FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    keys = ["xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
            "tup_deleted", "numbackends"]
    return dict(zip(keys, row, strict=True)) if row else {}


# -- load generators -----------------------------------------------------------------


def run_wrk(url: str, key: str, concurrency: int, duration: float, body_file: Path) -> dict[str, Any]:
    threads = 1 if concurrency == 1 else 2
    cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, int(round(duration)))}s",
           "--timeout", "10s", "-s", str(BENCH / "chat.lua"), url]
    env = {**os.environ, "BENCH_KEY": key, "BENCH_BODY_FILE": str(body_file)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 30)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            data = json.loads(line[len("BENCHJSON "):])
            seconds = data["duration_us"] / 1e6
            errors = sum(v for k, v in data.items() if k.startswith("err_"))
            return {
                "requests": data["requests"], "errors": errors,
                "rps": round(data["requests"] / seconds, 1) if seconds else 0.0,
                "p50_ms": data["p50_us"] / 1000, "p90_ms": data["p90_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            }
    raise RuntimeError(f"wrk gave no result: {proc.stdout[-500:]} {proc.stderr[-500:]}")


CLOSED_LOOP_STAGGER_SECONDS = 0.6


def run_streams(url: str, key: str, concurrency: int, duration: float, hold: dict[str, Any] | None = None,
                workers: Any = None) -> dict[str, Any]:
    """Closed loop (``hold`` None): ``concurrency`` greenlets stream back to back for
    ``duration`` s. Held-open (``hold`` = {"events", "gap_ms", "ramp"}): ``concurrency``
    clients open one long stream each, starts spread over the ramp, ``duration`` unused;
    the RSS of ``workers()`` is then also sampled every 0.25 s while the streams are open
    (``rss_mb_during``, the max over workers and samples)."""
    cmd = [PYTHON, str(BENCH / "stream_client.py"), "--url", url, "--key", key,
           "--concurrency", str(concurrency), "--duration", str(duration), "--max-streams", "20000",
           "--timeout", "15"]
    if not hold:
        # Each client's first stream starts at a different moment within one stream's length
        # (20 events x 25 ms): started together, equal-length streams stay in lock-step and
        # every wave of c new streams arrives in the same millisecond (see bench/README.md).
        cmd += ["--stagger", str(CLOSED_LOOP_STAGGER_SECONDS)]
    budget = duration + 60
    if hold:
        cmd += ["--hold", "--hold-events", str(hold["events"]), "--hold-gap-ms", str(hold["gap_ms"]),
                "--hold-ramp", str(hold["ramp"])]
        budget = hold["ramp"] + (hold["events"] + 3) * hold["gap_ms"] / 1000.0 + 60
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + budget
    rss_during = 0.0
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            if hold and workers:
                rss_during = max([rss_during, *(rss_mb(pid) for pid in workers())])
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate(timeout=10)
                raise RuntimeError(f"stream client still running after {budget:.0f} s") from None
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            data = json.loads(line[len("BENCHJSON "):])
            result = {"requests": data["streams_ok"] + data["streams_failed"], "errors": data["streams_failed"],
                      "rps": data["streams_per_s"], "ttfb_p50_ms": data["ttfb_p50_ms"],
                      "ttfb_p90_ms": data["ttfb_p90_ms"], "ttfb_p99_ms": data["ttfb_p99_ms"],
                      "total_p50_ms": data["total_p50_ms"], "total_p99_ms": data["total_p99_ms"],
                      "error_kinds": data["errors"], "stream_mode": "closed-loop"}
            if hold:
                result.update({"stream_mode": "held-open", "peak_open": data["peak_open"],
                               "peak_connected": data["peak_connected"], "hold_events": data["hold_events"],
                               "hold_gap_ms": data["hold_gap_ms"], "hold_ramp_s": data["hold_ramp_s"],
                               "rss_mb_during": round(rss_during, 1) if rss_during else None})
            return result
    raise RuntimeError(f"stream client gave no result: {stdout[-500:]} {stderr[-500:]}")


# -- the measured target -------------------------------------------------------------


class Target:
    """Something load is pointed at, with the pids whose CPU it costs."""

    def __init__(self, name: str, base_url: str, key: str, cpu_pids: Any, workers: Any = None,
                 counts_dir: Path | None = None, mc_port: int | None = None) -> None:
        self.name = name
        self.base_url = base_url
        self.key = key
        self.cpu_pids = cpu_pids  # callable -> list of pids
        self.workers = workers or (lambda: [])
        self.counts_dir = counts_dir
        self.mc_port = mc_port


def wait_idle(target: Target, limit: float = 40.0) -> float:
    """Wait (bounded) until no request is in flight in any gateway worker; returns the
    seconds waited. Requests stuck from the previous point would distort this one."""
    if target.counts_dir is None:
        return 0.0
    start = time.monotonic()
    time.sleep(0.3)
    while time.monotonic() - start < limit:
        if db_counts(target.counts_dir).get("inflight", 0) <= 0:
            break
        time.sleep(0.25)
    waited = time.monotonic() - start
    if waited > 1.0:
        log(f"{target.name}: waited {waited:.1f} s for in-flight requests to finish "
            f"({db_counts(target.counts_dir).get('inflight', 0)} still open)")
    return round(waited, 1)


def warm_up(target: Target, kind: str, concurrency: int, ctx: dict[str, Any]) -> None:
    """The same load for ``ctx["warmup"]`` seconds, not measured: a point starts with the
    target's pools (database and memcached connections, upstream keep-alive, prepared
    statements) grown to its concurrency, as a running deployment has them. Without it a
    3-4 s stream point at c=50 measured mostly the first second (pg-2w: time to first
    event p50 ~20 ms in the first 100 streams, ~4 ms after). Not for the held-open
    point, whose ramp is part of what it measures."""
    seconds = ctx.get("warmup", 0.0)
    hold = ctx.get("stream_hold")
    if seconds <= 0 or (kind == "stream" and hold and concurrency == hold["concurrency"]):
        return
    url = target.base_url + "/v1/chat/completions"
    if kind == "chat":
        done = run_wrk(url, target.key, concurrency, seconds, ctx["body_file"])
    else:
        done = run_streams(url, target.key, concurrency, seconds)
    # The database sees these requests too: the pg_stat_database cross-check counts them.
    unmeasured = ctx.setdefault("unmeasured_requests", {})
    unmeasured[target.name] = unmeasured.get(target.name, 0) + done["requests"]


def measure(target: Target, kind: str, concurrency: int, duration: float, ctx: dict[str, Any]) -> dict[str, Any]:
    warm_up(target, kind, concurrency, ctx)
    drained = wait_idle(target)
    pids = target.cpu_pids()
    fake_pids = [ctx["fake_pid"]]
    mc_before = memcached_stats(target.mc_port) if target.mc_port else {}
    db_before = db_counts(target.counts_dir)
    cpu_before, fake_before = cpu_ticks(pids), cpu_ticks(fake_pids)
    sys_before = cpu_ticks(pids, field=12)
    per_worker_before = {pid: cpu_ticks([pid]) for pid in target.workers()}
    pg_before = cpu_ticks(postgres_pids()) if target.counts_dir else 0
    load = loadavg()
    url = target.base_url + "/v1/chat/completions"
    if kind == "chat":
        result = run_wrk(url, target.key, concurrency, duration, ctx["body_file"])
    else:
        hold = ctx.get("stream_hold")
        hold = hold if hold and concurrency == hold["concurrency"] else None  # the held-open point (c=500)
        result = run_streams(url, target.key, concurrency, duration, hold, target.workers)
    cpu_after, fake_after = cpu_ticks(target.cpu_pids()), cpu_ticks(fake_pids)
    sys_after = cpu_ticks(target.cpu_pids(), field=12)
    # How evenly the kernel spread the load over the workers (busiest worker's share).
    per_worker = [cpu_ticks([pid]) - ticks for pid, ticks in per_worker_before.items()]
    pg_after = cpu_ticks(postgres_pids()) if target.counts_dir else 0
    workers = target.workers()
    rss = [rss_mb(pid) for pid in workers]
    settle = 1.1 if target.counts_dir else 0.0  # counters are written every 0.5 s
    if settle:
        time.sleep(settle)
    mc_after = memcached_stats(target.mc_port) if target.mc_port else {}
    db_after = db_counts(target.counts_dir)
    n = result["requests"]
    if n == 0:  # nothing finished (e.g. every request stuck): per-request figures are undefined
        log(f"{target.name} {kind} c={concurrency}: NO request completed in {duration} s")
        n = float("inf")
    row: dict[str, Any] = {
        "target": target.name, "kind": kind, "concurrency": concurrency, **{k: v for k, v in result.items()
                                                                         if k != "error_kinds"},
        "cpu_ms_per_req": round((cpu_after - cpu_before) * 1000.0 / CLK_TCK / n, 3) if pids else None,
        "sys_cpu_ms_per_req": round((sys_after - sys_before) * 1000.0 / CLK_TCK / n, 3) if pids else None,
        "fake_cpu_ms_per_req": round((fake_after - fake_before) * 1000.0 / CLK_TCK / n, 3),
        # PostgreSQL server CPU per request (gateway configs on PostgreSQL only; includes
        # whatever else the server did meanwhile, e.g. autovacuum).
        "pg_cpu_ms_per_req": round((pg_after - pg_before) * 1000.0 / CLK_TCK / n, 3)
        if target.counts_dir and target.name.startswith("pg") else None,
        "workers": len(workers) or None,
        "busiest_worker_share": round(max(per_worker) / sum(per_worker), 2) if len(per_worker) > 1 and sum(per_worker)
        else None,
        "rss_mb_max": round(max(rss), 1) if rss else None,
        "rss_mb_mean": round(sum(rss) / len(rss), 1) if rss else None,
        "loadavg": load,
        "idle_wait_s": drained,
    }
    if result.get("rss_mb_during") and (row["rss_mb_max"] or 0) < result["rss_mb_during"]:
        row["rss_mb_max"] = result["rss_mb_during"]  # held-open: the max while the streams were open
    if target.mc_port:
        delta = mc_delta(mc_before, mc_after)
        row["mc_ops_per_req"] = round(delta["total"] / n, 2)
        row["mc_ops_detail"] = " ".join(f"{k}={v / n:.2f}" for k, v in delta.items() if k != "total")
        row["mc_conns"] = mc_after.get("curr_connections")
    if target.counts_dir:
        d = {k: db_after.get(k, 0) - db_before.get(k, 0) for k in db_after}
        row["db_stmts_per_req"] = round(d.get("statements", 0) / n, 2)
        row["db_commits_per_req"] = round(d.get("commits", 0) / n, 2)
        row["db_checkouts_per_req"] = round(d.get("checkouts", 0) / n, 2)
        row["db_stmt_detail"] = " ".join(f"{k[5:]}={v / n:.2f}" for k, v in sorted(d.items())
                                         if k.startswith("stmt_") and v)
    if result["requests"] == 0:
        for k in list(row):
            if k.endswith("_per_req") or k.endswith("_detail"):
                row[k] = None
    if result.get("error_kinds"):
        row["error_kinds"] = json.dumps(result["error_kinds"])
    summary = (f"{target.name:<14} {kind:<6} c={concurrency:<4} "
               + (f"{result['rps']:>8} req/s p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms"
                  if kind == "chat" else
                  f"{result['rps']:>8} str/s ttfb p50 {result['ttfb_p50_ms']} p99 {result['ttfb_p99_ms']} "
                  f"total p50 {result['total_p50_ms']} ms"
                  + (f" [held-open, peak open {result['peak_open']}"
                     + (f", RSS during {result['rss_mb_during']} MB" if result.get("rss_mb_during") else "") + "]"
                     if result.get("stream_mode") == "held-open" else ""))
               + f" err {result['errors']} cpu {row['cpu_ms_per_req']} ms/req (sys {row['sys_cpu_ms_per_req']}, "
                 f"busiest worker {row['busiest_worker_share']}, postgres {row['pg_cpu_ms_per_req']})"
               + (f" db {row.get('db_stmts_per_req')} mc {row.get('mc_ops_per_req')}" if target.counts_dir else "")
               + f" load {load}")
    log(summary)
    return row


def run_target(target: Target, plan: dict[str, Any], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in plan["chat"]:
        rows.append(measure(target, "chat", c, plan["duration"], ctx))
    for c in plan["stream"]:
        rows.append(measure(target, "stream", c, plan["stream_duration"], ctx))
    return rows


# -- the gateway -----------------------------------------------------------------------


def prepare_postgres(admin_url: str, dbname: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')


def gateway_env(ctx: dict[str, Any], database_url: str, workers: int, port: int, tmp: Path,
                counts_dir: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet  # the venv's; run.py runs with it

    metrics = tmp / "prometheus"
    metrics.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_URL"))}
    env.update({
        "GATEWAY_MODE": "development",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "bench-secret-key-" + "x" * 40,
        "ENCRYPTION_KEY": ctx.setdefault("fernet", Fernet.generate_key().decode()),
        "KEY_PEPPER": "bench-pepper-abcdefghijklmnopqrst",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "INSTANCE_PATH": str(tmp / "instance"),
        "SESSION_COOKIE_SECURE": "false",
        "BLOCK_PRIVATE_UPSTREAMS": "false",
        "RATELIMIT_STORAGE_URI": f"memcached://127.0.0.1:{ctx['mc_port']}",
        "IP_RPM": "100000000",
        "GLOBAL_RPM": "100000000",
        "ADMIN_AUTH_FAILURES_PER_MINUTE": "1000",
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_GRACEFUL_TIMEOUT": "5",
        # As in production: no gunicorn access log (the default), one JSON request line
        # per request at LOG_LEVEL=INFO, written to gunicorn.log in the run's folder.
        "GATEWAY_LOG_LEVEL": "warning",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "BENCH_COUNTS_DIR": str(counts_dir),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def start_gateway(procs: Procs, ctx: dict[str, Any], db: str, workers: int, plan: dict[str, Any]) -> dict[str, Any]:
    name = f"gw-{db}-{workers}w"
    tmp = ctx["tmp"] / name
    counts_dir = tmp / "counts"
    counts_dir.mkdir(parents=True)
    (tmp / "instance").mkdir()
    if db == "pg":
        prepare_postgres(ctx["pg_admin_url"], ctx["pg_db"])
        database_url = ctx["pg_url"]
    else:
        database_url = f"sqlite:///{tmp / 'keygate.db'}"
    port = free_port()
    env = gateway_env(ctx, database_url, workers, port, tmp, counts_dir)
    upgrade = subprocess.run([str(VENV_BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    if upgrade.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed: {upgrade.stderr[-1500:]}")
    master = procs.start(name, [str(VENV_BIN / "gunicorn"), "-c", str(BENCH / "gunicorn_bench.py"), "wsgi:app"],
                         tmp / "gunicorn.log", cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {(tmp / 'gunicorn.log').read_text()[-1500:]}")
        try:
            status, _ = http_json("GET", base + "/health", timeout=2)
            if status < 500 and len(children_of(master.pid)) >= workers:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("gateway did not come up in 60 s")
    admin = {"X-Admin-Key": ADMIN_TOKEN}
    status, backend = http_json("POST", base + "/api/admin/backends", {
        "name": "fake-openai", "kind": "openai", "base_url": ctx["fake_url"] + "/v1", "models": ["*"]}, admin)
    assert status in (200, 201), (status, backend)
    status, upkey = http_json("POST", f"{base}/api/admin/backends/{backend['id']}/keys",
                              {"secret": "sk-upstream-bench-000000000000"}, admin)
    assert status in (200, 201), (status, upkey)
    status, tiers = http_json("GET", base + "/api/admin/tiers", headers=admin)
    items = tiers["items"] if isinstance(tiers, dict) and "items" in tiers else tiers
    pro = next(t for t in items if t["name"] == "pro")
    status, patched = http_json("PATCH", f"{base}/api/admin/tiers/{pro['id']}", {"rpm": 1_000_000}, admin)
    assert status == 200, (status, patched)
    status, created = http_json("POST", base + "/api/admin/keys",
                                {"name": f"bench-{name}", "tier": "pro", "total_tokens": 10**12}, admin)
    assert status in (200, 201), (status, created)
    key = created["key"]
    # Smoke test: one real proxied request must succeed before anything is measured.
    status, answer = http_json("POST", base + "/v1/chat/completions", CHAT_BODY, {"Authorization": f"Bearer {key}"})
    if status != 200:
        raise RuntimeError(f"smoke request through the gateway failed: {status} {answer}")
    target = Target(f"{db}-{workers}w", base, key,
                    cpu_pids=lambda: [master.pid, *children_of(master.pid)],
                    workers=lambda: children_of(master.pid), counts_dir=counts_dir, mc_port=ctx["mc_port"])
    # Warm every worker (connections, pools, first-use imports) before measuring.
    run_wrk(base + "/v1/chat/completions", key, 10, 1, ctx["body_file"])
    return {"name": name, "master": master, "target": target, "db": db, "tmp": tmp}


def pg_crosscheck(ctx: dict[str, Any], before: dict[str, int], requests: int) -> dict[str, Any]:
    """Database-side view of the same load, from pg_stat_database. Backends flush their
    statistics at most once a second and an idle one up to 10 s later, so this waits
    11 s and covers every measured request of the configuration."""
    time.sleep(11)
    after = pg_stats(ctx["pg_admin_url"], ctx["pg_db"])
    n = max(1, requests)
    return {k: round((after[k] - before[k]) / n, 2) for k in after if k != "numbackends"} | {
        "numbackends": after.get("numbackends")}


# -- reporting -------------------------------------------------------------------------

COLUMNS = ["config", "target", "kind", "concurrency", "requests", "errors", "rps", "p50_ms", "p90_ms", "p99_ms",
           "ttfb_p50_ms", "ttfb_p90_ms", "ttfb_p99_ms", "total_p50_ms", "total_p99_ms", "cpu_ms_per_req",
           "sys_cpu_ms_per_req", "fake_cpu_ms_per_req", "pg_cpu_ms_per_req", "workers", "busiest_worker_share",
           "rss_mb_max", "rss_mb_mean", "db_stmts_per_req", "db_commits_per_req", "db_checkouts_per_req",
           "db_stmt_detail", "mc_ops_per_req", "mc_ops_detail", "mc_conns", "idle_wait_s", "loadavg",
           "error_kinds", "stream_mode", "peak_open", "peak_connected", "hold_events", "hold_gap_ms", "hold_ramp_s",
           "rss_mb_during"]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], crosscheck: dict[str, Any]) -> str:
    direct = {(r["kind"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    lines = [
        "# KeyGate benchmark results",
        "",
        f"- run: {meta['started']} ({meta['mode']}), host: {meta['host']}, {meta['cpus']} CPUs, "
        f"{meta['duration']} s per non-streaming point, {meta['stream_duration']} s per closed-loop stream point, "
        f"each after {meta.get('warmup', 0)} s of the same load that is not measured",
        f"- load average at start / end: {meta['load_start']} / {meta['load_end']} - **other engineers' test runs "
        "share this 2-core machine, so every number is noisy**; wrk, the stream client, the fake upstream and "
        "the gateway also compete for the same 2 cores",
        f"- git: {meta['git']}",
        "- `direct` = load straight at the fake upstream; `nginx` = nginx 1 worker, proxy_pass with keepalive to the "
        "fake (the pass-through floor); `sqlite-1w` etc. = the gateway (gunicorn + gevent, memcached limiter, "
        "accounting on).",
        "- CPU ms/req = (utime+stime of the target's master + workers) / requests; for `direct` the proxy CPU is "
        "none (the fake's own CPU is in `fake CPU`).",
        "- db = SQLAlchemy statements per request (cursor executes, counted in each worker by "
        "bench/gunicorn_bench.py, plus the PostgreSQL hot-path statements run on the driver connection); "
        "tx = explicit commits per request (the PostgreSQL hot path runs in autocommit: 0); co = pool checkouts "
        "per request (on PostgreSQL a connection idle for over 1 s is pinged first; busy ones are not); "
        "mc = memcached commands per request (memcached `stats` deltas: get + set/add + incr/decr + touch/delete).",
        "- Logging as in production: one JSON request line per request (LOG_LEVEL=INFO), no gunicorn access log.",
        "",
        "## Non-streaming chat completions (wrk, bench/chat.lua)",
        "",
        "| target | c | req/s | x direct | p50 ms | p90 ms | p99 ms | +p50 vs direct | errors | CPU ms/req | "
        "fake CPU ms/req | RSS/worker MB | db | tx | co | mc | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "chat":
            continue
        d = direct.get(("chat", r["concurrency"]))
        ratio = f"{r['rps'] / d['rps']:.2f}" if d and d["rps"] else "-"
        added = f"{r['p50_ms'] - d['p50_ms']:+.2f}" if d else "-"
        lines.append(f"| {r['target']} | {r['concurrency']} | {fmt(r['rps'], 0)} | {ratio} | {fmt(r['p50_ms'])} | "
                     f"{fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {added} | {r['errors']} | "
                     f"{fmt(r['cpu_ms_per_req'], 3)} | {fmt(r['fake_cpu_ms_per_req'], 3)} | "
                     f"{fmt(r['rss_mb_max'], 1)} | "
                     f"{fmt(r.get('db_stmts_per_req'))} | {fmt(r.get('db_commits_per_req'))} | "
                     f"{fmt(r.get('db_checkouts_per_req'))} | {fmt(r.get('mc_ops_per_req'))} | {r['loadavg']} |")
    hold = meta.get("stream_hold") or {}
    hold_text = (f"held-open, ramp {hold.get('ramp')} s, {hold.get('events')} ev x {fmt(hold.get('gap_ms'), 0)} ms"
                 if hold else "held-open")
    lines += [
        "",
        "## Streaming chat completions (bench/stream_client.py, one connection per stream)",
        "",
        "- `closed-loop` rows (c=10, 50; c=50 only with --quick): c greenlets each open a stream of 20 events "
        "25 ms apart (~0.6 s), then "
        f"immediately another, for {meta['stream_duration']} s: a new-streams-per-second (throughput) test.",
    ]
    if any(r.get("stream_mode") == "held-open" for r in rows):
        lines.append(
            f"- `{hold_text}` row (c={hold.get('concurrency', 500)}): each of the c clients opens ONE stream of "
            f"{hold.get('events')} events {fmt(hold.get('gap_ms'), 0)} ms apart, starts spread evenly over "
            f"{hold.get('ramp')} s, so all c streams are open at the same time (the \"500 concurrent open streams "
            "on one worker\" target). `peak open` = most streams simultaneously between their first event and their "
            "end, as seen by the client; RSS for this row is the max sampled every 0.25 s while the streams were open.")
    lines += [
        "",
        "| target | c | mode | streams | streams/s | peak open | TTFB p50 ms | TTFB p90 ms | TTFB p99 ms | "
        "+TTFB p50 vs direct | total p50 ms | total p99 ms | errors | CPU ms/stream | RSS/worker MB | db | mc | "
        "mc conns | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "stream":
            continue
        d = direct.get(("stream", r["concurrency"]))
        added = f"{r['ttfb_p50_ms'] - d['ttfb_p50_ms']:+.2f}" if d and d["ttfb_p50_ms"] is not None \
            and r["ttfb_p50_ms"] is not None else "-"
        mode = hold_text if r.get("stream_mode") == "held-open" else "closed-loop"
        lines.append(f"| {r['target']} | {r['concurrency']} | {mode} | {r['requests']} | {fmt(r['rps'], 1)} | "
                     f"{fmt(r.get('peak_open'))} | "
                     f"{fmt(r['ttfb_p50_ms'])} | {fmt(r['ttfb_p90_ms'])} | {fmt(r['ttfb_p99_ms'])} | {added} | "
                     f"{fmt(r['total_p50_ms'])} | {fmt(r['total_p99_ms'])} | {r['errors']} | "
                     f"{fmt(r['cpu_ms_per_req'], 3)} | {fmt(r['rss_mb_max'], 1)} | {fmt(r.get('db_stmts_per_req'))} | "
                     f"{fmt(r.get('mc_ops_per_req'))} | {fmt(r.get('mc_conns'))} | {r['loadavg']} |")
    details = [r for r in rows if r.get("db_stmt_detail")]
    if details:
        lines += ["", "## Per-request breakdown (gateway rows)", "",
                  "| target | kind | c | statements by verb per request | memcached commands per request |",
                  "|---|---|---|---|---|"]
        for r in details:
            lines.append(f"| {r['target']} | {r['kind']} | {r['concurrency']} | {r['db_stmt_detail']} | "
                         f"{r.get('mc_ops_detail', '-')} |")
    if crosscheck:
        lines += ["", "## PostgreSQL cross-check (pg_stat_database deltas per measured request)", "",
                  "Measured on the database side over every request of the configuration (all points and their "
                  "warm-ups, streams included), 11 s after the last one so idle backends have flushed their "
                  "statistics. "
                  "`xact_commit` counts every transaction the server saw, including the pings of connections "
                  "that sat idle and the periodic generation-counter reads.", "",
                  "| config | requests | xact_commit | xact_rollback | tup_inserted | tup_updated | tup_deleted | "
                  "tup_fetched | backends after |", "|---|---|---|---|---|---|---|---|---|"]
        for name, c in crosscheck.items():
            lines.append(f"| {name} | {c['requests']} | {c['xact_commit']} | {c['xact_rollback']} | "
                         f"{c['tup_inserted']} | {c['tup_updated']} | {c['tup_deleted']} | {c['tup_fetched']} | "
                         f"{c['numbackends']} |")
    lines.append("")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    direct = {(r["kind"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    out = ["", "Ratios against direct (same run):"]
    for r in rows:
        if r["target"] == "direct":
            continue
        d = direct.get((r["kind"], r["concurrency"]))
        if not d:
            continue
        if r["kind"] == "chat":
            out.append(f"  {r['target']:<10} chat   c={r['concurrency']:<3} "
                       f"req/s x{r['rps'] / max(d['rps'], 0.1):.3f}  "
                       f"p50 +{r['p50_ms'] - d['p50_ms']:.2f} ms (x{r['p50_ms'] / max(d['p50_ms'], 0.001):.1f})  "
                       f"p99 +{r['p99_ms'] - d['p99_ms']:.2f} ms  CPU {r['cpu_ms_per_req']} ms/req")
        elif r["ttfb_p50_ms"] is not None and d["ttfb_p50_ms"] is not None:
            out.append(f"  {r['target']:<10} stream c={r['concurrency']:<3} "
                       f"TTFB p50 +{r['ttfb_p50_ms'] - d['ttfb_p50_ms']:.2f} ms "
                       f"p99 +{(r['ttfb_p99_ms'] or 0) - (d['ttfb_p99_ms'] or 0):.2f} ms  "
                       f"total p50 +{(r['total_p50_ms'] or 0) - (d['total_p50_ms'] or 0):.2f} ms"
                       + (f"  [held-open, peak open {r.get('peak_open')} vs direct {d.get('peak_open')}]"
                          if r.get("stream_mode") == "held-open" else ""))
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one gateway configuration, fewer points (~2 min)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated gateway configs, e.g. sqlite-1,sqlite-2,pg-1,pg-2 (default: all; "
                             "--quick: pg-2)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk point (default 5, quick 4)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of the same load before each point, not measured (default 1; 0 = none)")
    parser.add_argument("--stream-duration", type=float, default=None,
                        help="seconds per closed-loop stream point (default 4, quick 3)")
    parser.add_argument("--hold-events", type=int, default=40,
                        help="held-open c=500 stream point: content events per stream (default 40)")
    parser.add_argument("--hold-gap-ms", type=float, default=250.0,
                        help="held-open c=500 stream point: ms between events (default 250, so ~10 s streams)")
    parser.add_argument("--hold-ramp", type=float, default=2.5,
                        help="held-open c=500 stream point: seconds over which the 500 stream starts are spread "
                             "(default 2.5 = 200 new streams/s)")
    parser.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--pg-db", default=os.environ.get("BENCH_PG_DB", "kg_bench"),
                        help="database the run drops and recreates (default kg_bench)")
    parser.add_argument("--no-pg-crosscheck", action="store_true", help="skip the 11 s pg_stat_database wait")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--skip-baselines", action="store_true", help="no direct/nginx points (debugging only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    args = parser.parse_args()

    for tool in ("wrk", "memcached"):
        if not shutil.which(tool):
            print(f"bench: {tool} is required (apt-get install {tool})", file=sys.stderr)
            return 2
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

    quick = args.quick
    plan = {
        "chat": [1, 10, 50],
        "stream": [50] if quick else [10, 50, 500],
        "duration": args.duration or (4.0 if quick else 5.0),
        "stream_duration": args.stream_duration or (3.0 if quick else 4.0),
        # c=500 is held-open (500 streams open at once), not closed loop: see bench/README.md
        "hold": {"concurrency": 500, "events": args.hold_events, "gap_ms": args.hold_gap_ms, "ramp": args.hold_ramp},
    }
    baseline_plan = dict(plan, stream=[50] if quick else [10, 50, 500])
    configs_text = args.configs or ("pg-2" if quick else "sqlite-1,sqlite-2,pg-1,pg-2")
    configs = [(c.split("-")[0], int(c.split("-")[1])) for c in configs_text.split(",") if c.strip()]
    pg_wanted = any(db == "pg" for db, _ in configs)
    if pg_wanted:
        try:
            pg_stats(args.pg_admin_url, "postgres")
        except Exception as exc:
            log(f"PostgreSQL unavailable ({type(exc).__name__}: {exc}); skipping pg configurations")
            configs = [(db, w) for db, w in configs if db != "pg"] or [("sqlite", 2)]

    started = dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    base_pg = args.pg_admin_url.rsplit("/", 1)[0]
    ctx: dict[str, Any] = {"tmp": tmp, "pg_admin_url": args.pg_admin_url, "pg_db": args.pg_db,
                           "pg_url": f"{base_pg}/{args.pg_db}"}
    body_file = tmp / "chat.json"
    body_file.write_text(json.dumps(CHAT_BODY, separators=(",", ":")))
    ctx["body_file"] = body_file
    ctx["stream_hold"] = plan["hold"]
    ctx["warmup"] = max(0.0, args.warmup)
    git = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                         text=True).stdout.strip()[:100]
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"], capture_output=True,
                           text=True).stdout.strip()
    meta = {"started": started.isoformat(timespec="seconds"), "mode": "quick" if quick else "full",
            "host": socket.gethostname(), "cpus": os.cpu_count(), "duration": plan["duration"],
            "stream_duration": plan["stream_duration"], "stream_hold": plan["hold"], "load_start": loadavg(),
            "warmup": ctx["warmup"],
            "git": git + (" (+ uncommitted changes under gateway/)" if dirty else "")}
    log(f"plan: configs={configs} chat c={plan['chat']} stream c={plan['stream']} "
        f"(c={plan['hold']['concurrency']} held-open: {plan['hold']['events']} events x {plan['hold']['gap_ms']} ms, "
        f"ramp {plan['hold']['ramp']} s) tmp={tmp} load {meta['load_start']}")

    procs = Procs()
    rows: list[dict[str, Any]] = []
    crosscheck: dict[str, Any] = {}
    try:
        # fake upstream (port announced on stdout)
        fake = procs.start("fake", [PYTHON, "-m", "gateway.fake_upstream", "--host", "127.0.0.1", "--port", "0"],
                           tmp / "fake.log", cwd=ROOT, stdout=subprocess.PIPE)
        line = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"listening on" not in line:
            ready, _, _ = select.select([fake.stdout], [], [], 0.5)
            if ready:
                line = fake.stdout.readline()
                if not line:
                    break
        if b"listening on" not in line:
            raise RuntimeError("fake upstream did not start")
        ctx["fake_url"] = line.decode().strip().rsplit(" ", 1)[-1]
        ctx["fake_pid"] = fake.pid
        fake_port = int(ctx["fake_url"].rsplit(":", 1)[1])
        log(f"fake upstream at {ctx['fake_url']}")

        mc_port = free_port()
        mc_cmd = ["memcached", "-l", "127.0.0.1", "-p", str(mc_port), "-U", "0", "-m", "64", "-c", "4096", "-t", "1"]
        if os.geteuid() == 0:
            mc_cmd += ["-u", "root"]
        procs.start("memcached", mc_cmd, tmp / "memcached.log")
        wait_port(mc_port, 10)
        ctx["mc_port"] = mc_port

        targets = [Target("direct", ctx["fake_url"], "sk-bench-direct", cpu_pids=lambda: [])]
        if nginx:
            ng_port = free_port()
            ng_dir = tmp / "nginx"
            ng_dir.mkdir()
            conf = (BENCH / "nginx.conf.template").read_text().format(prefix=ng_dir, port=ng_port,
                                                                      upstream=f"127.0.0.1:{fake_port}")
            (ng_dir / "nginx.conf").write_text(conf)
            ng = procs.start("nginx", [nginx, "-p", str(ng_dir), "-c", str(ng_dir / "nginx.conf")],
                             ng_dir / "stdout.log")
            wait_port(ng_port, 10)
            targets.append(Target("nginx", f"http://127.0.0.1:{ng_port}", "sk-bench-direct",
                                  cpu_pids=lambda: [ng.pid, *children_of(ng.pid)]))
        else:
            log("nginx not found: the nginx floor is skipped")

        for target in ([] if args.skip_baselines else targets):
            run_wrk(target.base_url + "/v1/chat/completions", target.key, 10, 1, body_file)  # warm-up
            for row in run_target(target, baseline_plan, ctx):
                rows.append({"config": target.name, **row})

        for db, workers in configs:
            gw = start_gateway(procs, ctx, db, workers, plan)
            log(f"gateway {gw['name']} up (workers {children_of(gw['master'].pid)})")
            pg_before = pg_stats(ctx["pg_admin_url"], ctx["pg_db"]) if db == "pg" else None
            gw_rows = run_target(gw["target"], plan, ctx)
            rows += [{"config": gw["name"], **row} for row in gw_rows]
            peak = [rss_mb(pid, "VmHWM") for pid in children_of(gw["master"].pid)]
            log(f"{gw['name']}: peak RSS per worker (VmHWM) {[round(p, 1) for p in peak]} MB")
            if pg_before is not None and not args.no_pg_crosscheck:
                total = (sum(r["requests"] for r in gw_rows)
                         + ctx.get("unmeasured_requests", {}).get(gw["target"].name, 0))  # warm-ups too
                crosscheck[gw["target"].name] = {"requests": total, **pg_crosscheck(ctx, pg_before, total)}
                log(f"pg cross-check {gw['target'].name}: {crosscheck[gw['target'].name]}")
            procs.stop(gw["master"], timeout=20)
    finally:
        procs.stop_all()

    meta["load_end"] = loadavg()
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    csv_path = out_dir / f"{stamp}.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in COLUMNS})
    md = markdown(rows, meta, crosscheck)
    (out_dir / f"{stamp}.md").write_text(md)
    if not args.no_write:
        (BENCH / "RESULTS.md").write_text(md)
    print(md)
    print(ratios(rows))
    log(f"wrote {csv_path} and {out_dir / (stamp + '.md')}" + ("" if args.no_write else " and bench/RESULTS.md"))
    if args.keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
