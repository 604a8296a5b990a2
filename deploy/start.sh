#!/bin/sh
# Container/host entry point: migrate, bootstrap (first admin, backends from the
# environment), then exec gunicorn so it receives SIGTERM directly (graceful shutdown).
set -eu
cd "$(dirname "$0")/.."
export FLASK_APP=wsgi
flask db upgrade
flask bootstrap
exec gunicorn -c gunicorn.conf.py wsgi:app
