"""PostgreSQL: each database step of a proxied request as ONE statement.

Under gevent psycopg runs its pure-Python wait loop, so every round trip costs about
half a millisecond of worker CPU; BEGIN and COMMIT are round trips too. PostgreSQL's
data-modifying CTEs let the reserve step (conditional UPDATE + reservation row) and
the record step (release reservation, add usage, bump key and upstream-key counters,
write the log row) each run as a single statement in autocommit mode. A single
statement is atomic, so the guarantees of the multi-statement path (used on SQLite,
which has no network round trips to save) are unchanged: the UPDATE's WHERE clause
still decides admission, and only the statement that deletes a reservation releases it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

RESERVE = text("""
WITH admitted AS (
    UPDATE usage_counters
       SET reserved_tokens = reserved_tokens + :tokens,
           reserved_requests = reserved_requests + 1,
           reserved_bytes = reserved_bytes + :nbytes
     WHERE id = :counter_id
       AND (CAST(:token_quota AS BIGINT) IS NULL
            OR tokens_in + tokens_out + reserved_tokens + :tokens <= CAST(:token_quota AS BIGINT))
       AND (CAST(:request_quota AS BIGINT) IS NULL
            OR requests + reserved_requests + 1 <= CAST(:request_quota AS BIGINT))
       AND (CAST(:byte_quota AS BIGINT) IS NULL
            OR bytes + reserved_bytes + :nbytes <= CAST(:byte_quota AS BIGINT))
    RETURNING id
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
     WHERE id = :key_id
    RETURNING id
), provider_key AS (
    UPDATE upstream_keys
       SET requests = requests + 1, tokens_in = tokens_in + :tokens_in,
           tokens_out = tokens_out + :tokens_out, last_used_at = :now
     WHERE id = :upstream_key_id
    RETURNING id
)
INSERT INTO request_logs (
    request_id, created_at, user_id, key_id, backend_id, upstream_key_id, route, model, status, streamed,
    tokens_in, tokens_out, cache_read_tokens, cache_creation_tokens, estimated, bytes_in, bytes_out,
    latency_ms, ttfb_ms, outcome, error_type, client_ip, cost)
VALUES (
    :request_id, :now, :user_id, :key_id, :backend_id, :upstream_key_id, :route, :model, :status, :streamed,
    :tokens_in, :tokens_out, :cache_read_tokens, :cache_creation_tokens, :estimated, :bytes_in, :bytes_out,
    :latency_ms, :ttfb_ms, :outcome, :error_type, :client_ip, :cost)
""")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection without BEGIN/COMMIT round trips (one statement = one
    transaction); the pool restores the default isolation when it is returned."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
