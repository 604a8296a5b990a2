"""Body validation for admin writes: typed fields, named errors (422), and no mass
assignment - a field not declared for a resource is rejected, never written."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .. import model_names
from ..timeutil import parse_datetime


class ValidationError(Exception):
    """Field name -> message; rendered as 422 by the API and inline by the portal."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


Parser = Callable[[Any], Any]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(max_len: int, required: bool = False, allow_newlines: bool = False) -> Parser:
    def parse(value: Any) -> Any:
        if value is None:
            if required:
                raise ValueError("is required")
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        value = value.strip()
        if required and not value:
            raise ValueError("must not be empty")
        if len(value) > max_len:
            raise ValueError(f"must be at most {max_len} characters")
        checked = value.replace("\n", "").replace("\r", "").replace("\t", "") if allow_newlines else value
        if _CONTROL.search(checked):
            raise ValueError("must not contain control characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid unicode text") from None
        return value

    return parse


def name(max_len: int = 64) -> Parser:
    pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    def parse(value: Any) -> Any:
        value = text(max_len, required=True)(value)
        if not pattern.match(value):
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    return parse


def integer(minimum: int | None = None, maximum: int | None = None, nullable: bool = False) -> Parser:
    def parse(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValueError("is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return parse


def number(minimum: float = 0.0) -> Parser:
    """A finite number of at least ``minimum``, or None (every number field is optional)."""

    def parse(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        if value < minimum or value != value or value in (float("inf"),):
            raise ValueError(f"must be a finite number of at least {minimum}")
        return float(value)

    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any) -> Any:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def string_list(max_items: int = 200, item_len: int = 200) -> Parser:
    def parse(value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
        if not isinstance(value, list):
            raise ValueError("must be a list of strings")
        if len(value) > max_items:
            raise ValueError(f"must have at most {max_items} entries")
        out = []
        for item in value:
            out.append(text(item_len, required=True)(item))
        return out

    return parse


def model_name(value: Any) -> str:
    """One model name or pattern: text without control or format characters (the rule
    the proxy applies to a request's ``model``, ``gateway/model_names.py``)."""
    parsed: str = text(200, required=True)(value)
    problem = model_names.problem(parsed)
    if problem:
        raise ValueError(problem)
    return parsed


def model_list(value: Any) -> list[str]:
    """A list of model names or patterns (a backend's models, allowed models)."""
    names: list[str] = string_list()(value)
    for item in names:
        model_name(item)
    return names


def model_map(value: Any) -> dict[str, str]:
    """Model aliases: public name -> provider name, both model names."""
    aliases = string_map(value)
    for public, provider in aliases.items():
        model_name(public)
        model_name(provider)
    return aliases


def cidr_list(value: Any) -> list[str]:
    items = string_list(max_items=500, item_len=64)(value)
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return out


def string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object of strings")
    out = {}
    for key, item in value.items():
        out[text(200, required=True)(key)] = text(200, required=True)(item)
    return out


def price_map(value: Any) -> dict[str, dict[str, float]]:
    """{model: {"input": USD per 1M tokens, "output": USD per 1M tokens}}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    out: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, dict) or set(prices) - {"input", "output"}:
            raise ValueError("each model maps to {\"input\": n, \"output\": n}")
        out[model_name(model)] = {k: number()(v) or 0.0 for k, v in prices.items()}
    return out


def timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 timestamp")
    try:
        return parse_datetime(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 timestamp") from None


def http_url(value: Any) -> str:
    from urllib.parse import urlsplit

    value = text(2000, required=True)(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not contain credentials; add an upstream key instead")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return value.rstrip("/")


def parse_body(body: Any, fields: Mapping[str, Parser], *, partial: bool,
               required: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate ``body`` against ``fields``; raise ValidationError naming every bad field."""
    if not isinstance(body, dict):
        raise ValidationError({"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    unknown = [key for key in body if key not in fields and key not in ignore]
    for key in unknown:
        errors[str(key)[:64]] = "is not a field of this resource"
    out: dict[str, Any] = {}
    for key, parser in fields.items():
        if key not in body:
            if not partial and key in required:
                errors[key] = "is required"
            continue
        try:
            out[key] = parser(body[key])
        except ValueError as exc:
            errors[key] = str(exc)
    if errors:
        raise ValidationError(errors)
    return out
