"""What the fake upstream reads from a request body: the prompt word count it reports as
usage, and the ``[[name:value]]`` directives that make it misbehave on demand.

Kept free of gevent and sockets so tests can import ``count_prompt_tokens`` to compute
the exact usage they expect without starting anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPLETION_TOKENS = 16
_DIRECTIVE = re.compile(r"\[\[(\w+):([^\]]*)\]\]")
_MAX_DEPTH = 8


def _texts(value: Any, depth: int = 0) -> list[str]:
    """Text pieces in a content value: a string, or parts carrying ``text``/``content``
    (Anthropic tool results nest content inside parts)."""
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item, depth + 1)]
    if isinstance(value, dict):
        pieces: list[str] = []
        for key in ("text", "content"):
            if key in value:
                pieces += _texts(value[key], depth + 1)
        return pieces
    return []


def _prompt_words(value: Any, depth: int = 0) -> int:
    """Words in ``prompt``/``input``: a string, strings, token-id lists (one word per
    id, which is what they are), or Responses API input items (message content, a
    function call's arguments, a tool's output)."""
    if depth > _MAX_DEPTH:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(type(item) is int for item in value):
            return len(value)
        return sum(_prompt_words(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return (sum(len(text.split()) for text in _texts(value.get("content")))
                + _prompt_words(value.get("arguments"), depth + 1) + _prompt_words(value.get("output"), depth + 1))
    return 0


def count_prompt_tokens(body: Any) -> int:
    """The prompt token count the fake reports: whitespace-separated words across all
    message text (content strings and text parts), the system prompt, and
    ``prompt``/``input``. Directives are words too and count."""
    if not isinstance(body, dict):
        return 0
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += sum(len(text.split()) for text in _texts(message.get("content")))
    total += sum(len(text.split()) for text in _texts(body.get("system")))
    total += sum(len(text.split()) for text in _texts(body.get("instructions")))
    return total + _prompt_words(body.get("prompt")) + _prompt_words(body.get("input"))


def last_user_text(body: Any) -> str:
    """Where directives are read: the last user message, or the prompt/input of a
    completions or embeddings request."""
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return " ".join(_texts(message.get("content")))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            users = [item for item in value if isinstance(item, dict) and item.get("role") == "user"]
            if users:  # Responses API input items
                return " ".join(_texts(users[-1].get("content")))
            return " ".join(item for item in value if isinstance(item, str))
    return ""


@dataclass
class Directives:
    """Misbehaviour requested by the prompt. Unknown names and unparsable values are
    ignored, so a typo gives a normal answer rather than a confusing one."""
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    reset_after: int | None = None
    stall_after: int | None = None
    tokens: int | None = None
    usage: str = "normal"        # "normal" | "none" | "bogus"
    big_event: int | None = None
    interval: float = 0.0
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0           # Responses API: reasoning tokens, reported within output_tokens
    call: str | None = None      # Responses API: answer with a call of this function tool

    @classmethod
    def parse(cls, text: str) -> Directives:
        found = cls()
        for name, raw in _DIRECTIVE.findall(text):
            try:
                found._set(name, raw.strip())
            except ValueError:
                continue
        if found.retry_after is not None and found.status is None:
            found.status = 429
        return found

    def _set(self, name: str, raw: str) -> None:
        if name == "status" and 100 <= int(raw) <= 599:
            self.status = int(raw)
        elif name == "retry_after":
            self.retry_after = str(int(float(raw)))
        elif name in ("delay", "interval"):
            setattr(self, name, min(max(float(raw), 0.0), 60.0))
        elif name in ("reset_after", "stall_after", "tokens", "big_event", "cache_read", "cache_creation",
                      "reasoning"):
            setattr(self, name, max(int(raw), 0))
        elif name == "call" and raw:
            self.call = raw[:64]
        elif name == "usage" and raw in ("none", "bogus", "normal"):
            self.usage = raw


def completion_tokens(body: dict[str, Any], directives: Directives) -> int:
    """``[[tokens:N]]`` or 16, capped by the request's max_tokens like a real model."""
    wanted = directives.tokens if directives.tokens is not None else DEFAULT_COMPLETION_TOKENS
    for key in ("max_completion_tokens", "max_tokens"):
        cap = body.get(key)
        if type(cap) is int and cap >= 0:
            return min(wanted, cap)
    return wanted
