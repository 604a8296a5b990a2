"""The OpenAI Responses API through KeyGate with the official ``openai`` SDK, against the
fake upstream (a real process) and a real gunicorn gateway: create (JSON and SSE),
function-call turns, stored responses pinned to the upstream key that holds them and
readable by their owner only, and exact usage rows (issue 16)."""
from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler

import openai
import pytest
import requests

from gateway.fake_upstream import count_prompt_tokens
from tests.fixtures.deployment import UPSTREAM_SECRET
from tests.fixtures.http_server import serving

SHELL_TOOL = {"type": "function", "name": "shell", "description": "Run a command",
              "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}},
                                                              "workdir": {"type": "string"}},
                             "required": ["command"], "additionalProperties": False},
              "strict": False}


def client_for(deployment, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.url + "/v1", api_key=key or deployment.key, max_retries=0, timeout=20)


def words(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


def responses_sent(deployment) -> list[dict]:
    return [r for r in deployment.upstream.requests() if r["path"].startswith("/v1/responses")]


def bearer(record: dict) -> str:
    headers = {k.lower(): v for k, v in record["headers"].items()}
    return headers.get("authorization", "")


def test_create_non_stream_passes_fields_through_and_records_exact_usage(deployment):
    text = "Say hello to the gateway [[reasoning:3]] [[cache_read:2]]"
    fields = {"store": True, "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low"},
              "prompt_cache_key": "pc-42", "tools": [{"type": "web_search"}, SHELL_TOOL],
              "instructions": "Be terse please"}
    response = client_for(deployment).responses.create(model="gpt-4o-mini", input=text, max_output_tokens=7,
                                                       **fields)
    prompt = count_prompt_tokens({"input": text, "instructions": fields["instructions"]})
    assert response.output_text.split() == words(7)
    assert response.status == "incomplete"  # 16 words wanted, 7 allowed
    assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt, 10)
    assert response.usage.output_tokens_details.reasoning_tokens == 3
    [sent] = responses_sent(deployment)
    assert {k: sent["body"][k] for k in fields} == fields and sent["body"]["max_output_tokens"] == 7
    assert bearer(sent) == f"Bearer {UPSTREAM_SECRET}" and deployment.key not in repr(sent)
    [row] = deployment.wait_for_logs(1)
    assert (row["route"], row["status"], row["outcome"], row["streamed"], row["estimated"]) == (
        "/v1/responses", 200, "ok", False, False)
    # output_tokens includes the reasoning tokens; input_tokens includes the cached ones
    assert (row["tokens_in"], row["tokens_out"], row["cache_read_tokens"]) == (prompt, 10, 2)


def test_without_max_output_tokens_the_reserved_budget_goes_upstream_as_the_cap(deployment):
    response = client_for(deployment).responses.create(model="gpt-4o-mini", input="one two three")
    assert response.output_text.split() == words(16) and response.status == "completed"
    [sent] = responses_sent(deployment)
    assert sent["body"]["max_output_tokens"] == 4096  # DEFAULT_MAX_TOKENS_RESERVE
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"]) == (3, 16)


def test_stream_relays_the_event_sequence_and_records_exact_usage(deployment):
    client = client_for(deployment)
    with client.responses.stream(model="gpt-4o-mini", input="stream me please [[tokens:4]] [[reasoning:5]]") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 4,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert final.output_text.split() == words(4)
    prompt = count_prompt_tokens({"input": "stream me please [[tokens:4]] [[reasoning:5]]"})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, 9)
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["streamed"], row["estimated"]) == (prompt, 9, True, False)


