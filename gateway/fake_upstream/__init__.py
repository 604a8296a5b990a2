"""A fake OpenAI + Anthropic + Gemini provider for tests, benchmarks and the README demo.

Run it with ``python -m gateway.fake_upstream --port N [--host 127.0.0.1]``. It answers
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``,
``/v1/messages``, ``/v1/messages/count_tokens``, the Responses API (``/v1/responses``
and its stored-response follow-ups, see ``responses``) and the Gemini API under
``/v1beta`` (``gemini``: generateContent, streamGenerateContent, countTokens, models)
the way the official SDKs expect, with deterministic usage (``count_prompt_tokens``,
``gemini.count_gemini_prompt_tokens``), and misbehaves on demand:

- by upstream key: ``fail401``/``fail403``/``fail429``/``fail500``/``fail503`` in the key
  answer that status, ``slow`` adds 0.2 s, ``hang`` never answers (60 s), ``reset``
  sends a TCP RST before any header;
- by ``[[name:value]]`` directives in the last user message: ``status``,
  ``retry_after``, ``delay``, ``reset_after``, ``stall_after``, ``tokens``,
  ``usage:none|bogus``, ``big_event``, ``interval``, ``cache_read``, ``cache_creation``,
  and for the Responses API ``reasoning`` and ``call``;
- plus ``/_fake/requests``, ``/_fake/reset``, ``/_fake/stats``, ``/health``,
  ``/echo/<path>`` and ``/bytes/<n>``.

Importing this package neither imports gevent nor patches anything: the server is
loaded only by ``run``.
"""
from __future__ import annotations

from .prompts import Directives, count_prompt_tokens, last_user_text

__all__ = ["Directives", "count_prompt_tokens", "last_user_text", "run"]


def run(host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve forever on host:port (0 picks a free port, announced on stdout)."""
    from .server import run as serve

    serve(host, port)
