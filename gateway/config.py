"""Configuration: the one place that reads the environment.

Every setting is read, coerced and validated here, once, at start-up, so a
misconfigured deployment stops with a one-line explanation instead of failing on
its first request. Demo mode (``GATEWAY_MODE=demo``) is the only exception: it
generates throwaway secrets under ``instance/`` and says so loudly, so a newcomer
can run the gateway without reading this file first.
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = PROJECT_ROOT / "instance"
MODES = ("production", "development", "demo")


class ConfigError(Exception):
    """A setting is missing or unusable; the message is one line for the operator."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    return float(value.strip())


def _list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# name -> (parser, default). Defaults are the embedded single-machine setup.
SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "GATEWAY_MODE": (str, "production"),
    "DATABASE_URL": (str, None),
    "SECRET_KEY": (str, None),
    "ENCRYPTION_KEY": (str, None),
    "ENCRYPTION_KEY_FILE": (str, None),
    "KEY_PEPPER": (str, None),
    "ADMIN_API_TOKEN": (_list, []),
    "ADMIN_USERNAME": (str, "admin"),
    "ADMIN_PASSWORD": (str, None),
    "RATELIMIT_STORAGE_URI": (str, "memory://"),
    "RATELIMIT_FAIL_OPEN": (_bool, True),
    "RATELIMIT_STORAGE_TIMEOUT": (_float, 0.1),
    "IP_RPM": (_int, 600),
    "USAGE_API_RATE": (str, "60/minute"),
    "AUTH_FAILURES_PER_MINUTE": (_int, 20),
    "GLOBAL_RPM": (_int, 60000),
    "ADMIN_AUTH_FAILURES_PER_MINUTE": (_int, 10),
    "TRUSTED_PROXY_COUNT": (_int, 0),
    "LOG_RETENTION_DAYS": (_int, 90),
    "MAX_BODY_BYTES": (_int, 10 * 1024 * 1024),
    # Request bodies (``body_deadline``): no byte for this long -> 408; the whole body
    # within the total -> else 408; bodies read at once per client address -> else 429.
    "BODY_IDLE_TIMEOUT_SECONDS": (_float, 10.0),
    "BODY_TIMEOUT_SECONDS": (_float, 60.0),
    "BODY_READS_PER_ADDRESS": (_int, 8),
    "UPSTREAM_CONNECT_TIMEOUT": (_float, 5.0),
    "UPSTREAM_READ_TIMEOUT": (_float, 120.0),
    "UPSTREAM_MAX_ATTEMPTS": (_int, 3),
    "UPSTREAM_RETRY_BUDGET_RATIO": (_float, 0.2),
    "UPSTREAM_RETRY_BUDGET_MIN": (_int, 10),
    "MAX_COOLDOWN_SECONDS": (_float, 300.0),
    "PROBE_INTERVAL_SECONDS": (_float, 30.0),
    "CACHE_REFRESH_SECONDS": (_float, 0.5),
    "DB_POOL_SIZE": (_int, 20),
    "DB_MAX_OVERFLOW": (_int, 10),
    "PROBE_TIMEOUT_SECONDS": (_float, 5.0),
    "DISCONNECT_DRAIN_SECONDS": (_float, 5.0),
    "DEFAULT_MAX_TOKENS_RESERVE": (_int, 4096),
    "QUOTA_TIMEZONE": (str, "UTC"),
    "RESERVATION_TTL_SECONDS": (_int, 900),
    "SWEEP_INTERVAL_SECONDS": (_float, 60.0),
    # How often a live request renews its reservation against the sweep (0 = a third of
    # RESERVATION_TTL_SECONDS): a stream longer than the TTL keeps what it holds.
    "RESERVATION_RENEW_SECONDS": (_float, 0.0),
    "PROXY_PREFIX": (str, "/proxy"),
    "SESSION_COOKIE_SECURE": (_bool, True),
    "BLOCK_PRIVATE_UPSTREAMS": (_bool, None),
    "BACKENDS_JSON": (str, None),
    "OPENAI_BASE_URL": (str, None),
    "OPENAI_API_KEYS": (_list, []),
    "ANTHROPIC_BASE_URL": (str, None),
    "ANTHROPIC_API_KEYS": (_list, []),
    "INSTANCE_PATH": (str, str(DEFAULT_INSTANCE)),
    "LOG_LEVEL": (str, "INFO"),
    "LOG_FORMAT": (str, "json"),
    "RETENTION_HOUR_UTC": (_int, 3),
    "METRICS_TOKEN": (_list, []),
    "METRICS_ALLOW": (_list, ["127.0.0.0/8", "::1/128"]),
    "METRICS_PER_USER": (_bool, False),
    "PROMETHEUS_MULTIPROC_DIR": (str, None),
    # Portal security (issue 15, findings 9 and 11): the sign-in backoff per username
    # (portal/sign_in_limits.py), session lifetimes (portal/auth.py), HSTS on plain-HTTP
    # requests too (security_headers.py).
    "SIGN_IN_USERNAME_FAILURES_PER_HOUR": (_int, 20),
    "SIGN_IN_BACKOFF_MAX_SECONDS": (_int, 900),
    "PORTAL_IDLE_TIMEOUT_SECONDS": (_int, 1800),
    "PORTAL_SESSION_MAX_SECONDS": (_int, 43200),
    "HSTS_ALWAYS": (_bool, False),
}
# Outside demo and development mode, secrets shorter than this stop start-up: a short
# SECRET_KEY lets session cookies be forged by brute force, a short KEY_PEPPER makes the
# stored key digests guessable offline.
MIN_SECRET_CHARS = 32


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, (parser, default) in SETTINGS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            config[name] = default
            continue
        try:
            config[name] = parser(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} is malformed: {exc}") from None
    return config


