"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` (and ``flask --app wsgi``)."""
import sys

from gateway import create_app
from gateway.config import ConfigError

try:
    app = create_app(check_database=True)  # a wrong DATABASE_URL stops start-up here
except ConfigError as error:
    print(f"keygate: configuration error: {error}", file=sys.stderr)
    sys.exit(1)
