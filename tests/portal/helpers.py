"""Test helpers shared by the portal and browser tests."""
from __future__ import annotations

from flask import Flask


def wire_surfaces(app: Flask) -> None:
    """Register the portal and public-usage blueprints when the factory has not.

    ``create_app`` is meant to do this itself (``test_factory_serves_portal_and_usage``
    checks it does); until it does, the tests still exercise the real blueprints.
    """
    from gateway import portal, usage
    from gateway.extensions import csrf

    if "portal" not in app.blueprints:
        portal.init_app(app)
        app.register_blueprint(portal.bp)
    if "usage" not in app.blueprints:
        app.register_blueprint(usage.bp)
        csrf.exempt(usage.bp)
