"""What of the client's request never goes upstream - the one list of those rules,
used by the LLM forwarding and the generic pass-through alike. I/O-free.

Why each group is dropped:

- credential headers of any provider (``authorization``, ``x-api-key``,
  ``x-goog-api-key``, ``api-key``, ...): the client authenticates to KeyGate with them,
  so forwarding one would hand the user's KeyGate key (or a credential meant for
  someone else) to a third party; the upstream gets KeyGate's own credential instead;
- client-address headers (``Forwarded``, ``X-Real-IP``, ``X-Forwarded-*``, ...): a
  client could make the upstream believe in any address, and the real ones are
  the gateway's business, not the provider's;
- hop-by-hop headers: they describe the client's connection, not the request;
- ``Cookie``: dropped, except to a ``kind=http`` backend with ``relay_cookies`` on,
  and then without KeyGate's own cookies (the portal session, remember-me), which
  must never leave the gateway (``forwarded_cookie``);
- credential query parameters (Google's ``key``, ``api_key``, ...), on every route;
- body fields that would redirect or re-credential the upstream call (LiteLLM-style
  ``api_base``, ``api_key``, ``headers``...), matched ignoring case, whitespace,
  ``_`` and ``-`` so ``API_BASE``, ``Base_Url`` and ``"api_base "`` are caught too.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "x-amz-security-token",
    "ocp-apim-subscription-key", "x-auth-token", "openai-organization", "openai-project", "x-admin-key", "cookie",
})
ADDRESS_HEADERS = frozenset({
    "forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "x-cluster-client-ip",
    "fastly-client-ip",
})
ADDRESS_HEADER_PREFIXES = ("x-forwarded-",)
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
})
# normalised, see _norm
CREDENTIAL_QUERY_PARAMETERS = frozenset({"key", "apikey", "accesskey", "accesstoken", "xgoogapikey"})

_FORBIDDEN_BODY_FIELDS = (
    "api_base", "base_url", "api_key", "api_type", "api_version", "organization", "custom_llm_provider",
    "headers", "extra_headers", "extra_query", "http_client", "proxy", "proxies", "azure_ad_token",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "vertex_credentials", "user_api_key",
)
_IGNORED = re.compile(r"[\s_\-]+")


def _norm(name: str) -> str:
    """A field or parameter name with case, whitespace, ``_`` and ``-`` ignored."""
    return _IGNORED.sub("", name).lower()


FORBIDDEN_BODY_FIELDS = frozenset(_norm(name) for name in _FORBIDDEN_BODY_FIELDS)


def never_forwarded(name: str) -> bool:
    """True for a client header that must not go upstream (credential, address or
    hop-by-hop), whatever the route."""
    lower = name.strip().lower()
    return (lower in CREDENTIAL_HEADERS or lower in ADDRESS_HEADERS or lower in HOP_BY_HOP
            or lower.startswith(ADDRESS_HEADER_PREFIXES))


def forwardable_headers(client_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's end-to-end headers minus everything ``never_forwarded``."""
    return {name: value for name, value in client_headers if not never_forwarded(name)}


def forwarded_cookie(cookie_header: str, own_cookies: Iterable[str]) -> str:
    """The client's ``Cookie`` header without KeyGate's own cookies (``own_cookies``,
    e.g. the portal session): what a ``relay_cookies`` backend may see. Empty when
    nothing is left."""
    own = {name.strip() for name in own_cookies}
    kept = []
    for part in cookie_header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in own:
            kept.append(part.strip())
    return "; ".join(kept)


def relayable_set_cookie(value: str, own_cookies: Iterable[str]) -> bool:
    """Whether an upstream ``Set-Cookie`` may reach the client: never one that would
    overwrite a KeyGate cookie (an upstream could otherwise replace the portal session
    of a browser that shares the gateway's host)."""
    name = value.split("=", 1)[0].strip()
    return bool(name) and name not in {n.strip() for n in own_cookies}


def query_string(raw: bytes | str) -> str:
    """The client's query string without credential parameters (Google's ``key``, ...),
    every other parameter kept byte for byte (re-encoding could change what the
    upstream sees)."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not text:
        return ""
    kept = [part for part in text.split("&")
            if _norm(unquote_plus(part.split("=", 1)[0])) not in CREDENTIAL_QUERY_PARAMETERS]
    return "&".join(kept)


def sanitize_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without the fields that would redirect or re-credential the upstream call."""
    return {k: v for k, v in body.items() if _norm(k) not in FORBIDDEN_BODY_FIELDS}
