"""A planted user key and upstream secret appear in no response, no log row, no audit
row and no server output after a run that exercises success and error paths."""
from __future__ import annotations

import json

import openai
import requests

from tests.fixtures.deployment import ANTHROPIC_SECRET, UPSTREAM_SECRET


def test_canary_key_and_upstream_secret_never_leak(deployment):
    seen: list[str] = []
    key = deployment.key
    auth = {"Authorization": f"Bearer {key}"}
    url = deployment.url
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=2, stream=True))
    calls = [
        ("post", "/v1/chat/completions", {"json": {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "[[status:400]] echo " + UPSTREAM_SECRET}]}}),
        ("post", "/v1/chat/completions", {"json": {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "[[status:500]]"}]}}),
        ("post", "/v1/chat/completions", {"data": b"{not json"}),
        ("post", "/v1/chat/completions", {"json": {"model": "nope", "messages": []}}),
        ("post", "/v1/messages", {"json": {"model": "claude-x", "max_tokens": 1, "messages": [
            {"role": "user", "content": "[[reset_after:1]]"}], "stream": True}}),
        ("get", "/v1/models", {}),
        ("get", "/api/usage", {}),
    ]
    for method, path, kwargs in calls:
        response = getattr(requests, method)(url + path, headers=auth, timeout=20, **kwargs)
        seen.append(response.text + json.dumps(dict(response.headers)))
    # the key in a query string and in a wrong header must not be logged either
    seen.append(requests.get(url + f"/api/usage?key={key}", timeout=10).text)
    seen.append(requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}x"}, timeout=10).text)
    admin_views = [deployment.admin.get("/logs", page_size=500), deployment.admin.get("/audit", page_size=500),
                   deployment.admin.get("/keys"), deployment.admin.get("/upstream-keys"),
                   deployment.admin.get("/users"), deployment.admin.get("/usage", group_by="user")]
    seen.extend(json.dumps(view) for view in admin_views)
    seen.append(deployment.gateway.output())
    haystack = "\n".join(seen)
    for secret in (key, UPSTREAM_SECRET, ANTHROPIC_SECRET):
        assert secret not in haystack
        assert secret[-12:] not in haystack  # not even a long tail of it
