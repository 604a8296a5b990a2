"""psycopg's network waits, done the gevent way.

psycopg 3 cooperates with gevent when it is imported after monkey-patching (see
docs/architecture.md, SQLite and PostgreSQL under gevent): it detects the patched
``select`` module and waits with ``wait_poll``, which builds a gevent ``select.poll``
emulation (a Python object, a watcher per registered descriptor, started and stopped)
on every database round trip. The hot
path makes two round trips per request, so that emulation was a visible share of the
worker's CPU (bench/PROFILE.md). This waits on the connection's socket with one libev
watcher on the gevent hub instead - what ``gevent.socket.wait_read`` does - which
measured about 30% less CPU per statement (101 -> 69 us, bench/PROFILE.md).

Only the common waits are handled here: "readable" or "writable" with no deadline.
Anything else (both directions at once, a deadline) goes to psycopg's own function.
Installed once per process by ``install`` when gevent has patched ``select``; outside
gevent (the CLI, plain tests) psycopg keeps its C wait.
"""
from __future__ import annotations

import sys
from typing import Any

_installed = False


def _gevent_select_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("select"))


def install() -> bool:
    """Replace psycopg's wait function in this process; True when it is in place."""
    global _installed
    if _installed:
        return True
    if not _gevent_select_patched():
        return False
    from gevent.hub import get_hub
    from psycopg import waiting
    from psycopg.waiting import Ready, Wait

    fallback = waiting.wait
    events = {Wait.R: (1, Ready.R), Wait.W: (2, Ready.W)}  # libev EV_READ / EV_WRITE

    def wait_gevent(gen: Any, fileno: int, interval: float = 0.0, timeout: float | None = None) -> Any:
        if timeout is not None:
            return fallback(gen, fileno, interval, timeout)
        hub = get_hub()
        try:
            state = next(gen)
            while True:
                event = events.get(state)
                if event is None:  # both directions: psycopg's own wait takes over
                    return fallback(_resume(state, gen), fileno, interval, None)
                watcher = hub.loop.io(fileno, event[0])
                try:
                    hub.wait(watcher)
                finally:
                    watcher.close()
                state = gen.send(event[1])
        except StopIteration as done:
            return done.value

    waiting.wait = wait_gevent
    _installed = True
    return True


def _resume(first: Any, gen: Any) -> Any:
    """A generator that yields ``first`` and then continues ``gen`` (so a fallback wait
    function can take over a generator whose first state was already read)."""
    ready = yield first
    while True:
        try:
            state = gen.send(ready)
        except StopIteration as done:
            return done.value
        ready = yield state
