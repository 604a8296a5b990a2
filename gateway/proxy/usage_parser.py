"""Read token usage out of upstream responses while the bytes stream to the client.

The parser does no I/O and never raises on what the upstream sends, because it runs
inside the relay generator: an exception there would cut a client's stream, and a
wrong number there would charge a user the wrong amount. It therefore

- passes bytes through unchanged (and without delay) unless it must strip the usage
  chunk the gateway asked for on the client's behalf;
- keeps memory bounded: one SSE event or one JSON body is buffered for parsing only up
  to a limit, beyond which it is forwarded but not parsed;
- accepts only plausible numbers (ints in ``0..MAX_TOKENS``); anything else leaves the
  usage unreported so the caller falls back to an estimate and flags it.

Semantics differ by provider and are kept as reported: OpenAI's ``prompt_tokens``
already includes cached tokens, Anthropic's ``input_tokens`` excludes cache reads and
cache writes. Accounting decides what to charge.

Families (``kind``): ``openai`` (chat, completions, embeddings), ``anthropic``
(messages), ``responses`` (the OpenAI Responses API: usage in ``response.completed`` /
``response.incomplete`` / ``response.failed`` or the document's ``usage``; its
``input_tokens`` includes ``input_tokens_details.cached_tokens`` (recorded as cache
reads) and its ``output_tokens`` includes ``output_tokens_details.reasoning_tokens``;
the response id is read from ``response.created`` or the document).

Gemini (``kind="gemini"``) reports ``usageMetadata`` on the response and, streamed,
again on every chunk, each time cumulative: the last one seen is the request's usage.
There is no reasoning column, so the output billed is what Google bills as output:
``candidatesTokenCount + thoughtsTokenCount``; the input is ``promptTokenCount``
(which, like OpenAI's, includes ``cachedContentTokenCount``, kept as the cache read)
plus ``toolUsePromptTokenCount``. A Gemini stream without ``alt=sse`` is one JSON
array of those responses, read as a document (``streaming=False``).
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 10_000_000
DONE = b"[DONE]"
_LINE_ENDINGS = re.compile(rb"[\r\n]+")   # a run of them: see UsageParser._consume_lines
_CR = 0x0D


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reported: bool = False      # True when the upstream reported any usage numbers
    model: str | None = None    # model name the upstream reported, if any
    error: str | None = None    # e.g. "event_too_large" / "malformed_usage" (informational)
    response_id: str | None = None  # Responses API: the id of the response object created


# (usage field, Usage attribute) per provider; OpenAI's nested cached_tokens is special.
_OPENAI_FIELDS = (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"))
_RESPONSES_FIELDS = (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"))
_ANTHROPIC_FIELDS = (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                     ("cache_read_input_tokens", "cache_read_tokens"),
                     ("cache_creation_input_tokens", "cache_creation_tokens"))
_GEMINI_FIELDS = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "cachedContentTokenCount",
                  "toolUsePromptTokenCount")


# Responses API stream events that carry the response object (and, when final, its usage).
_RESPONSES_CREATED = "response.created"
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_EVENTS = frozenset({_RESPONSES_CREATED, *_RESPONSES_FINAL})
_RESPONSES_MARKERS = tuple(b'"' + name.encode() + b'"' for name in _RESPONSES_EVENTS)
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _valid_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKENS


def _loads(data: bytes) -> Any:
    """JSON or None: upstream bytes may be anything, including deeply nested junk."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class UsageParser:
    """Feed it upstream bytes, forward what ``feed``/``finish`` return, read ``usage``.

    ``kind`` is ``"openai"``, ``"anthropic"`` or ``"gemini"``; ``streaming`` says whether
    the body is SSE or one JSON document (a Gemini JSON array counts as one).
    ``strip_usage_chunk`` (OpenAI streams only) drops the final usage-only chunk, which
    the client never asked for, and forwards every other event byte for byte; only then
    are partial events held back until complete.
    """

    def __init__(self, kind: str, streaming: bool, strip_usage_chunk: bool = False,
                 max_event_bytes: int = 1_048_576, max_body_bytes: int = 16_777_216) -> None:
        self.kind = kind
        self.streaming = streaming
        self.strip = bool(strip_usage_chunk and streaming and kind == "openai")
        self.max_event_bytes = max_event_bytes
        self.max_body_bytes = max_body_bytes
        self._usage = Usage()
        self._saw_done = False
        self._finished = False
        # Non-streaming: the accumulated body (None once it outgrew max_body_bytes).
        self._body: bytearray | None = bytearray()
        # Streaming: unconsumed bytes (an incomplete line, perhaps with a held-back final
        # "\r"), where to resume looking for its end, and the current event's parsed
        # fields and raw bytes.
        self._buf = bytearray()
        self._scan = 0
        self._in_cut_line = False   # the start of the current line was dropped (oversize)
        self._event_name = b""
        self._data: list[bytes] = []
        self._event_size = 0
        self._oversize = False
        self._raw = bytearray()     # strip mode: the current event's bytes, to forward

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def saw_done(self) -> bool:
        return self._saw_done

    # -- byte intake -------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """Consume bytes from the upstream; return the bytes to send on to the client."""
        if self._finished or not chunk:
            return b""
        if not self.streaming:
            self._accumulate_body(chunk)
            return chunk
        out = bytearray() if self.strip else None
        self._buf += chunk
        self._consume_lines(out)
        self._bound_partial_line(out)
        return chunk if out is None else bytes(out)

    def finish(self) -> bytes:
        """End of upstream data; returns any held-back bytes still to send to the client.

        A trailing event without its blank line still counts: some upstreams close the
        stream right after the last event, and its usage is real. A held-back final
        ``\r`` is a line ending now that nothing can follow it."""
        if self._finished:
            return b""
        self._finished = True
        if not self.streaming:
            if self._body is not None:
                self._parse_document(bytes(self._body))
                self._body = None
            return b""
        out = bytearray() if self.strip else None
        if self._buf:
            if out is not None:
                self._raw += self._buf
            content = bytes(self._buf[:-1] if self._buf.endswith(b"\r") else self._buf)
            self._buf.clear()
            if self._in_cut_line:
                self._in_cut_line = False
            elif content:
                self._line(content)
        self._dispatch(out)
        return b"" if out is None else bytes(out)

    def _accumulate_body(self, chunk: bytes) -> None:
        if self._body is None:
            return
        if len(self._body) + len(chunk) > self.max_body_bytes:
            self._body = None
            self._usage.error = "body_too_large"
            return
        self._body += chunk

    def _consume_lines(self, out: bytearray | None) -> None:
        """Cut the buffer at every line ending: ``\r\n``, ``\n`` or a bare ``\r`` (the
        SSE spec's three). One regex match takes a whole run of line endings, because
        every ending after the first in a run is a blank line and only the first blank
        line does anything (it ends the event; the rest end empty events): a run of
        48 MB of ``\r`` costs one C-speed scan, not 48 million Python steps. A ``\r``
        that is the buffer's last byte is held back until the next byte shows whether
        it is half of a ``\r\n`` split across chunks, so that pair never counts as two
        endings (an extra blank line would end an event early)."""
        buf = self._buf
        start = 0            # where the current line begins
        pos = self._scan     # where to resume looking for its end
        while True:
            match = _LINE_ENDINGS.search(buf, pos)
            if match is None:
                pos = len(buf)
                break
            run_start, run_end = match.span()
            if run_end == len(buf) and buf[run_end - 1] == _CR:
                run_end -= 1     # held back: maybe the first half of a split "\r\n"
                if run_end == run_start:
                    pos = run_start
                    break
            content = bytes(buf[start:run_start])
            run_length = run_end - run_start
            # More than one line ending in the run means a blank line follows the line.
            blank_follows = run_length > 2 or (run_length == 2 and buf[run_start:run_end] != b"\r\n")
            if out is not None:
                self._raw += content
                self._raw += buf[run_start:run_end]
            if self._in_cut_line:
                self._in_cut_line = False
                self._event_size += len(content) + 1
            elif content:
                self._line(content)
            else:
                blank_follows = True   # the line itself is blank
            if blank_follows:
                self._dispatch(out)
            if out is not None and self._oversize:
                out += self._raw   # an unparseable event is forwarded as it arrives
                self._raw.clear()
            start = pos = run_end
        del buf[:start]
        self._scan = pos - start

    def _bound_partial_line(self, out: bytearray | None) -> None:
        """A line with no line ending in sight must not grow the buffer without limit:
        past ``max_event_bytes`` its bytes are forwarded and forgotten, the event is
        marked too large, and the rest of the line is skipped as it arrives. A held-back
        ``\r`` stays: it is a line ending, only its partner is not known yet."""
        held = 1 if self._buf.endswith(b"\r") else 0
        content_length = len(self._buf) - held
        if not content_length or self._event_size + content_length <= self.max_event_bytes:
            return
        self._mark_oversize()
        if out is not None:
            out += self._raw
            out += self._buf[:content_length]
            self._raw.clear()
        self._event_size += content_length
        del self._buf[:content_length]
        self._scan = 0
        self._in_cut_line = True

    def _mark_oversize(self) -> None:
        if not self._oversize:
            self._oversize = True
            self._data = []
            self._usage.error = "event_too_large"

    # -- SSE events --------------------------------------------------------------------

    def _line(self, content: bytes) -> None:
        self._event_size += len(content) + 1
        if self._oversize:
            return
        if self._event_size > self.max_event_bytes:
            self._mark_oversize()
            return
        if content.startswith(b":"):
            return
        field, sep, value = content.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event_name = value

    def _dispatch(self, out: bytearray | None) -> None:
        """An event is complete: read it, then forward it unless it is the usage chunk
        being stripped."""
        keep = True
        if not self._oversize and self._data:
            keep = self._handle_event(self._event_name, b"\n".join(self._data))
        if out is not None:
            if keep:
                out += self._raw
            self._raw.clear()
        self._event_name = b""
        self._data = []
        self._event_size = 0
        self._oversize = False

    def _handle_event(self, name: bytes, data: bytes) -> bool:
        """Apply one event's data; return False when it must not reach the client."""
        if self.kind == "responses":
            self._responses_event(name, data)
            return True
        if self.kind == "openai":
            if data.strip() == DONE:
                self._saw_done = True
                return True
            # Cheap pre-filter: content chunks are most of a stream and carry nothing
            # we need once the model is known.
            if b"usage" not in data and self._usage.model is not None:
                return True
            event = _loads(data)
            if not isinstance(event, dict):
                return True
            self._note_model(event.get("model"))
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._apply_openai(usage)
            elif usage is not None:
                self._usage.error = "malformed_usage"
            choices = event.get("choices")
            return not (self.strip and usage is not None and isinstance(choices, list) and not choices)
        if self.kind == "gemini":
            if b"usageMetadata" in data or self._usage.model is None:
                event = _loads(data)
                if isinstance(event, dict):
                    self._gemini_response(event)
            return True
        if not (b"message_" in data or name.startswith(b"message_")):
            return True
        event = _loads(data)
        if not isinstance(event, dict):
            return True
        kind = event.get("type")
        if not isinstance(kind, str):
            kind = name.decode("ascii", "replace")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._note_model(message.get("model"))
                self._apply_anthropic(message.get("usage"))
        elif kind == "message_delta":
            self._apply_anthropic(event.get("usage"))
        elif kind == "message_stop":
            self._saw_done = True
        return True

    def _responses_event(self, name: bytes, data: bytes) -> None:
        """A Responses API event: only the ones carrying the response object are parsed
        (the many text deltas are skipped by name, or by a byte search without one)."""
        if name:
            if name.decode("ascii", "replace") not in _RESPONSES_EVENTS:
                return
        elif not any(marker in data for marker in _RESPONSES_MARKERS):
            return
        event = _loads(data)
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            kind = name.decode("ascii", "replace")
        response = event.get("response")
        if kind not in _RESPONSES_EVENTS or not isinstance(response, dict):
            return
        self._note_response(response)
        if kind in _RESPONSES_FINAL:
            self._saw_done = True
            self._apply_responses(response.get("usage"))

    # -- whole documents and usage objects ---------------------------------------------

    def _parse_document(self, body: bytes) -> None:
        document = _loads(body)
        if self.kind == "gemini":
            # One response, or the JSON-array stream of them (cumulative usage: last wins).
            for item in document if isinstance(document, list) else [document]:
                if isinstance(item, dict):
                    self._gemini_response(item)
            return
        if not isinstance(document, dict):
            return
        if self.kind == "responses":
            self._note_response(document)
            self._apply_responses(document.get("usage"))
            return
        self._note_model(document.get("model"))
        usage = document.get("usage")
        if usage is None:
            return
        if self.kind == "openai":
            if isinstance(usage, dict):
                self._apply_openai(usage)
            else:
                self._usage.error = "malformed_usage"
        else:
            self._apply_anthropic(usage)

    def _note_model(self, model: Any) -> None:
        if isinstance(model, str) and model and self._usage.model is None:
            self._usage.model = model[:200]

    def _note_response(self, response: dict[str, Any]) -> None:
        self._note_model(response.get("model"))
        ident = response.get("id")
        if self._usage.response_id is None and isinstance(ident, str) and _RESPONSE_ID.fullmatch(ident):
            self._usage.response_id = ident

    def _apply_responses(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            self._usage.error = "malformed_usage"
            return
        values: dict[str, Any] = {attr: usage[key] for key, attr in _RESPONSES_FIELDS
                                  if usage.get(key) is not None}
        details = usage.get("input_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            values["cache_read_tokens"] = details["cached_tokens"]
        self._apply_checked(values)

    def _apply(self, values: dict[str, int]) -> None:
        for attribute, value in values.items():
            setattr(self._usage, attribute, value)
        if values:
            self._usage.reported = True

    def _apply_openai(self, usage: dict[str, Any]) -> None:
        values: dict[str, Any] = {attr: usage[key] for key, attr in _OPENAI_FIELDS
                                  if usage.get(key) is not None}
        if not values and usage.get("total_tokens") is not None:
            values["input_tokens"] = usage["total_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            values["cache_read_tokens"] = details["cached_tokens"]
        self._apply_checked(values)

    def _apply_anthropic(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            self._usage.error = "malformed_usage"
            return
        # Anthropic sends explicit nulls for cache fields it does not use.
        self._apply_checked({attr: usage[key] for key, attr in _ANTHROPIC_FIELDS
                             if usage.get(key) is not None})

    def _gemini_response(self, response: dict[str, Any]) -> None:
        """One GenerateContentResponse: its model and its (cumulative) usage; a final
        one (a candidate with a ``finishReason``, usage attached) ends the wait of a drain."""
        self._note_model(response.get("modelVersion"))
        usage = response.get("usageMetadata")
        if usage is None:
            return
        if not isinstance(usage, dict):
            self._usage.error = "malformed_usage"
            return
        raw = {key: usage.get(key) for key in _GEMINI_FIELDS}
        if all(value is None for value in raw.values()):
            return
        if not all(value is None or _valid_count(value) for value in raw.values()):
            self._usage.error = "malformed_usage"
            return
        count = {key: value or 0 for key, value in raw.items()}
        self._apply_checked({
            "input_tokens": count["promptTokenCount"] + count["toolUsePromptTokenCount"],
            "output_tokens": count["candidatesTokenCount"] + count["thoughtsTokenCount"],
            "cache_read_tokens": count["cachedContentTokenCount"],
            "cache_creation_tokens": 0})
        candidates = response.get("candidates")
        if isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates):
            self._saw_done = True

    def _apply_checked(self, values: dict[str, Any]) -> None:
        """All or nothing: one implausible number discredits the whole usage object."""
        if all(_valid_count(value) for value in values.values()):
            self._apply(values)
        else:
            self._usage.error = "malformed_usage"


# -- estimates -------------------------------------------------------------------------

def estimate_tokens(text: str) -> int:
    """About one token per four characters (OpenAI's rule of thumb for English); used
    only when the upstream reports nothing, and flagged as an estimate there."""
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)


def _text_tokens(value: Any, depth: int = 0) -> int:
    """Tokens in a content value: a string, a list of token ids, or (nested) parts that
    carry ``text`` or ``content``. Unknown shapes count as nothing."""
    if depth > 8:
        return 0
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, list):
        if value and all(type(item) is int for item in value):
            return len(value)   # pre-tokenised prompt/input
        return sum(_text_tokens(item, depth + 1) for item in value)
    if isinstance(value, dict):
        total = 0
        for key in ("text", "content", "input", "arguments", "output"):
            if key in value:
                total += _text_tokens(value[key], depth + 1)
        return total
    return 0


def _gemini_content_tokens(content: Any) -> int:
    """Tokens in one Gemini ``Content`` (``{"role", "parts": [...]}``): text parts, and
    function calls and responses as their JSON (that is what the model reads)."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return 0
    total = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        total += _text_tokens(part.get("text"))
        for key in ("functionCall", "functionResponse"):
            if part.get(key) is not None:
                with contextlib.suppress(TypeError, ValueError, RecursionError):
                    total += estimate_tokens(json.dumps(part[key]))
    return total


def _gemini_request_tokens(body: dict[str, Any]) -> int:
    contents = body.get("contents")
    total = 0
    if isinstance(contents, list):
        total += sum(_gemini_content_tokens(content) for content in contents)
    system = body.get("systemInstruction")
    total += _text_tokens(system) if isinstance(system, str) else _gemini_content_tokens(system)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        with contextlib.suppress(TypeError, ValueError, RecursionError):
            total += estimate_tokens(json.dumps(tools))
    return total


def estimate_request_tokens(kind: str, body: dict) -> int:
    """Prompt tokens a request will probably use, from its JSON body: message contents
    (Gemini: ``contents`` parts), system prompt, ``prompt`` / ``input`` and tool
    definitions. Never raises, because it runs on client input before validation."""
    if not isinstance(body, dict):
        return 0
    if kind == "gemini":
        return _gemini_request_tokens(body)
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _text_tokens(message.get("content"))
                tool_calls = message.get("tool_calls")
                if isinstance(tool_calls, list):
                    total += sum(_text_tokens(call.get("function")) for call in tool_calls
                                 if isinstance(call, dict))
    if kind == "anthropic":
        total += _text_tokens(body.get("system"))
    elif kind == "responses":
        total += _text_tokens(body.get("instructions")) + _text_tokens(body.get("input"))
    else:
        total += _text_tokens(body.get("prompt")) + _text_tokens(body.get("input"))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        with contextlib.suppress(TypeError, ValueError, RecursionError):  # the upstream will reject them anyway
            total += estimate_tokens(json.dumps(tools))
    return total
