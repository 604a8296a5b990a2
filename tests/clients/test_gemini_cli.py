"""Gemini CLI (npm ``@google/gemini-cli``, pinned in tests/clients/gemini) driven with
``gemini -p`` against a real gateway and the fake upstream's Gemini API: it must exit 0
with the fake's answer and leave exact usage rows (its model router's JSON call and
the streamed turn), its KeyGate key never reaching the upstream."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.proxy.test_gemini_sdk import GEMINI_SECRET, add_gemini_backend

CLI = Path(__file__).resolve().parent / "gemini" / "node_modules" / ".bin" / "gemini"
THOUGHTS = 8  # the fake's thought tokens (the CLI asks for thinking)


def test_gemini_cli_answers_through_keygate_with_exact_usage(deployment, tmp_path):
    add_gemini_backend_for_cli(deployment)
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps({
        "security": {"auth": {"selectedType": "gemini-api-key"}}, "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False}}))
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GEMINI_API_KEY": deployment.key,
           "GOOGLE_GEMINI_BASE_URL": deployment.url, "GEMINI_CLI_TRUST_WORKSPACE": "true", "NO_COLOR": "1"}
    done = subprocess.run([str(CLI), "-p", "Say hello"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [f"tok{i}" for i in range(16)]
    rows = sorted(deployment.wait_for_logs(2), key=lambda row: row["id"])
    sent = [r for r in deployment.upstream.requests() if r["path"].startswith("/v1beta/models/")]
    assert [row["route"].rpartition(":")[2] for row in rows] == ["generateContent", "streamGenerateContent"]
    assert all(row["status"] == 200 and row["outcome"] == "ok" and not row["estimated"] for row in rows)
    from gateway.fake_upstream.gemini import count_gemini_prompt_tokens, structured_answer

    router = structured_answer(sent[0]["body"]["generationConfig"])
    assert router is not None
    assert [(row["tokens_in"], row["tokens_out"]) for row in rows] == [
        (count_gemini_prompt_tokens(sent[0]["body"]), len(router.split()) + THOUGHTS),
        (count_gemini_prompt_tokens(sent[1]["body"]), 16 + THOUGHTS)]
    assert all(r["headers"]["x-goog-api-key"] == GEMINI_SECRET for r in sent)
    assert deployment.key not in json.dumps(sent)


def add_gemini_backend_for_cli(deployment) -> None:
    """The standard Gemini backend, plus every model name (the CLI picks its own)."""
    backend_id = add_gemini_backend(deployment)
    deployment.admin.patch(f"/backends/{backend_id}", {"models": ["gemini-*"]})
