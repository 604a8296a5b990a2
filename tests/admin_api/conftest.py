import pytest

from .factories import AdminApi


@pytest.fixture
def api(client, admin_headers) -> AdminApi:
    return AdminApi(client, admin_headers)
