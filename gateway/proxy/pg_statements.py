"""PostgreSQL: each database step of a proxied request as ONE statement.

Under gevent psycopg runs its pure-Python wait loop, so every round trip costs about
half a millisecond of worker CPU; BEGIN and COMMIT are round trips too. PostgreSQL's
data-modifying CTEs let the reserve step (conditional UPDATE + reservation row) and
the record step (release reservation, add usage, bump key and upstream-key counters,
write the log row) each run as a single statement in autocommit mode. A single
statement is atomic, so the guarantees of the multi-statement path (used on SQLite,
which has no network round trips to save) are unchanged: the UPDATE's WHERE clause
still decides admission, and only the statement that deletes a reservation releases it.

The reserve statement commits without waiting for its WAL flush (``synchronous_commit``
off for that one transaction; the change is visible to every other transaction at
once): every request's reserve and record both lock the caller's usage row, and a
reserve holding that lock through an fsync made concurrent requests of one user queue
behind each other (bench/PROFILE.md). Only a crash of the database server itself can
lose such a commit, and then the counter row and the reservation are lost together,
so the books stay consistent; the record statement, which is the accounting, keeps
the synchronous commit (and flushing it flushes every earlier reserve with it).

They run on the pooled driver connection itself (``run``): SQLAlchemy's per-execution
machinery (Connection, execution context, result wrapping, compiled-cache lookup) cost
~0.15 ms of CPU per statement, about 10% of a request (bench/PROFILE.md). What it did
for us is kept: the pool hands out the connection (pinged if it sat idle), a disconnect
invalidates it and empties the pool, and driver errors are raised as SQLAlchemy's exception classes, so
callers handle ``OperationalError``/``IntegrityError`` exactly as before.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import TextClause

# Rows are locked in one order everywhere - reservation, usage_counters, api_keys,
# upstream_keys, then the log row - here and in the multi-statement path
# (record._write), so two requests can never deadlock. Data-modifying CTEs otherwise run
# in an unspecified order; each "(SELECT count(*) FROM previous) >= 0" (always true)
# makes a step wait for the one before it.
RESERVE = text("""
WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true) AS setting
), admitted AS (
    UPDATE usage_counters
       SET reserved_tokens = reserved_tokens + :tokens,
           reserved_requests = reserved_requests + 1,
           reserved_bytes = reserved_bytes + :nbytes
      FROM no_flush_wait
     WHERE id = :counter_id
       AND (CAST(:token_quota AS BIGINT) IS NULL
            OR tokens_in + tokens_out + reserved_tokens + :tokens <= CAST(:token_quota AS BIGINT))
       AND (CAST(:request_quota AS BIGINT) IS NULL
            OR requests + reserved_requests + 1 <= CAST(:request_quota AS BIGINT))
       AND (CAST(:byte_quota AS BIGINT) IS NULL
            OR bytes + reserved_bytes + :nbytes <= CAST(:byte_quota AS BIGINT))
    RETURNING usage_counters.id
)
INSERT INTO reservations (request_id, counter_id, tokens, requests, bytes, created_at)
SELECT :request_id, id, :tokens, 1, :nbytes, :now FROM admitted
RETURNING id
""")

RECORD = text("""
WITH released AS (
    DELETE FROM reservations WHERE request_id = :held_request_id RETURNING tokens, requests, bytes
), counter AS (
    UPDATE usage_counters
       SET tokens_in = tokens_in + :tokens_in, tokens_out = tokens_out + :tokens_out,
           requests = requests + :count_request, bytes = bytes + :nbytes,
           reserved_tokens = reserved_tokens - COALESCE((SELECT tokens FROM released), 0),
           reserved_requests = reserved_requests - COALESCE((SELECT requests FROM released), 0),
           reserved_bytes = reserved_bytes - COALESCE((SELECT bytes FROM released), 0)
     WHERE id = :counter_id
    RETURNING id
), user_key AS (
    UPDATE api_keys
       SET requests = requests + 1, tokens_in = tokens_in + :tokens_in,
           tokens_out = tokens_out + :tokens_out, last_used_at = :now
     WHERE id = :key_id AND (SELECT count(*) FROM counter) >= 0
    RETURNING id
), provider_key AS (
    UPDATE upstream_keys
       SET requests = requests + 1, tokens_in = tokens_in + :tokens_in,
           tokens_out = tokens_out + :tokens_out, last_used_at = :now
     WHERE id = :upstream_key_id AND (SELECT count(*) FROM user_key) >= 0
    RETURNING id
)
INSERT INTO request_logs (
    request_id, created_at, user_id, key_id, backend_id, upstream_key_id, route, model, status, streamed,
    tokens_in, tokens_out, cache_read_tokens, cache_creation_tokens, estimated, bytes_in, bytes_out,
    latency_ms, ttfb_ms, outcome, error_type, client_ip, cost)
SELECT
    :request_id, :created_at, :user_id, :key_id, :backend_id, :upstream_key_id, :route, :model, :status, :streamed,
    :tokens_in, :tokens_out, :cache_read_tokens, :cache_creation_tokens, :estimated, :bytes_in, :bytes_out,
    :latency_ms, :ttfb_ms, :outcome, :error_type, :client_ip, :cost
 WHERE (SELECT count(*) FROM provider_key) >= 0
""")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _driver_sql(statement: TextClause) -> str:
    """The statement with psycopg's ``%(name)s`` placeholders, compiled once."""
    return str(statement.compile(dialect=psycopg_dialect.dialect()))


_SQL: dict[int, str] = {id(RESERVE): _driver_sql(RESERVE), id(RECORD): _driver_sql(RECORD)}


def run(engine: Engine, statement: TextClause, params: dict[str, Any]) -> tuple | None:
    """Execute one of this module's statements as its own transaction (autocommit: no
    BEGIN/COMMIT round trips) and return its first row, if any."""
    sql = _SQL[id(statement)]
    try:
        fairy = engine.raw_connection()  # pool checkout, idle ping included
    except engine.dialect.loaded_dbapi.Error as error:
        # Opening a new connection here is outside any SQLAlchemy Connection, so the
        # driver's own exception arrives unwrapped: wrap it like every other layer's,
        # so callers (the 503 handler, the record step's retry) recognise it.
        raise sa_exc.DBAPIError.instance(sql, params, error, engine.dialect.loaded_dbapi.Error,
                                         hide_parameters=True, connection_invalidated=True,
                                         dialect=engine.dialect) from error
    try:
        driver: Any = fairy.driver_connection  # a psycopg connection (never None once checked out)
        try:
            driver.autocommit = True
            try:
                with driver.cursor() as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchone() if cursor.description else None
            finally:
                if not driver.closed:
                    driver.autocommit = False
        except engine.dialect.loaded_dbapi.Error as error:
            gone = engine.dialect.is_disconnect(error, driver, None)
            if gone:
                # As SQLAlchemy does for its own statements: this connection is dead and
                # so, most likely, is every other one opened before it (server restart).
                fairy.invalidate(error)
                engine.pool.dispose()
            raise sa_exc.DBAPIError.instance(sql, params, error, engine.dialect.loaded_dbapi.Error,
                                             hide_parameters=True, connection_invalidated=gone,
                                             dialect=engine.dialect) from error
    finally:
        fairy.close()
