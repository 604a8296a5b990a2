"""The usage parser's Gemini family on recorded Gemini API bodies (SSE with ``\\r\\n``
separators, the JSON-array stream, one JSON response), split at every byte boundary:
streamed usage is cumulative, so the last ``usageMetadata`` is the request's."""
from __future__ import annotations

import json

import pytest

from gateway.proxy.usage_parser import Usage, UsageParser, estimate_request_tokens, estimate_tokens

# Shaped like gemini-2.5-flash's answer to streamGenerateContent?alt=sse with thinking on:
# the first chunk carries the thoughts, later ones the growing candidates count.
GEMINI_SSE = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 613,"promptTokensDetails": '
    b'[{"modality": "TEXT","tokenCount": 9}],"thoughtsTokenCount": 604},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "mKw0aOqfBr2nz7IPxvSe4Qo"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " sky is blue: usageMetadata data: "}],'
    b'"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 12,'
    b'"totalTokenCount": 625,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}],'
    b'"thoughtsTokenCount": 604},"modelVersion": "gemini-2.5-flash","responseId": "mKw0aOqfBr2nz7IPxvSe4Qo"}'
    b'\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " Rayleigh scattering."}],"role": "model"},'
    b'"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 87,'
    b'"totalTokenCount": 703,"cachedContentTokenCount": 4,"toolUsePromptTokenCount": 3,'
    b'"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}],"thoughtsTokenCount": 604},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "mKw0aOqfBr2nz7IPxvSe4Qo"}\r\n\r\n'
)
# input = prompt 9 + tool-use prompt 3; output = candidates 87 + thoughts 604; cached 4.
GEMINI_SSE_USAGE = Usage(input_tokens=12, output_tokens=691, cache_read_tokens=4, reported=True,
                         model="gemini-2.5-flash")
GEMINI_JSON = json.dumps({
    "candidates": [{"content": {"parts": [{"text": "Hello!"}], "role": "model"}, "finishReason": "STOP",
                    "avgLogprobs": -0.05, "index": 0}],
    "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5}]},
    "modelVersion": "gemini-2.0-flash", "responseId": "abc"}, indent=2).encode()
# streamGenerateContent without alt=sse: one JSON array of the same responses.
GEMINI_ARRAY = b"[" + b",\r\n".join(line[len(b"data: "):] for line in GEMINI_SSE.split(b"\r\n\r\n") if line) + b"]"

CASES = {
    "sse": (True, GEMINI_SSE, GEMINI_SSE_USAGE),
    "json": (False, GEMINI_JSON, Usage(input_tokens=5, output_tokens=2, reported=True, model="gemini-2.0-flash")),
    "array": (False, GEMINI_ARRAY, GEMINI_SSE_USAGE),
}


def run(parser: UsageParser, pieces: list[bytes]) -> bytes:
    out = b"".join(parser.feed(piece) for piece in pieces)
    return out + parser.finish()


@pytest.mark.parametrize("name", sorted(CASES))
def test_gemini_usage_is_identical_for_every_two_piece_split(name: str) -> None:
    streaming, data, expected = CASES[name]
    for i in range(len(data) + 1):
        parser = UsageParser("gemini", streaming)
        assert run(parser, [data[:i], data[i:]]) == data
        assert parser.usage == expected, i


@pytest.mark.parametrize("name", sorted(CASES))
def test_gemini_usage_is_identical_when_fed_one_byte_at_a_time(name: str) -> None:
    streaming, data, expected = CASES[name]
    parser = UsageParser("gemini", streaming)
    assert run(parser, [data[i:i + 1] for i in range(len(data))]) == data
    assert parser.usage == expected


def test_a_cut_gemini_stream_reports_the_last_cumulative_usage_it_saw_and_is_not_done() -> None:
    cut = GEMINI_SSE.rindex(b"\r\n\r\ndata: ") + 4  # the final chunk's start
    parser = UsageParser("gemini", True)
    run(parser, [GEMINI_SSE[:cut]])
    assert parser.usage == Usage(input_tokens=9, output_tokens=616, reported=True, model="gemini-2.5-flash")
    assert not parser.saw_done


def test_the_final_gemini_chunk_marks_the_stream_done() -> None:
    parser = UsageParser("gemini", True)
    run(parser, [GEMINI_SSE])
    assert parser.saw_done


def test_implausible_gemini_usage_is_not_reported() -> None:
    bogus = GEMINI_JSON.replace(b'"candidatesTokenCount": 2', b'"candidatesTokenCount": 99999999999')
    parser = UsageParser("gemini", False)
    run(parser, [bogus])
    assert not parser.usage.reported and parser.usage.error == "malformed_usage"
    negative = GEMINI_JSON.replace(b'"promptTokenCount": 5', b'"promptTokenCount": -7')
    parser = UsageParser("gemini", False)
    run(parser, [negative])
    assert not parser.usage.reported


def test_a_gemini_body_without_usage_reports_nothing() -> None:
    parser = UsageParser("gemini", False)
    run(parser, [b'{"totalTokens": 31}'])  # a countTokens answer
    assert parser.usage == Usage()


def test_gemini_request_estimate_counts_contents_system_instruction_function_parts_and_tools() -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}}
    result = {"name": "get_weather", "response": {"temperature": 21}}
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]
    body = {"contents": [{"role": "user", "parts": [{"text": "x" * 40}]},
                         {"role": "model", "parts": [{"functionCall": call}]},
                         {"role": "user", "parts": [{"functionResponse": result}]}],
            "systemInstruction": {"parts": [{"text": "y" * 20}]}, "tools": tools}
    expected = (10 + estimate_tokens(json.dumps(call)) + estimate_tokens(json.dumps(result)) + 5
                + estimate_tokens(json.dumps(tools)))
    assert estimate_request_tokens("gemini", body) == expected
    assert estimate_request_tokens("gemini", {"contents": "junk", "systemInstruction": 7, "tools": {}}) == 0
