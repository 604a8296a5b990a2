"""The secret scrubber (``gateway.proxy.scrub``) on recorded bytes: the one rule, and
the streaming form giving the same answer however the bytes are split into chunks."""
from __future__ import annotations

import json

import pytest

from gateway.proxy.scrub import REDACTED, StreamScrubber, scrub_bytes, scrub_text
from gateway.proxy.upstream_errors import clean_error

SECRET = "sk-upstream-CANARY-4f1d2c3b5a697887"
# A recorded OpenAI stream whose upstream echoed the credential it was sent, in one
# delta, a 12-character prefix of it in another, and its 12-character tail in a third.
RECORDED = (
    b'data: {"id":"c1","choices":[{"delta":{"content":"your key is ' + SECRET.encode() + b'"}}]}\n\n'
    b'data: {"id":"c1","choices":[{"delta":{"content":"prefix ' + SECRET[:12].encode() + b'!"}}]}\n\n'
    b'data: {"id":"c1","choices":[{"delta":{"content":"tail ' + SECRET[-12:].encode() + b'"}}]}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = (
    b'data: {"id":"c1","choices":[{"delta":{"content":"your key is [redacted]"}}]}\n\n'
    b'data: {"id":"c1","choices":[{"delta":{"content":"prefix [redacted]!"}}]}\n\n'
    b'data: {"id":"c1","choices":[{"delta":{"content":"tail [redacted]"}}]}\n\n'
    b"data: [DONE]\n\n"
)


def _streamed(chunks: list[bytes]) -> bytes:
    scrubber = StreamScrubber(SECRET)
    return b"".join(scrubber.feed(chunk) for chunk in chunks) + scrubber.finish()


def test_the_rule_on_the_recorded_stream() -> None:
    assert scrub_bytes(RECORDED, SECRET) == EXPECTED


def test_split_at_every_byte_position_gives_the_same_answer() -> None:
    for at in range(len(RECORDED) + 1):
        assert _streamed([RECORDED[:at], RECORDED[at:]]) == EXPECTED, at


def test_split_into_single_bytes_and_at_every_pair_of_positions_inside_the_secret() -> None:
    assert _streamed([bytes([b]) for b in RECORDED]) == EXPECTED
    start = RECORDED.index(SECRET.encode())
    for first in range(start - 2, start + len(SECRET) + 2):
        for second in range(first, start + len(SECRET) + 2):
            assert _streamed([RECORDED[:first], RECORDED[first:second], RECORDED[second:]]) == EXPECTED


def test_a_twelve_character_prefix_leaks_nothing_beyond_the_first_characters() -> None:
    """Before, only the first 8 characters were replaced: characters 9-12 stayed readable."""
    echoed = f"Bearer {SECRET[:12]} rejected".encode()
    assert scrub_bytes(echoed, SECRET) == b"Bearer [redacted] rejected"
    assert clean_error(400, json.dumps({"error": {"message": f"bad key {SECRET[:12]}"}}).encode(),
                       SECRET).message == "bad key [redacted]"


@pytest.mark.parametrize(("fragment", "redacted"), [
    (SECRET[:8], True),  # a prefix of 8
    (SECRET[-8:], True),  # a suffix of 8
    (SECRET[5:20], True),  # any part of 15
    (SECRET[:7], False),  # under 8: too common to remove
    (SECRET[5:19], False),  # a middle part under 15
])
def test_which_fragments_are_redacted(fragment: str, redacted: bool) -> None:
    data = f"<{fragment}>".encode()
    assert scrub_bytes(data, SECRET) == (b"<" + REDACTED + b">" if redacted else data)


def test_nothing_is_held_back_after_an_event_end_so_streams_are_not_delayed() -> None:
    scrubber = StreamScrubber(SECRET)
    event = b'data: {"choices":[{"delta":{"content":"sk-up"}}]}\n\n'
    assert scrubber.feed(event) == event
    partial = b'data: {"x":"' + SECRET[:20].encode()
    assert scrubber.feed(partial) == b'data: {"x":"'  # the possible start of the secret waits
    assert scrubber.feed(SECRET[20:].encode() + b'"}\n\n') == REDACTED + b'"}\n\n'


def test_without_a_secret_bytes_pass_untouched_and_header_values_are_scrubbed_as_text() -> None:
    scrubber = StreamScrubber("")
    assert scrubber.feed(RECORDED) == RECORDED and scrubber.finish() == b""
    assert scrub_text(f'W/"{SECRET}"', SECRET) == 'W/"[redacted]"'
    assert scrub_text("attachment; filename=caf\u00e9.txt", SECRET) == "attachment; filename=caf\u00e9.txt"


def test_a_repetitive_secret_and_repetitive_bytes_stay_consistent_across_splits() -> None:
    secret = "abababababababab12"
    data = b"x" + b"ab" * 40 + b"12" + b"ab" * 5 + secret.encode() + b"y"
    whole = scrub_bytes(data, secret)
    assert secret.encode() not in whole
    for at in range(len(data) + 1):
        scrubber = StreamScrubber(secret)
        assert scrubber.feed(data[:at]) + scrubber.feed(data[at:]) + scrubber.finish() == whole