def parse_fernet_keys(raw: str) -> list[str]:
    """Split a comma-separated key list (newest first) and check each is a Fernet key."""
    keys = _list(raw)
    if not keys:
        raise ConfigError("ENCRYPTION_KEY is empty")
    for index, key in enumerate(keys, start=1):
        try:
            decoded = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            decoded = b""
        if len(decoded) != 32:
            raise ConfigError(
                f"ENCRYPTION_KEY entry {index} is not a Fernet key (44 url-safe base64 "
                "characters; make one with `python -c \"from cryptography.fernet import "
                "Fernet; print(Fernet.generate_key().decode())\"`)"
            )
    return keys


def _demo_secret(instance: Path, name: str, make: Callable[[], str]) -> str:
    """Read or create a throwaway secret file under instance/ (demo mode only)."""
    path = instance / f"demo-{name}"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def _check_database_url(url: str, instance: Path) -> None:
    """Fail fast on a database URL that cannot work, without importing a driver.

    The driver is not imported here because psycopg must be imported only after
    gevent has patched the process (see docs/architecture.md, SQLite and PostgreSQL
    under gevent); a TCP probe is enough to catch
    a wrong host or port before gunicorn forks its workers.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            return
        folder = Path(database).expanduser().resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"DATABASE_URL: cannot create folder {folder}: {exc.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"DATABASE_URL: folder {folder} is not writable")
        return
    if backend != "postgresql":
        raise ConfigError(f"DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)")
    if parsed.host and not parsed.host.startswith("/"):
        try:
            with socket.create_connection((parsed.host, parsed.port or 5432), timeout=3):
                pass
        except OSError as exc:
            raise ConfigError(
                f"DATABASE_URL: cannot reach PostgreSQL at {parsed.host}:{parsed.port or 5432} ({exc})"
            ) from None


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _check_portal_security(config: dict[str, Any], mode: str) -> None:
    """Issue 15 settings: secret lengths (production only; development and demo keep
    their short or generated values) and the sign-in and session limits."""
    if mode == "production":
        for name in ("SECRET_KEY", "KEY_PEPPER"):
            if len(config[name]) < MIN_SECRET_CHARS:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_CHARS} characters in production "
                                  "(e.g. `python -c \"import secrets; print(secrets.token_urlsafe(48))\"`)")
    for name in ("SIGN_IN_USERNAME_FAILURES_PER_HOUR", "SIGN_IN_BACKOFF_MAX_SECONDS"):
        if config[name] < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config["PORTAL_IDLE_TIMEOUT_SECONDS"] < 60:
        raise ConfigError("PORTAL_IDLE_TIMEOUT_SECONDS must be at least 60")
    if config["PORTAL_SESSION_MAX_SECONDS"] < config["PORTAL_IDLE_TIMEOUT_SECONDS"]:
        raise ConfigError("PORTAL_SESSION_MAX_SECONDS must be at least PORTAL_IDLE_TIMEOUT_SECONDS")


def load_config(env: Mapping[str, str] | None = None, check_database: bool = True) -> dict[str, Any]:
    """Build the validated settings dict from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    config = _read_env(env)
    mode = config["GATEWAY_MODE"]
    if mode not in MODES:
        raise ConfigError(f"GATEWAY_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    demo = mode == "demo"
    instance = Path(config["INSTANCE_PATH"])
    generated: list[str] = []

    if not config["SECRET_KEY"]:
        if not demo:
            raise ConfigError("SECRET_KEY is not set (use a long random string; see .env.example)")
        config["SECRET_KEY"] = _demo_secret(instance, "secret-key", lambda: secrets.token_urlsafe(48))
        generated.append("SECRET_KEY")

    raw_keys = config["ENCRYPTION_KEY"]
    if not raw_keys and config["ENCRYPTION_KEY_FILE"]:
        try:
            raw_keys = Path(config["ENCRYPTION_KEY_FILE"]).read_text().strip().replace("\n", ",")
        except OSError as exc:
            raise ConfigError(f"ENCRYPTION_KEY_FILE cannot be read: {exc.strerror}") from None
    if not raw_keys:
        if not demo:
            raise ConfigError("ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE) is not set; it encrypts upstream secrets")
        raw_keys = _demo_secret(instance, "encryption-key", _fernet_key)
        generated.append("ENCRYPTION_KEY")
    config["ENCRYPTION_KEYS"] = parse_fernet_keys(raw_keys)

    if not config["KEY_PEPPER"]:
        if not demo:
            raise ConfigError("KEY_PEPPER is not set; it keys the HMAC under which user keys are stored")
        config["KEY_PEPPER"] = _demo_secret(instance, "key-pepper", lambda: secrets.token_urlsafe(32))
        generated.append("KEY_PEPPER")

    if not config["ADMIN_API_TOKEN"] and demo:
        config["ADMIN_API_TOKEN"] = [_demo_secret(instance, "admin-token", lambda: "kga-" + secrets.token_urlsafe(32))]
        generated.append("ADMIN_API_TOKEN")
    for token in config["ADMIN_API_TOKEN"]:
        if len(token) < 16:
            raise ConfigError("ADMIN_API_TOKEN entries must be at least 16 characters")

    if not config["DATABASE_URL"]:
        config["DATABASE_URL"] = f"sqlite:///{instance / 'keygate.db'}"
    if check_database:
        _check_database_url(config["DATABASE_URL"], instance)
    config["DATABASE_URL"] = normalise_database_url(config["DATABASE_URL"])
    _check_portal_security(config, mode)

    for name in ("UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_READ_TIMEOUT", "RATELIMIT_STORAGE_TIMEOUT",
                 "PROBE_TIMEOUT_SECONDS"):
        if config[name] <= 0:
            raise ConfigError(f"{name} must be positive")
    for name in ("UPSTREAM_RETRY_BUDGET_RATIO", "UPSTREAM_RETRY_BUDGET_MIN", "PROBE_INTERVAL_SECONDS",
                 "SWEEP_INTERVAL_SECONDS", "RESERVATION_RENEW_SECONDS"):
        if config[name] < 0:
            raise ConfigError(f"{name} must be 0 or more")
    if config["DB_POOL_SIZE"] < 1 or config["DB_MAX_OVERFLOW"] < 0:
        raise ConfigError("DB_POOL_SIZE must be at least 1 and DB_MAX_OVERFLOW 0 or more")
    if not 0 <= config["CACHE_REFRESH_SECONDS"] <= 1:
        # The promise is "revocation is visible on every worker within one second".
        raise ConfigError("CACHE_REFRESH_SECONDS must be between 0 and 1")
    # A limit of 0 would make Flask-Limiter refuse every request (the admin API included),
    # and a negative count has no meaning; both are typos, so say so at start-up.
    for name in ("IP_RPM", "AUTH_FAILURES_PER_MINUTE", "GLOBAL_RPM", "ADMIN_AUTH_FAILURES_PER_MINUTE",
                 "UPSTREAM_MAX_ATTEMPTS", "LOG_RETENTION_DAYS", "DEFAULT_MAX_TOKENS_RESERVE"):
        if config[name] < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config["MAX_COOLDOWN_SECONDS"] < 1:
        # The longest cooldown one upstream 429 may impose on a key (Retry-After is clamped).
        raise ConfigError("MAX_COOLDOWN_SECONDS must be at least 1")
    if config["DISCONNECT_DRAIN_SECONDS"] < 0:
        raise ConfigError("DISCONNECT_DRAIN_SECONDS must be 0 or more")
    if config["RESERVATION_TTL_SECONDS"] < 60:
        raise ConfigError("RESERVATION_TTL_SECONDS must be at least 60 (longer than any request)")
    try:
        from limits import parse as parse_limit

        parse_limit(config["USAGE_API_RATE"])
    except ValueError:
        raise ConfigError("USAGE_API_RATE must look like '60/minute'") from None
    if config["MAX_BODY_BYTES"] < 1024:
        raise ConfigError("MAX_BODY_BYTES must be at least 1024")
    if config["BODY_IDLE_TIMEOUT_SECONDS"] <= 0:
        raise ConfigError("BODY_IDLE_TIMEOUT_SECONDS must be positive")
    if config["BODY_TIMEOUT_SECONDS"] < config["BODY_IDLE_TIMEOUT_SECONDS"]:
        raise ConfigError("BODY_TIMEOUT_SECONDS must be at least BODY_IDLE_TIMEOUT_SECONDS")
    if config["BODY_READS_PER_ADDRESS"] < 1:
        raise ConfigError("BODY_READS_PER_ADDRESS must be at least 1")
    if config["TRUSTED_PROXY_COUNT"] < 0:
        raise ConfigError("TRUSTED_PROXY_COUNT must be 0 or more")
    if not config["PROXY_PREFIX"].startswith("/") or config["PROXY_PREFIX"] == "/":
        raise ConfigError("PROXY_PREFIX must start with '/' and not be '/' alone")
    config["PROXY_PREFIX"] = config["PROXY_PREFIX"].rstrip("/")
    if config["LOG_FORMAT"] not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be json or text")
    if not 0 <= config["RETENTION_HOUR_UTC"] <= 23:
        raise ConfigError("RETENTION_HOUR_UTC must be an hour from 0 to 23")
    if config["METRICS_ALLOW"] == ["none"]:
        config["METRICS_ALLOW"] = []
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(config["QUOTA_TIMEZONE"])
    except Exception:  # zoneinfo raises several unrelated types for a bad name
        raise ConfigError(f"QUOTA_TIMEZONE {config['QUOTA_TIMEZONE']!r} is not a known timezone") from None
    if config["BLOCK_PRIVATE_UPSTREAMS"] is None:
        config["BLOCK_PRIVATE_UPSTREAMS"] = mode == "production"
    if demo:
        config["SESSION_COOKIE_SECURE"] = False

    config["DEMO_GENERATED"] = generated
    if generated:
        print(
            "keygate: DEMO MODE - using throwaway " + ", ".join(generated)
            + f" kept under {instance}; never use demo mode in production",
            file=sys.stderr,
        )
    return config
