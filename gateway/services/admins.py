"""Portal accounts (admins and read-only viewers): create, check a password, sign in and
out. Used by the portal's sign-in views, the ``create-admin`` command and first-run
setup, so the password rules and the audit rows are the same from every door.

Like every service, nothing here commits; the caller's ``committed()`` does."""
from __future__ import annotations

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..models import ADMIN_ROLES, Admin
from ..timeutil import utcnow
from . import audit
from .validation import ValidationError

MIN_PASSWORD_CHARS = 10
# Unknown usernames cost the same scrypt check as wrong passwords, so the time of a
# failed sign-in does not reveal which usernames exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password-but-the-same-cost")


def create(username: str, password: str, role: str = "admin", actor: str = "cli") -> Admin:
    if role not in ADMIN_ROLES:
        raise ValidationError({"role": f"must be one of {', '.join(ADMIN_ROLES)}"})
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValidationError({"password": f"must be at least {MIN_PASSWORD_CHARS} characters"})
    existing = db.session.scalar(select(Admin).where(Admin.username == username))
    if existing is not None:
        raise ValidationError({"username": "already exists"})
    admin = Admin(username=username, password_hash=generate_password_hash(password), role=role)
    db.session.add(admin)
    db.session.flush()
    audit.log_action(actor, "admin.create", "admin", admin.id, {"username": username, "role": role}, None)
    return admin


def count() -> int:
    return int(db.session.scalar(select(func.count()).select_from(Admin)) or 0)


def check_credentials(username: str, password: str) -> Admin | None:
    """The active account ``username`` (any case) if ``password`` is right, else None."""
    admin = db.session.scalar(select(Admin).where(func.lower(Admin.username) == username.lower()))
    valid = check_password_hash(admin.password_hash if admin else _DUMMY_HASH, password)
    return admin if admin is not None and valid and admin.active else None


def record_sign_in(admin: Admin, ip: str | None) -> None:
    admin.last_login_at = utcnow()
    audit.log_action(f"admin:{admin.username}", "admin.login", "admin", admin.id, {}, ip)


def sign_out(admin: Admin, ip: str | None) -> None:
    """Bump the session version: every cookie issued before, even a copied one, stops working."""
    admin.session_version = (admin.session_version or 0) + 1
    audit.log_action(f"admin:{admin.username}", "admin.logout", "admin", admin.id, {}, ip)
