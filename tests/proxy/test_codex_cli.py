"""Codex CLI (npm ``@openai/codex``, pinned in tests/clients/package.json, installed by
.ci/setup with ``npm ci``) driven non-interactively (``codex exec``) against KeyGate and
the fake upstream over the Responses API: a function-call round trip (the fake asks for
``exec_command``, Codex runs it and sends its output back, the fake answers text), and
exactly one usage row per model call with the fake's numbers (issue 16)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gateway.fake_upstream import count_prompt_tokens

CODEX = Path(__file__).resolve().parents[1] / "clients" / "node_modules" / ".bin" / "codex"


def run_codex(deployment, tmp_path: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    assert CODEX.exists(), "Codex CLI missing: run .ci/setup (npm ci in tests/clients)"
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-4o-mini"\nmodel_provider = "keygate"\n'
        "[model_providers.keygate]\n"
        f'name = "KeyGate"\nbase_url = "{deployment.url}/v1"\nenv_key = "KEYGATE_API_KEY"\nwire_api = "responses"\n')
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home),
           "KEYGATE_API_KEY": deployment.key}
    return subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "-C", str(work), prompt], env=env,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def test_codex_exec_runs_a_function_call_round_trip_with_exact_usage_rows(deployment, tmp_path):
    result = run_codex(deployment, tmp_path, "[[call:exec_command]] run the check [[tokens:3]]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["tok0", "tok1", "tok2"]
    sent = [r for r in deployment.upstream.requests() if r["path"] == "/v1/responses"]
    assert len(sent) == 2
    first, second = (r["body"] for r in sent)
    assert first["store"] is False and first["stream"] is True  # Codex keeps no provider state
    # the second call carries the command's real output back as function_call_output
    [output] = [item for item in second["input"] if item.get("type") == "function_call_output"]
    assert "fake-tool-ok" in str(output["output"])
    assert deployment.key not in repr(sent)
    rows = sorted(deployment.wait_for_logs(2), key=lambda r: r["id"])
    assert [(r["route"], r["status"], r["outcome"], r["streamed"], r["estimated"]) for r in rows] == [
        ("/v1/responses", 200, "ok", True, False)] * 2
    assert [(r["tokens_in"], r["tokens_out"]) for r in rows] == [
        (count_prompt_tokens(first), 3), (count_prompt_tokens(second), 3)]
