"""The multi-statement path's SQL (SQLite, and PostgreSQL when a key's health must
change), built once at import as plain Core statements with bound parameters.

Building ``update(Model).values(col=Model.col + n)`` per request ran SQLAlchemy's
ORM-enabled DML machinery and recomputed each statement's cache key every time: about
a third of a request's CPU on SQLite (bench/PROFILE.md). A statement object built
once keeps its cache key, so executing it is a lookup in the compiled cache.
Every amount is a bound parameter; column types (the DateTime format SQLite stores)
come from the table definitions exactly as with the ORM.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, BindParameter, bindparam, delete, insert, or_, update

from ..models import ApiKey, RequestLog, Reservation, UpstreamKey, UsageCounter

_counters = UsageCounter.__table__
_reservations = Reservation.__table__
_keys = ApiKey.__table__
_upstream_keys = UpstreamKey.__table__


def _quota(name: str) -> BindParameter[int]:
    return bindparam(name, type_=BigInteger)


# Reserve: the WHERE clause is the quota check (a NULL quota means none); 1 row = admitted.
ADMIT = (update(_counters)
         .where(_counters.c.id == bindparam("counter_id"))
         .where(or_(_quota("token_quota").is_(None),
                    _counters.c.tokens_in + _counters.c.tokens_out + _counters.c.reserved_tokens
                    + bindparam("add_tokens") <= _quota("token_quota")))
         .where(or_(_quota("request_quota").is_(None),
                    _counters.c.requests + _counters.c.reserved_requests + 1 <= _quota("request_quota")))
         .where(or_(_quota("byte_quota").is_(None),
                    _counters.c.bytes + _counters.c.reserved_bytes + bindparam("add_bytes") <= _quota("byte_quota")))
         .values(reserved_tokens=_counters.c.reserved_tokens + bindparam("add_tokens"),
                 reserved_requests=_counters.c.reserved_requests + 1,
                 reserved_bytes=_counters.c.reserved_bytes + bindparam("add_bytes")))
HOLD = insert(_reservations)  # executed with the reservation's column values

# Settle: the reservation row is deleted first; only the deleter releases its amounts.
# RETURNING: the amounts as the row holds them now (a byte budget may have grown it).
RELEASE = (delete(_reservations).where(_reservations.c.request_id == bindparam("held_request_id"))
           .returning(_reservations.c.tokens, _reservations.c.requests, _reservations.c.bytes))
ADD_USAGE = (update(_counters)
             .where(_counters.c.id == bindparam("counter_id"))
             .values(tokens_in=_counters.c.tokens_in + bindparam("add_tokens_in"),
                     tokens_out=_counters.c.tokens_out + bindparam("add_tokens_out"),
                     requests=_counters.c.requests + bindparam("add_requests"),
                     bytes=_counters.c.bytes + bindparam("add_bytes"),
                     reserved_tokens=_counters.c.reserved_tokens - bindparam("release_tokens"),
                     reserved_requests=_counters.c.reserved_requests - bindparam("release_requests"),
                     reserved_bytes=_counters.c.reserved_bytes - bindparam("release_bytes")))

KEY_USAGE = (update(_keys)
             .where(_keys.c.id == bindparam("key_id"))
             .values(requests=_keys.c.requests + 1, tokens_in=_keys.c.tokens_in + bindparam("add_tokens_in"),
                     tokens_out=_keys.c.tokens_out + bindparam("add_tokens_out"),
                     last_used_at=bindparam("used_at", type_=_keys.c.last_used_at.type)))
UPSTREAM_KEY_USAGE = (update(_upstream_keys)
                      .where(_upstream_keys.c.id == bindparam("upstream_key_id"))
                      .values(requests=_upstream_keys.c.requests + 1,
                              tokens_in=_upstream_keys.c.tokens_in + bindparam("add_tokens_in"),
                              tokens_out=_upstream_keys.c.tokens_out + bindparam("add_tokens_out"),
                              last_used_at=bindparam("used_at", type_=_upstream_keys.c.last_used_at.type)))
LOG_ROW = insert(RequestLog.__table__)  # executed with the row's column values
