"""Client-program fixtures: the proxy tests' gunicorn gateway and deployment."""
from tests.proxy.conftest import deployment, gateway  # noqa: F401
