"""Start-up validation: a misconfigured gateway stops with one line and exit status 1."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = Fernet.generate_key().decode()


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"GATEWAY_MODE": "production", "SECRET_KEY": "s" * 40, "ENCRYPTION_KEY": GOOD_KEY,
           "KEY_PEPPER": "p" * 32, "DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'keygate.db'}",
           "INSTANCE_PATH": str(tmp_path / "instance")}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def start(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Import the WSGI module the way gunicorn does, with exactly ``env``."""
    process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=process_env,
                          capture_output=True, text=True, timeout=60)


def assert_fails_with(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keygate: configuration error: ")
    assert fragment in lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_valid_configuration_starts(tmp_path):
    result = start(base_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_missing_secret_key_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, SECRET_KEY=None)), "SECRET_KEY is not set")


def test_missing_encryption_key_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, ENCRYPTION_KEY=None)),
                      "ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE) is not set")


def test_malformed_encryption_key_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, ENCRYPTION_KEY="not-a-fernet-key")),
                      "ENCRYPTION_KEY entry 1 is not a Fernet key")


def test_malformed_second_rotation_key_is_named(tmp_path):
    assert_fails_with(start(base_env(tmp_path, ENCRYPTION_KEY=f"{GOOD_KEY},short")),
                      "ENCRYPTION_KEY entry 2 is not a Fernet key")


def test_encryption_key_file_with_several_keys_is_read_newest_first(tmp_path):
    second = Fernet.generate_key().decode()
    key_file = tmp_path / "keys"
    key_file.write_text(f"{GOOD_KEY}\n{second}\n")

    config = load_config(base_env(tmp_path, ENCRYPTION_KEY=None, ENCRYPTION_KEY_FILE=str(key_file)))

    assert config["ENCRYPTION_KEYS"] == [GOOD_KEY, second]


def test_unreadable_encryption_key_file_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, ENCRYPTION_KEY=None, ENCRYPTION_KEY_FILE=str(tmp_path / "nope"))),
                      "ENCRYPTION_KEY_FILE cannot be read")


def test_unsupported_database_url_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, DATABASE_URL="mysql://x")), "unsupported database 'mysql'")


