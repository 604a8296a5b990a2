"""HTML error pages for the portal (the app-wide handlers answer JSON elsewhere)."""
from __future__ import annotations

from typing import Any

from flask import render_template
from flask_wtf.csrf import CSRFError

from . import bp

MESSAGES = {
    403: ("Forbidden", "Your account is read-only (viewer); ask an admin to make this change."),
    404: ("Not found", "There is nothing at this address."),
}


@bp.errorhandler(CSRFError)
def csrf_error(error: CSRFError) -> Any:
    """Missing, wrong or expired form token: nothing was changed."""
    return render_template("portal/error.html", code=400, title="Form expired",
                           message="The form's security token was missing, wrong or expired, so nothing was "
                                   "changed. Go back, reload the page and submit again."), 400


@bp.errorhandler(403)
@bp.errorhandler(404)
def portal_error(error: Any) -> Any:
    title, message = MESSAGES[error.code]
    return render_template("portal/error.html", code=error.code, title=title, message=message), error.code
