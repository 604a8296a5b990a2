"""``relay.EventFramer`` on recorded bytes: whatever the split, only whole events come
out before ``finish``, and the bytes are unchanged."""
from __future__ import annotations

from gateway.proxy.relay import EventFramer

STREAM = (b'data: {"a":1}\n\n' b'event: x\r\ndata: {"b":2}\r\n\r\n' b"data: three\r\r" b'data: {"partial"')


def test_split_at_every_byte_yields_whole_events_and_keeps_the_bytes():
    for cut in range(len(STREAM) + 1):
        framer = EventFramer()
        parts = [framer.feed(STREAM[:cut]), framer.feed(STREAM[cut:])]
        before_finish = b"".join(parts)
        assert before_finish == STREAM[:STREAM.index(b'data: {"partial"')], cut
        assert before_finish + framer.finish() == STREAM


def test_an_incomplete_event_is_held_and_can_be_dropped():
    framer = EventFramer()
    assert framer.feed(b'data: {"x": "half') == b""
    assert framer.feed(b' more"}\n\ndata: nex') == b'data: {"x": "half more"}\n\n'
    assert framer.held == b"data: nex"


def test_an_event_without_end_is_passed_on_past_the_limit():
    framer = EventFramer()
    huge = b"data: " + b"a" * (EventFramer.LIMIT + 10)
    assert framer.feed(huge) == huge and framer.held == b""