def test_stream_cut_by_max_output_tokens_ends_incomplete_and_counts_what_was_made(deployment):
    events = list(client_for(deployment).responses.create(model="gpt-4o-mini", input="long answer [[tokens:10]]",
                                                          max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    [row] = deployment.wait_for_logs(1)
    assert (row["tokens_in"], row["tokens_out"], row["estimated"]) == (3, 3, False)


def test_retrieve_input_items_delete_then_404(deployment):
    client = client_for(deployment)
    created = client.responses.create(model="gpt-4o-mini", input="remember this [[tokens:2]]")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [item.content[0].text for item in items.data] == ["remember this [[tokens:2]]"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(created.id)
    assert info.value.body["code"] == "response_not_found"
    # the gateway forgot the deleted id: the last retrieve never reached the provider
    assert [(r["method"], r["path"]) for r in responses_sent(deployment)] == [
        ("POST", "/v1/responses"), ("GET", f"/v1/responses/{created.id}"),
        ("GET", f"/v1/responses/{created.id}/input_items"), ("DELETE", f"/v1/responses/{created.id}")]
    rows = deployment.wait_for_logs(4)
    assert sorted((r["route"], r["status"], r["tokens_in"], r["tokens_out"]) for r in rows) == sorted([
        ("/v1/responses", 200, 3, 2), ("/v1/responses/{id}", 200, 0, 0),
        ("/v1/responses/{id}/input_items", 200, 0, 0), ("/v1/responses/{id}", 200, 0, 0)])


def test_cancel_reaches_the_holder_and_passes_its_answer_through(deployment):
    client = client_for(deployment)
    created = client.responses.create(model="gpt-4o-mini", input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(created.id)
    assert "background" in info.value.message
    assert responses_sent(deployment)[-1]["path"] == f"/v1/responses/{created.id}/cancel"


def test_follow_ups_and_previous_response_id_stay_on_the_upstream_key_that_created_the_response(deployment):
    backend = deployment.openai_backend_id
    deployment.admin.post(f"/backends/{backend}/keys", {"secret": "sk-upstream-SECOND-0123456789", "label": "b"})
    client = client_for(deployment)
    created = [client.responses.create(model="gpt-4o-mini", input=f"turn one number {i} [[tokens:2]]")
               for i in range(4)]
    creators = {r["body"]["input"].split()[3]: bearer(r) for r in responses_sent(deployment)}
    assert len(set(creators.values())) == 2  # the pool spread the creates over both keys
    for i, first in enumerate(created):
        seen = len(responses_sent(deployment))  # (a fake reset would forget its stored responses)
        again = client.responses.create(model="gpt-4o-mini", previous_response_id=first.id,
                                        input="and now? [[tokens:1]]")
        # the provider bills the previous turn again: its input and output plus the new words
        assert again.usage.input_tokens == first.usage.input_tokens + first.usage.output_tokens + 3
        assert client.responses.retrieve(again.id).previous_response_id == first.id
        sent = responses_sent(deployment)[seen:]
        assert len(sent) == 2 and {bearer(r) for r in sent} == {creators[str(i)]}


def test_a_disabled_holder_key_is_a_clear_409_not_another_key(deployment):
    backend = deployment.openai_backend_id
    deployment.admin.post(f"/backends/{backend}/keys", {"secret": "sk-upstream-SECOND-0123456789", "label": "b"})
    client = client_for(deployment)
    created = client.responses.create(model="gpt-4o-mini", input="hi there")
    holder = bearer(responses_sent(deployment)[0])[len("Bearer "):]
    keys = deployment.admin.get("/upstream-keys", backend_id=backend)["items"]
    [holder_key] = [k for k in keys if holder.endswith(k["last4"])]
    deployment.admin.patch(f"/upstream-keys/{holder_key['id']}", {"enabled": False})
    seen = len(responses_sent(deployment))
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.retrieve(created.id)
    assert info.value.status_code == 409 and info.value.body["code"] == "stored_response_unavailable"
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="gpt-4o-mini", previous_response_id=created.id, input="more")
    assert info.value.status_code == 409
    assert len(responses_sent(deployment)) == seen


def test_another_users_key_gets_404_and_never_reaches_the_provider(deployment):
    client = client_for(deployment)
    created = client.responses.create(model="gpt-4o-mini", input="private words")
    other = deployment.admin.post("/keys", {"name": "someone-else", "tier": "pro"})["key"]
    intruder = client_for(deployment, other)
    seen = len(responses_sent(deployment))
    for attempt in (lambda: intruder.responses.retrieve(created.id), lambda: intruder.responses.delete(created.id),
                    lambda: intruder.responses.input_items.list(created.id),
                    lambda: intruder.responses.cancel(created.id)):
        with pytest.raises(openai.NotFoundError) as info:
            attempt()
        assert info.value.body["code"] == "response_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        intruder.responses.create(model="gpt-4o-mini", previous_response_id=created.id, input="what did they say?")
    assert info.value.body["code"] == "previous_response_not_found"
    assert len(responses_sent(deployment)) == seen
    # a second key of the owner may read it: ownership is the user's
    mine = deployment.admin.post(f"/users/{deployment.user_id}/keys", {"label": "second"})["key"]
    assert client_for(deployment, mine).responses.retrieve(created.id).id == created.id


def test_function_call_round_trip_non_stream_and_stream(deployment):
    client = client_for(deployment)
    call = client.responses.create(model="gpt-4o-mini", input="[[call:shell]] list the files", tools=[SHELL_TOOL])
    [item] = call.output
    assert (item.type, item.name, json.loads(item.arguments)) == ("function_call", "shell",
                                                                 {"command": ["echo", "fake-tool-ok"]})
    answer = client.responses.create(model="gpt-4o-mini", previous_response_id=call.id, tools=[SHELL_TOOL],
                                     input=[{"type": "function_call_output", "call_id": item.call_id,
                                             "output": "fake-tool-ok"}])
    assert answer.output[0].type == "message" and answer.output_text.split() == words(16)
    # streamed, with the whole conversation as input (no stored state, like Codex)
    history = [{"role": "user", "content": "[[call:shell]] list the files [[tokens:3]]"}]
    with client.responses.stream(model="gpt-4o-mini", input=history, tools=[SHELL_TOOL], store=False) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    [streamed_call] = final.output
    history += [{"type": "function_call", "call_id": streamed_call.call_id, "name": "shell",
                 "arguments": streamed_call.arguments},
                {"type": "function_call_output", "call_id": streamed_call.call_id, "output": "fake-tool-ok"}]
    done = client.responses.create(model="gpt-4o-mini", input=history, tools=[SHELL_TOOL], store=False)
    assert done.output_text.split() == words(3)
    assert (call.usage.input_tokens, answer.usage.input_tokens) == (4, 4 + 16 + 1)
    rows = deployment.wait_for_logs(4)
    assert all(not r["estimated"] for r in rows)
    assert sorted((r["tokens_in"], r["tokens_out"]) for r in rows) == sorted([
        (4, 16), (21, 16), (5, 3), (count_prompt_tokens({"input": history}), 3)])


def test_mid_stream_reset_ends_with_a_responses_error_event(deployment):
    events = list(client_for(deployment).responses.create(model="gpt-4o-mini", input="go on [[reset_after:2]]",
                                                          stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "error" and events[-1].code == "stream_interrupted"
    assert "mid-stream" in events[-1].message
    [row] = deployment.wait_for_logs(1)
    assert row["outcome"] == "upstream_error" and row["estimated"] is True


class _DiesMidStream(BaseHTTPRequestHandler):
    """Starts a Responses stream, sends one delta, then drops the connection without
    ending the chunked body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        created = {"type": "response.created", "sequence_number": 0,
                   "response": {"id": "resp_hostile1", "object": "response", "status": "in_progress",
                                "model": "gpt-4o-mini", "output": []}}
        delta = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
                 "output_index": 0, "content_index": 0, "delta": "half"}
        for event in (created, delta):
            data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


def test_a_hostile_upstream_dying_mid_stream_gets_a_responses_error_event(deployment):
    with serving(_DiesMidStream) as url:
        backend = deployment.admin.post("/backends", {"name": "dies", "kind": "openai", "base_url": url + "/v1",
                                                      "models": ["hostile-*"]})
        deployment.admin.post(f"/backends/{backend['id']}/keys", {"secret": "sk-hostile-0123456789"})
        response = requests.post(deployment.url + "/v1/responses", timeout=20, stream=True,
                                 headers={"Authorization": f"Bearer {deployment.key}"},
                                 json={"model": "hostile-1", "input": "hello", "stream": True})
        body = response.content.decode()
    assert response.status_code == 200
    blocks = [b for b in body.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: response.created") and "half" in blocks[1]
    name, data = blocks[-1].split("\n", 1)
    assert name == "event: error"
    error = json.loads(data[len("data: "):])
    assert (error["type"], error["code"]) == ("error", "stream_interrupted")
    [row] = deployment.wait_for_logs(1)
    assert (row["outcome"], row["status"], row["streamed"]) == ("upstream_error", 200, True)


@pytest.mark.parametrize("field, value", [("background", True), ("conversation", "conv_123")])
def test_fields_the_gateway_cannot_account_or_attribute_are_a_clear_400(deployment, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client_for(deployment).responses.create(model="gpt-4o-mini", input="hi", extra_body={field: value})
    assert info.value.body["param"] == field and info.value.body["code"] == "unsupported_parameter"
    assert responses_sent(deployment) == []


def test_unknown_response_ids_and_odd_ids_are_404_in_openai_shape(deployment):
    for path in ("/v1/responses/resp_nope", "/v1/responses/" + "x" * 300, "/v1/responses/a.b"):
        response = requests.get(deployment.url + path, headers={"Authorization": f"Bearer {deployment.key}"},
                                timeout=10)
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["type"] == "not_found_error" and error["code"] == "response_not_found"
