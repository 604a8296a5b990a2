"""The shared background-loop shape (``gateway.background``): a loop outlives failed
rounds - a database error and a bug alike - and keeps running the next ones; a lease
is held by one holder at a time."""
from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from gateway import background


def test_a_loop_outlives_failed_rounds(app: Any, caplog: pytest.LogCaptureFixture):
    logging.getLogger("gateway.background").disabled = False  # alembic's fileConfig disabled it
    rounds: list[int] = []
    third = threading.Event()

    def round_(_app: Any) -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        if len(rounds) == 2:
            raise KeyError("a bug")
        third.set()

    with caplog.at_level(logging.ERROR, logger="gateway.background"):
        # no wait between the first rounds; then the (daemon) thread parks for an hour
        thread = background.start_loop(app, "test-loop", lambda _last: 0.0 if len(rounds) < 3 else 3600.0, round_)
        assert thread is not None and third.wait(10)
    messages = [(r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == "gateway.background"]
    assert messages[:2] == [("background job test-loop: database error (OperationalError); the next round retries",
                             False),
                            ("background job test-loop: round failed; the next round retries", True)]
    assert background.start_loop(object(), "not-flask", lambda _last: 0.0, round_) is None


def test_a_lease_has_one_holder_at_a_time(app: Any):
    assert background.holds_lease(app, "test-lease", "one", 60)
    assert background.holds_lease(app, "test-lease", "one", 60)  # renewed by its holder
    assert not background.holds_lease(app, "test-lease", "two", 60)
