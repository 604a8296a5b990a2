"""Portal forms. They only parse what the browser sends (text to numbers, lists,
mappings); every business rule is checked by the service the form's data is passed
to, whose errors come back inline next to the field they name."""
from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, DecimalField, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.fields import DateTimeLocalField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from ..models import BACKEND_KINDS, QUOTA_PERIODS, SETTABLE_USER_STATUSES, USER_STATUSES

PERIOD_CHOICES = [SelectChoice(p) for p in QUOTA_PERIODS]


class ActionForm(FlaskForm):
    """A bare button (suspend, revoke, reset...): only the CSRF token."""


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=512)])


class SearchForm(FlaskForm):
    class Meta:
        csrf = False  # a GET filter changes nothing

    q = StringField("Search", validators=[Optional(), Length(max=200)])
    status = SelectField("Status", choices=[SelectChoice("", "any but deleted"), *map(SelectChoice, USER_STATUSES)],
                         validators=[Optional()])


class UserForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    email = StringField("Email", validators=[Optional(), Length(max=320)])
    tier = SelectField("Tier", choices=[])
    status = SelectField("Status", choices=[SelectChoice(s) for s in SETTABLE_USER_STATUSES])
    token_quota = IntegerField("Token quota", validators=[Optional(), NumberRange(min=0)],
                               description="Tokens per period; empty = unlimited")
    request_quota = IntegerField("Request quota", validators=[Optional(), NumberRange(min=0)],
                                 description="Requests per period; empty = unlimited")
    byte_quota = IntegerField("Byte quota", validators=[Optional(), NumberRange(min=0)],
                              description="Bytes per period; empty = unlimited")
    quota_period = SelectField("Quota period", choices=PERIOD_CHOICES)
    reset_day = IntegerField("Reset day", default=1, validators=[Optional()],
                             description="Day of month (1-28) a monthly period starts")
    ip_allowlist = TextAreaField("IP allowlist", description="CIDR ranges, one per line; empty = any address")
    allowed_models = TextAreaField("Allowed models", description="One per line; empty = all models")
    allowed_backends = TextAreaField("Allowed backends", description="One per line; empty = all backends")
    notes = TextAreaField("Notes", validators=[Length(max=5000)])

    FIELDS = ("name", "email", "tier", "status", "token_quota", "request_quota", "byte_quota", "quota_period",
              "reset_day", "ip_allowlist", "allowed_models", "allowed_backends", "notes")

    def body(self) -> dict[str, Any]:
        body = {name: self[name].data for name in self.FIELDS}
        body["email"] = (body["email"] or "").strip() or None
        if body["reset_day"] is None:
            body["reset_day"] = 1
        return body


class KeyForm(FlaskForm):
    label = StringField("Label", validators=[Optional(), Length(max=200)])
    expires_at = DateTimeLocalField("Expires (UTC)", validators=[Optional()], format="%Y-%m-%dT%H:%M")

    def body(self) -> dict[str, Any]:
        expires = self.expires_at.data
        return {"label": self.label.data or "", "expires_at": expires.isoformat() if expires else None}


class RotateForm(FlaskForm):
    grace_seconds = IntegerField("Grace period (seconds)", default=3600,
                                 validators=[DataRequired(), NumberRange(min=0)])


def _parse_pairs(text: str, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        if "=" not in line:
            raise ValidationError(f"each line must be {label}")
        left, right = (part.strip() for part in line.split("=", 1))
        out[left] = right
    return out


class TierForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)])
    key_prefix = StringField("Key prefix", validators=[DataRequired(), Length(max=32)],
                             description="e.g. sk-team-")
    rpm = IntegerField("Requests per minute", default=30, validators=[DataRequired()])
    rpd = IntegerField("Requests per day", validators=[Optional()])
    tpm = IntegerField("Tokens per minute", validators=[Optional()])
    default_token_quota = IntegerField("Default token quota", validators=[Optional()])
    default_request_quota = IntegerField("Default request quota", validators=[Optional()])
    default_byte_quota = IntegerField("Default byte quota", validators=[Optional()])
    default_quota_period = SelectField("Default quota period", choices=PERIOD_CHOICES, default="monthly")

    FIELDS = ("name", "key_prefix", "rpm", "rpd", "tpm", "default_token_quota", "default_request_quota",
              "default_byte_quota", "default_quota_period")

    def body(self) -> dict[str, Any]:
        return {name: self[name].data for name in self.FIELDS}


class BackendForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)])
    kind = SelectField("Kind", choices=[SelectChoice(k) for k in BACKEND_KINDS])
    base_url = StringField("Base URL", validators=[DataRequired(), Length(max=2000)])
    weight = IntegerField("Weight", default=1, validators=[Optional()])
    models = TextAreaField("Models", description="Names or * patterns, one per line")
    model_aliases = TextAreaField("Model aliases", description="alias = model, one per line")
    prices = TextAreaField("Prices (USD per 1M tokens)", description="model = input output, one per line")
    enabled = BooleanField("Enabled", default=True)
    connect_timeout = DecimalField("Connect timeout (s)", validators=[Optional()])
    read_timeout = DecimalField("Read timeout (s)", validators=[Optional()])
    health_check_path = StringField("Health-check path", validators=[Optional(), Length(max=500)],
                                    description="GET path used by test-connection; default /v1/models")
    relay_cookies = BooleanField("Relay cookies", default=False,
                                 description="kind http only: relay the upstream's Set-Cookie to the client and "
                                             "the client's Cookie to the upstream; never stored by KeyGate")

    def validate_model_aliases(self, field: Any) -> None:
        _parse_pairs(field.data, "alias = model")

    def validate_prices(self, field: Any) -> None:
        self._prices()

    def _prices(self) -> dict[str, dict[str, float]]:
        out = {}
        for model, numbers in _parse_pairs(self.prices.data, "model = input output").items():
            parts = numbers.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                out[model] = {"input": float(parts[0]), "output": float(parts[1])}
            except ValueError:
                raise ValidationError("each line must be: model = input-price output-price") from None
        return out

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name.data, "kind": self.kind.data, "base_url": self.base_url.data,
            "weight": self.weight.data if self.weight.data is not None else 1,
            "models": self.models.data or "", "model_aliases": _parse_pairs(self.model_aliases.data, ""),
            "prices": self._prices(), "enabled": bool(self.enabled.data),
            "connect_timeout": float(self.connect_timeout.data) if self.connect_timeout.data is not None else None,
            "read_timeout": float(self.read_timeout.data) if self.read_timeout.data is not None else None,
            "health_check_path": self.health_check_path.data or None,
            "relay_cookies": bool(self.relay_cookies.data),
        }


class UpstreamKeyForm(FlaskForm):
    secret = PasswordField("Secret", validators=[DataRequired(), Length(max=4096)],
                           description="Write-only: it is encrypted and never shown again")
    label = StringField("Label", validators=[Optional(), Length(max=200)])
    weight = IntegerField("Weight", default=1, validators=[Optional()])

    def body(self) -> dict[str, Any]:
        return {"secret": self.secret.data, "label": self.label.data or "",
                "weight": self.weight.data if self.weight.data is not None else 1}


class UpstreamKeyEditForm(FlaskForm):
    label = StringField("Label", validators=[Optional(), Length(max=200)])
    weight = IntegerField("Weight", default=1, validators=[Optional()])
    enabled = BooleanField("Enabled")
    secret = PasswordField("Replace secret", validators=[Optional(), Length(max=4096)],
                           description="Leave empty to keep the current secret")

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"label": self.label.data or "", "enabled": bool(self.enabled.data),
                                "weight": self.weight.data if self.weight.data is not None else 1}
        if self.secret.data:
            body["secret"] = self.secret.data
        return body
