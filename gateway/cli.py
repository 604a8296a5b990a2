"""``flask`` commands for operators. Full keys are printed once, to stdout only."""
from __future__ import annotations

import sys

import click
from flask import Flask
from sqlalchemy import select

from .extensions import db
from .lookups import valid_id
from .models import User
from .proxy.sweep import register_cli as register_sweep_cli
from .services import admins
from .services import backends as backend_service
from .services import keys as key_service
from .services.validation import ValidationError
from .transaction import committed


def _fail(error: ValidationError) -> None:
    click.echo("error: " + "; ".join(f"{k} {v}" for k, v in error.errors.items()), err=True)
    sys.exit(1)


def register_cli(app: Flask) -> None:
    from .retention import prune_logs_command

    app.cli.add_command(prune_logs_command)

    register_sweep_cli(app)

    @app.cli.command("probe-upstreams")
    def probe_upstreams() -> None:
        """Probe unhealthy upstream keys once now (what the background prober does every interval)."""
        from .proxy.prober import run_round

        results = run_round(app)
        for result in results:
            verdict = {True: "ok", False: "failed", None: "inconclusive"}[result.ok]
            click.echo(f"key {result.key_id} ({result.backend}): {verdict} - {result.detail}")
        click.echo(f"probed {len(results)} key(s)")

    @app.cli.command("create-admin")
    @click.option("--username", required=True)
    @click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
    @click.option("--role", default="admin", type=click.Choice(["admin", "viewer"]))
    def create_admin(username: str, password: str, role: str) -> None:
        """Create an admin (or read-only viewer) account for the portal."""
        try:
            with committed():
                admins.create(username, password, role)
        except ValidationError as error:
            _fail(error)
        click.echo(f"created {role} {username}")

    @app.cli.command("create-user")
    @click.option("--name", required=True)
    @click.option("--tier", default="dev")
    @click.option("--email", default=None)
    @click.option("--token-quota", type=int, default=None, help="tokens per period (default: unlimited)")
    @click.option("--period", type=click.Choice(["total", "monthly", "daily"]), default=None)
    @click.option("--label", default="cli")
    def create_user(name: str, tier: str, email: str | None, token_quota: int | None,
                    period: str | None, label: str) -> None:
        """Create a user and its first key; the key is printed once."""
        body: dict = {"name": name, "tier": tier}
        if email:
            body["email"] = email
        if token_quota is not None:
            body["token_quota"] = token_quota
        if period:
            body["quota_period"] = period
        try:
            with committed():
                key, plaintext = key_service.create_user_and_key(body, {"label": label}, "cli", None)
        except ValidationError as error:
            _fail(error)
        click.echo(f"user {key.user_id} ({key.user.name}), key {key.id}:")
        click.echo(plaintext)

    @app.cli.command("import-key")
    @click.option("--user-id", type=int, required=True)
    @click.option("--label", default="imported")
    @click.option("--key", "plaintext", prompt=True, hide_input=True, help="the existing plaintext key")
    def import_key(user_id: int, label: str, plaintext: str) -> None:
        """Register an existing plaintext key for a user so legacy clients keep working."""
        user = db.session.get(User, user_id) if valid_id(user_id) else None
        if user is None or user.status == "deleted":
            click.echo(f"error: no user with id {user_id}", err=True)
            sys.exit(1)
        try:
            with committed():
                key = key_service.import_plaintext(user, plaintext.strip(), label, "cli")
        except ValidationError as error:
            _fail(error)
        click.echo(f"imported key {key.id} for user {user.id}")

    @app.cli.command("rotate-encryption-key")
    def rotate_encryption_key() -> None:
        """Re-encrypt every upstream secret under the first (newest) ENCRYPTION_KEY."""
        from cryptography.fernet import InvalidToken

        try:
            with committed():
                count = backend_service.rotate_encryption()
        except InvalidToken:
            click.echo("error: a stored secret fits none of the configured keys; keep the old key "
                       "in ENCRYPTION_KEY (after the new one) until rotation succeeds", err=True)
            sys.exit(1)
        click.echo(f"re-encrypted {count} upstream secret(s) with the newest key")

    @app.cli.command("import-backends")
    def import_backends() -> None:
        """Import backends and keys from BACKENDS_JSON / OPENAI_* / ANTHROPIC_* when none exist."""
        from .bootstrap import import_backends_from_env

        try:
            with committed():
                count = import_backends_from_env()
        except ValidationError as error:
            _fail(error)
        click.echo(f"imported {count} backend(s)")

    @app.cli.command("bootstrap")
    def bootstrap() -> None:
        """First-run setup: the first admin from ADMIN_PASSWORD and backends from the environment."""
        from .bootstrap import ensure_first_admin, import_backends_from_env

        try:
            with committed():  # the whole first-run setup, or nothing
                admin = ensure_first_admin()
                count = import_backends_from_env()
        except ValidationError as error:
            _fail(error)
        if admin:
            click.echo(f"created admin {admin.username}")
        click.echo(f"imported {count} backend(s)")

    @app.cli.command("list-users")
    def list_users() -> None:
        """Print users with their tier and status."""
        for user in db.session.scalars(select(User).order_by(User.id)):
            click.echo(f"{user.id}\t{user.name}\t{user.tier.name}\t{user.status}")
