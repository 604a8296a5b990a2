"""The ``responses`` family of the usage parser (OpenAI Responses API) on recorded byte
streams and documents, split at every byte boundary: the usage and the response id must
not depend on where the upstream's chunks were cut (issue 16)."""
from __future__ import annotations

import json

import pytest

from gateway.proxy.relay import error_event
from gateway.proxy.usage_parser import Usage, UsageParser, estimate_request_tokens

# Recorded from api.openai.com (ids shortened), gpt-5-mini with reasoning and a cached prefix.
RESPONSE_BASE = (b'{"id":"resp_68b1e0c2f4a08190a1b2","object":"response","created_at":1756487874,'
                 b'"status":"in_progress","background":false,"error":null,"incomplete_details":null,'
                 b'"instructions":null,"max_output_tokens":null,"model":"gpt-5-mini-2025-08-07","output":[],'
                 b'"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":"low",'
                 b'"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},'
                 b'"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,'
                 b'"metadata":{}}')
USAGE = (b'{"input_tokens":2104,"input_tokens_details":{"cached_tokens":1920},"output_tokens":331,'
         b'"output_tokens_details":{"reasoning_tokens":256},"total_tokens":2435}')
COMPLETED = (RESPONSE_BASE.replace(b'"status":"in_progress"', b'"status":"completed"')
             .replace(b'"usage":null', b'"usage":' + USAGE))
STREAM = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
    + RESPONSE_BASE + b'}\n\n'
    b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":1,"response":'
    + RESPONSE_BASE + b'}\n\n'
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":2,'
    b'"output_index":1,"item":{"id":"msg_68b1","type":"message","status":"in_progress","content":[],'
    b'"role":"assistant"}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":3,'
    b'"item_id":"msg_68b1","output_index":1,"content_index":0,"delta":"Hello \\"response.completed\\"",'
    b'"logprobs":[]}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":4,'
    b'"item_id":"msg_68b1","output_index":1,"content_index":0,"delta":" usage","logprobs":[]}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":5,"response":'
    + COMPLETED + b'}\n\n'
)
EXPECTED = Usage(input_tokens=2104, output_tokens=331, cache_read_tokens=1920, reported=True,
                 model="gpt-5-mini-2025-08-07", response_id="resp_68b1e0c2f4a08190a1b2")
# Some proxies drop the ``event:`` lines; the data's ``type`` decides then.
STREAM_WITHOUT_NAMES = b"\n".join(line for line in STREAM.split(b"\n") if not line.startswith(b"event: "))
INCOMPLETE_STREAM = STREAM.replace(b"response.completed\ndata", b"response.incomplete\ndata").replace(
    b'"type":"response.completed","sequence_number":5', b'"type":"response.incomplete","sequence_number":5')
FAILED_STREAM = STREAM.replace(b"response.completed\ndata", b"response.failed\ndata").replace(
    b'"type":"response.completed","sequence_number":5', b'"type":"response.failed","sequence_number":5')

CASES = {
    "stream": (True, STREAM, EXPECTED),
    "stream_without_event_names": (True, STREAM_WITHOUT_NAMES, EXPECTED),
    "incomplete_stream": (True, INCOMPLETE_STREAM, EXPECTED),
    "failed_stream": (True, FAILED_STREAM, EXPECTED),
    "crlf_stream": (True, STREAM.replace(b"\n", b"\r\n"), EXPECTED),
    "document": (False, json.dumps(json.loads(COMPLETED), indent=2).encode(), EXPECTED),
}


def run(parser: UsageParser, pieces: list[bytes]) -> bytes:
    return b"".join(parser.feed(piece) for piece in pieces) + parser.finish()


@pytest.mark.parametrize("name", sorted(CASES))
def test_usage_and_id_are_identical_for_every_two_piece_split(name: str) -> None:
    streaming, data, expected = CASES[name]
    for i in range(len(data) + 1):
        parser = UsageParser("responses", streaming)
        assert run(parser, [data[:i], data[i:]]) == data  # bytes pass through untouched
        assert parser.usage == expected, i
        assert parser.saw_done is streaming


@pytest.mark.parametrize("name", sorted(CASES))
def test_usage_and_id_are_identical_one_byte_at_a_time(name: str) -> None:
    streaming, data, expected = CASES[name]
    parser = UsageParser("responses", streaming)
    assert run(parser, [data[i:i + 1] for i in range(len(data))]) == data
    assert parser.usage == expected


def test_the_id_is_known_as_soon_as_response_created_has_arrived() -> None:
    first = STREAM.index(b"\n\n") + 2
    parser = UsageParser("responses", True)
    parser.feed(STREAM[:first - 1])
    assert parser.usage.response_id is None
    parser.feed(STREAM[first - 1:first])
    assert parser.usage.response_id == "resp_68b1e0c2f4a08190a1b2" and not parser.usage.reported


def test_a_stream_cut_before_its_final_event_reports_no_usage() -> None:
    cut = STREAM.index(b"event: response.completed")
    parser = UsageParser("responses", True)
    run(parser, [STREAM[:cut]])
    assert not parser.usage.reported and not parser.saw_done
    assert parser.usage.response_id == "resp_68b1e0c2f4a08190a1b2"


@pytest.mark.parametrize("usage, error", [(b'{"input_tokens":-1,"output_tokens":3}', "malformed_usage"),
                                          (b'{"input_tokens":"12","output_tokens":3}', "malformed_usage"),
                                          (b'[1,2]', "malformed_usage")])
def test_implausible_usage_is_not_reported(usage: bytes, error: str) -> None:
    parser = UsageParser("responses", True)
    run(parser, [STREAM.replace(USAGE, usage)])
    assert not parser.usage.reported and parser.usage.error == error


@pytest.mark.parametrize("ident", ["../../x", "resp_" + "a" * 200, "resp 1", ""])
def test_an_id_that_is_not_id_shaped_is_ignored(ident: str) -> None:
    parser = UsageParser("responses", False)
    run(parser, [COMPLETED.replace(b"resp_68b1e0c2f4a08190a1b2", ident.encode())])
    assert parser.usage.response_id is None and parser.usage.reported


def test_the_responses_error_event_is_the_api_s_own_shape() -> None:
    event = error_event("responses", "The upstream connection failed mid-stream; the stream was ended")
    name, data = event.decode().rstrip("\n").split("\n")
    assert name == "event: error"
    assert json.loads(data[len("data: "):]) == {
        "type": "error", "code": "stream_interrupted", "param": None,
        "message": "The upstream connection failed mid-stream; the stream was ended"}


def test_the_estimate_counts_instructions_input_items_and_tool_output() -> None:
    body = {"instructions": "x" * 40, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "y" * 40}]},
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "z" * 40},
        {"type": "function_call_output", "call_id": "c1", "output": "w" * 40}]}
    assert estimate_request_tokens("responses", body) == 40