def test_unreachable_postgresql_stops_start_up(tmp_path):
    port = free_port()

    result = start(base_env(tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/keygate"))

    assert_fails_with(result, f"cannot reach PostgreSQL at 127.0.0.1:{port}")


def test_sqlite_file_under_an_unusable_folder_stops_start_up(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    result = start(base_env(tmp_path, DATABASE_URL=f"sqlite:///{blocker}/keygate.db"))

    assert_fails_with(result, f"cannot create folder {blocker}")


def test_garbage_database_url_stops_start_up(tmp_path):
    assert_fails_with(start(base_env(tmp_path, DATABASE_URL="definitely not a url")), "DATABASE_URL")


def test_demo_mode_generates_throwaway_secrets_under_instance_and_says_so(tmp_path):
    instance = tmp_path / "instance"
    env = {"GATEWAY_MODE": "demo", "INSTANCE_PATH": str(instance)}

    first = start(env)
    second = start(env)

    assert first.returncode == 0, first.stderr
    assert "DEMO MODE" in first.stderr and "never use demo mode in production" in first.stderr
    assert sorted(p.name for p in instance.iterdir() if p.name.startswith("demo-")) == [
        "demo-admin-token", "demo-encryption-key", "demo-key-pepper", "demo-secret-key"]
    assert oct((instance / "demo-secret-key").stat().st_mode & 0o777) == "0o600"
    assert second.returncode == 0 and "DEMO MODE" in second.stderr
    config = load_config(env)
    assert config["SECRET_KEY"] == (instance / "demo-secret-key").read_text().strip()
    assert config["DATABASE_URL"] == f"sqlite:///{instance / 'keygate.db'}"
    assert config["SESSION_COOKIE_SECURE"] is False


@pytest.mark.parametrize("name, value, fragment", [
    ("GATEWAY_MODE", "staging", "GATEWAY_MODE must be one of"),
    ("IP_RPM", "many", "IP_RPM is malformed"),
    ("SESSION_COOKIE_SECURE", "maybe", "SESSION_COOKIE_SECURE is malformed"),
    ("ADMIN_API_TOKEN", "short", "ADMIN_API_TOKEN entries must be at least 16 characters"),
    ("KEY_PEPPER", "", "KEY_PEPPER is not set"),
    ("UPSTREAM_READ_TIMEOUT", "0", "UPSTREAM_READ_TIMEOUT must be positive"),
    ("QUOTA_TIMEZONE", "Mars/Olympus", "is not a known timezone"),
    ("PROXY_PREFIX", "/", "PROXY_PREFIX must start with '/'"),
    ("ADMIN_AUTH_FAILURES_PER_MINUTE", "0", "ADMIN_AUTH_FAILURES_PER_MINUTE must be at least 1"),
    ("GLOBAL_RPM", "-5", "GLOBAL_RPM must be at least 1"),
    ("LOG_RETENTION_DAYS", "0", "LOG_RETENTION_DAYS must be at least 1"),
    ("BODY_IDLE_TIMEOUT_SECONDS", "0", "BODY_IDLE_TIMEOUT_SECONDS must be positive"),
    ("BODY_TIMEOUT_SECONDS", "5", "BODY_TIMEOUT_SECONDS must be at least BODY_IDLE_TIMEOUT_SECONDS"),
    ("BODY_READS_PER_ADDRESS", "0", "BODY_READS_PER_ADDRESS must be at least 1"),
    ("SIGN_IN_USERNAME_FAILURES_PER_HOUR", "0", "SIGN_IN_USERNAME_FAILURES_PER_HOUR must be at least 1"),
    ("PORTAL_IDLE_TIMEOUT_SECONDS", "5", "PORTAL_IDLE_TIMEOUT_SECONDS must be at least 60"),
    ("PORTAL_SESSION_MAX_SECONDS", "100", "PORTAL_SESSION_MAX_SECONDS must be at least PORTAL_IDLE_TIMEOUT"),
])
def test_bad_settings_raise_a_one_line_config_error(tmp_path, name, value, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(base_env(tmp_path, **{name: value}))

    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["SECRET_KEY", "KEY_PEPPER"])
def test_short_secrets_stop_start_up_in_production(tmp_path, name):
    """A short SECRET_KEY lets session cookies be forged by brute force; a short
    KEY_PEPPER makes the stored key digests guessable offline (issue 15, finding 11)."""
    assert_fails_with(start(base_env(tmp_path, **{name: "x" * 31})), f"{name} must be at least 32 characters")
    assert start(base_env(tmp_path, **{name: "x" * 32})).returncode == 0


def test_short_secrets_still_work_in_development_and_demo_generates_long_ones(tmp_path):
    config = load_config(base_env(tmp_path, GATEWAY_MODE="development", SECRET_KEY="dev", KEY_PEPPER="dev"),
                         check_database=False)
    assert config["SECRET_KEY"] == "dev"
    demo = load_config({"GATEWAY_MODE": "demo", "INSTANCE_PATH": str(tmp_path / "demo")}, check_database=False)
    assert len(demo["SECRET_KEY"]) >= 32 and len(demo["KEY_PEPPER"]) >= 32


def test_several_admin_tokens_are_comma_separated(tmp_path):
    config = load_config(base_env(tmp_path, ADMIN_API_TOKEN="token-one-0123456789, token-two-0123456789"))

    assert config["ADMIN_API_TOKEN"] == ["token-one-0123456789", "token-two-0123456789"]


def test_postgres_urls_use_psycopg_3(tmp_path):
    config = load_config(base_env(tmp_path, DATABASE_URL="postgres://u@db.example.test/k"), check_database=False)

    assert config["DATABASE_URL"] == "postgresql+psycopg://u@db.example.test/k"
