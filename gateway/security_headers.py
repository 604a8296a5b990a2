"""Browser security headers (issue 15, finding 11), set once for every response.

- every response: ``X-Content-Type-Options: nosniff`` (a JSON error body must never be
  sniffed into HTML) and ``Referrer-Policy: no-referrer`` (portal URLs carry ids and
  search terms; the templates say the same in a meta tag);
- every HTML page of our own (portal, usage page, HTML error pages - anything not
  relayed from a backend): ``X-Frame-Options: DENY`` and a Content-Security-Policy
  that allows only our own static CSS and JS, no framing (``frame-ancestors 'none'``),
  no plugins, no ``<base>`` rewriting and forms posting only to us. The templates have
  no inline scripts or ``<style>`` blocks; the usage bars set a width in a ``style``
  attribute, hence ``style-src-attr 'unsafe-inline'`` (attributes cannot run script);
- ``Strict-Transport-Security`` when the request came over HTTPS (``request.is_secure``:
  the scheme as ``TRUSTED_PROXY_COUNT`` trusts it, so a client-sent
  ``X-Forwarded-Proto`` counts only behind a trusted proxy) or always with
  ``HSTS_ALWAYS=true`` (TLS terminated by something that does not say so).

Pass-through responses (the proxy blueprint) keep what the backend sent, apart from
``nosniff`` when the backend set none: their pages are the backend's, not ours.
"""
from __future__ import annotations

from flask import Flask, Response, current_app, request

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000"


def add_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.blueprint == "proxy":
        return response
    headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        headers["X-Frame-Options"] = "DENY"
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if request.is_secure or current_app.config["HSTS_ALWAYS"]:
        headers["Strict-Transport-Security"] = HSTS
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_headers)
