"""What may be a model name, in one place: the proxy (a request's ``model``), the admin
API and the portal (a backend's models, aliases and prices, the allowed models of users
and keys) all ask ``problem``.

A model name is shown in the portal, written to logs and the request log, used as a
metric label and sent upstream, so characters that change how text is displayed or
parsed are refused (issue 15, finding 11): control characters (C0, DEL and C1, which
terminals and CSV viewers interpret), Unicode format characters (bidi overrides such as
U+202E, zero-width characters that make two names look alike) and line/paragraph
separators. No Flask and no I/O.
"""
from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MESSAGE = "must not contain control, format or line-separator characters"


def problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name (a message), or None when it can."""
    if any(unicodedata.category(char) in REFUSED_CATEGORIES for char in name):
        return MESSAGE
    return None
