"""gunicorn settings for KeyGate. Every value can be set from the environment.

gevent workers, because a gateway spends its life waiting on upstreams: one greenlet
per open request, so hundreds of concurrent streams cost kilobytes, not threads.
"""
import os
import sys
import tempfile

# Bind address; behind nginx keep it on loopback or a private interface.
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
worker_class = "gevent"
# One worker per core is the usual fit for I/O-bound gevent workers.
workers = int(os.environ.get("GATEWAY_WORKERS", os.environ.get("WEB_CONCURRENCY", "2")))
# Greenlets per worker = concurrent requests (each open stream holds one).
worker_connections = int(os.environ.get("GATEWAY_WORKER_CONNECTIONS", "1000"))
# A heartbeat, not a request limit: long streams are fine, but a worker whose event
# loop is blocked this long is killed (with every stream on it).
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "60"))
# On SIGTERM/reload, open streams get this long to finish before they are cut.
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GATEWAY_KEEPALIVE", "5"))
# Bounded request line and headers: slow or hostile clients cannot send megabytes of them.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
# gunicorn's access log is off unless GATEWAY_ACCESS_LOG names a file (or "-"): the
# gateway already writes one structured line per request (route, status, latency, key
# prefix, tokens...), and a second line per request cost ~3% of the worker's CPU
# (bench/PROFILE.md). When on, it omits the query string (%(U)s is the path only), so a
# `?key=` can never reach a log file.
accesslog = os.environ.get("GATEWAY_ACCESS_LOG") or None
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")
proc_name = "keygate"
# Prometheus multiprocess mode: each worker writes its metric values to files in this
# folder and /metrics sums them. It must be in the environment before any worker starts
# (prometheus_client reads it at import); a private temporary folder when unset.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keygate-metrics-")


def on_starting(server):  # noqa: ANN001
    """Validate configuration once in the master, so a bad setting exits 1 with one line
    instead of every worker crashing in a loop."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gateway.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as error:
        print(f"keygate: configuration error: {error}", file=sys.stderr)
        sys.exit(1)
    if server.cfg.workers > 1 and config["RATELIMIT_STORAGE_URI"].startswith("memory"):
        # Each worker would count on its own: every rate limit multiplied by the workers.
        print(f"keygate: WARNING: RATELIMIT_STORAGE_URI={config['RATELIMIT_STORAGE_URI']} with "
              f"{server.cfg.workers} workers - each worker counts on its own, so every rate limit is "
              f"multiplied by {server.cfg.workers}; use memcached:// (see .env.example)", file=sys.stderr)
    # Values from a previous run would be summed into this one's: start from zero.
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))


def child_exit(server, worker):  # noqa: ANN001
    """A dead worker's live gauges (open streams) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001
    """Background greenlets, one set per worker; each job takes a database lease so it
    runs on one worker across the whole deployment."""
    from gateway.proxy import prober, sweep
    from gateway.retention import start_scheduler

    start_scheduler(worker.wsgi)
    prober.start_background(worker.wsgi)
    sweep.start_background(worker.wsgi)
