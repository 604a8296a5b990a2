"""Whose fault is a failed upstream answer: the upstream key's, or the request's.

A 401/403, a 429 or a 5xx says something about the key only when the same request
would have worked with another key. A request whose *content* makes the provider
refuse it (a policy block, a prompt too large for the key's per-minute budget, a body
that crashes the model server) gets the same answer from every key, so blaming the key
and failing over would let one client take a whole pool out of service. ``forward``
therefore treats such an answer as a *suspect* and asks for a second opinion before it
blames anyone (see docs/architecture.md, Failure policies):

- the next key's answer to the same request: success blames the suspect, the same
  class of failure (``failure_class``) clears it - the failure follows the request;
- with no next key, a content-free health probe of the suspect key (``prober``).

Some bodies settle it at once: a provider that says the request itself broke a
policy (``says_request_fault``) is answered to the client without failover or blame.
I/O-free, so the rules are cheap to test and to read.
"""
from __future__ import annotations

import json
from typing import Any

AUTH, RATE, SERVER = "auth", "rate", "server"
MAX_ERROR_BODY = 64 * 1024  # provider error bodies are small; never hold more of one

# Error codes and types with which providers say "this request", not "this credential".
_REQUEST_FAULT_CODES = frozenset({
    "content_policy_violation", "content_filter", "moderation_blocked", "policy_violation",
    "safety_violation", "prompt_blocked", "request_too_large", "context_length_exceeded",
})  # not OpenAI's type "tokens": an ordinary per-minute 429 carries it too
# Message starts of the same kind (OpenAI: "Request too large for gpt-4o ... on tokens per min").
_REQUEST_FAULT_MESSAGES = ("request too large", "your request was rejected as a result of our safety system")


def failure_class(status: int | None) -> str:
    """The class of a failed answer that must repeat across keys for the request to be
    at fault: credential refused, rate limited, or the server failed (``None`` = a read
    timeout before the first byte, which a long generation can cause)."""
    if status in (401, 403):
        return AUTH
    if status == 429:
        return RATE
    return SERVER


def _error_object(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content[:MAX_ERROR_BODY].decode("utf-8", "replace"))
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def says_request_fault(status: int, content: bytes) -> bool:
    """True when a 403/429 body names the request as the cause (OpenAI ``error.code`` /
    ``error.type``, Anthropic ``error.type``), so no key is to blame and failing over
    would only repeat the refusal."""
    if status not in (403, 429):
        return False
    error = _error_object(content)
    labels = {str(error.get(name)).lower() for name in ("code", "type") if isinstance(error.get(name), str)}
    if labels & _REQUEST_FAULT_CODES:
        return True
    message = error.get("message")
    return isinstance(message, str) and message.strip().lower().startswith(_REQUEST_FAULT_MESSAGES)
