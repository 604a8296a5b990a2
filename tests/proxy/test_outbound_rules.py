"""What of a client's request never goes upstream (``gateway.proxy.outbound``): the
one list of rules, used by the LLM forwarding and the pass-through alike."""
from __future__ import annotations

import pytest

from gateway.proxy import forward, outbound


@pytest.mark.parametrize("name", [
    "Authorization", "x-api-key", "X-Goog-Api-Key", "api-key", "X-Amz-Security-Token", "Proxy-Authorization",
    "Cookie", "Forwarded", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Host", "x-forwarded-proto", "True-Client-IP",
    "Connection", "Transfer-Encoding", "Host",
])
def test_credential_address_and_hop_by_hop_headers_are_never_forwarded(name: str) -> None:
    assert outbound.never_forwarded(name)
    assert forward.passthrough_headers({name: "v", "Accept": "image/png", "X-Custom": "1"}) == {
        "Accept": "image/png", "X-Custom": "1"}


def test_credential_query_parameters_are_dropped_and_the_rest_kept_byte_for_byte() -> None:
    assert outbound.query_string(b"key=sk-pro-abc&size=large&q=a%20b+c") == "size=large&q=a%20b+c"
    assert outbound.query_string(b"alt=sse&KEY=x&api_key=y&api-key=z&%6Bey=w&keyword=k") == "alt=sse&keyword=k"
    assert outbound.query_string(b"") == ""


@pytest.mark.parametrize("field", ["api_base", "API_BASE", "Base_Url", "api_base ", " api-key", "apiKey",
                                   "Extra_Headers", "base url"])
def test_body_field_variants_are_dropped(field: str) -> None:
    body = {"model": "m", "messages": [], field: "http://attacker.example", "max_tokens": 5}
    assert forward.sanitize_body(body) == {"model": "m", "messages": [], "max_tokens": 5}


def test_a_relayed_cookie_never_carries_or_sets_keygate_s_own_cookies() -> None:
    own = ("session", "remember_token")
    assert outbound.forwarded_cookie("session=portal; theirs=1; remember_token=r; b=2", own) == "theirs=1; b=2"
    assert outbound.forwarded_cookie("session=portal", own) == ""
    assert not outbound.relayable_set_cookie("session=evil; Path=/", own)
    assert outbound.relayable_set_cookie("theirs=1; Path=/; HttpOnly", own)
