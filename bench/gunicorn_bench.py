"""gunicorn config used by bench/run.py: the project's gunicorn.conf.py, unchanged,
plus a per-worker database statement counter (bench only; nothing under gateway/ is
touched).

Each worker registers class-level SQLAlchemy listeners (every Engine / Pool in the
process) and a greenlet that writes its cumulative counts to
``$BENCH_COUNTS_DIR/<pid>.json`` every 0.5 s. run.py sums the files before and after a
load phase. Counted:

- statements: every ``cursor.execute`` SQLAlchemy issues (by verb: select/insert/...),
  plus the hot-path statements run on the driver connection (``pg_statements.run``)
- commits / rollbacks: explicit transaction ends (ConnectionEvents)
- checkouts: connections taken from the pool (with ``pool_pre_ping`` each is one extra
  ``SELECT 1`` round trip on PostgreSQL, which the statement counter cannot see)
- resets: connections returned to the pool (each is a ROLLBACK round trip unless the
  transaction was already ended)

The listeners cost about a microsecond per statement.
"""
import json
import os
import runpy
import signal
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
for _name, _value in runpy.run_path(str(_ROOT / "gunicorn.conf.py")).items():
    if not _name.startswith("__"):
        globals()[_name] = _value

_project_post_worker_init = globals().get("post_worker_init")
_project_pre_request = globals().get("pre_request")
_project_post_request = globals().get("post_request")
# Per-worker counters (each worker is a fork, so each has its own copy). "inflight" is
# requests between gunicorn's pre_request and post_request hooks: run.py waits for it
# to reach 0 between points, so one point's stuck requests never leak into the next.
counts = {"inflight": 0}


def pre_request(worker, req):
    counts["inflight"] += 1
    if _project_pre_request is not None:
        _project_pre_request(worker, req)


def post_request(worker, req, environ, resp):
    counts["inflight"] -= 1
    if _project_post_request is not None:
        _project_post_request(worker, req, environ, resp)


def post_worker_init(worker):
    if _project_post_worker_init is not None:
        _project_post_worker_init(worker)
    out_dir = os.environ.get("BENCH_COUNTS_DIR")
    if not out_dir:
        return
    import gevent
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    counts.update({"statements": 0, "commits": 0, "rollbacks": 0, "checkouts": 0, "resets": 0})

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        counts["statements"] += 1
        verb = "stmt_" + statement.lstrip().split(None, 1)[0].lower() if statement.strip() else "stmt_other"
        counts[verb] = counts.get(verb, 0) + 1

    def bump(name):
        def listener(*_args, **_kw):
            counts[name] += 1
        return listener

    event.listen(Engine, "before_cursor_execute", on_execute)
    # The PostgreSQL hot-path statements run on the driver connection, below SQLAlchemy's
    # execution events (gateway/proxy/pg_statements.run): count those where they run.
    from gateway.proxy import pg_statements

    raw_run = pg_statements.run

    def counted_run(engine, statement, params):
        on_execute(None, None, pg_statements._SQL[id(statement)], params, None, False)
        return raw_run(engine, statement, params)

    pg_statements.run = counted_run
    event.listen(Engine, "commit", bump("commits"))
    event.listen(Engine, "rollback", bump("rollbacks"))
    event.listen(Pool, "checkout", bump("checkouts"))
    event.listen(Pool, "reset", bump("resets"))
    path = Path(out_dir) / f"{os.getpid()}.json"

    def dump_forever():
        while True:  # lives exactly as long as the worker
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, path)
            gevent.sleep(0.5)

    gevent.spawn(dump_forever)

    # `kill -USR2 <worker pid>` writes every greenlet's stack to $BENCH_COUNTS_DIR/stacks-<pid>.txt
    # (py-spy sees OS threads only, not greenlets). Workers do not use SIGUSR2 otherwise.
    def dump_stacks():
        from gevent.util import format_run_info

        (Path(out_dir) / f"stacks-{os.getpid()}.txt").write_text("\n".join(format_run_info()))

    gevent.signal_handler(signal.SIGUSR2, dump_stacks)
