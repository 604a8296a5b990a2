"""One-command demo: ``python -m gateway.demo``.

Runs KeyGate on its embedded defaults (SQLite under instance/, in-process limiter
storage, throwaway secrets from demo mode), starts the fake upstream, registers it as
an OpenAI and an Anthropic backend with two upstream keys each, creates a demo user
key and prints ready-to-paste examples - so a newcomer sees a streamed completion in
a minute. This launcher only assembles child processes; settings are still read and
validated by ``gateway.config``.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import DEFAULT_INSTANCE, PROJECT_ROOT


def _start_fake(port: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "gateway.fake_upstream", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"keygate demo: the fake upstream did not start ({line.strip()!r})")
    return process, line.rsplit(" ", 1)[-1].strip()


def _admin_password(instance: Path) -> str:
    path = instance / "demo-admin-password"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def _provision(env: dict[str, str], fake_url: str) -> tuple[str, str]:
    """Create backends and a fresh demo key in-process; returns (user key, admin token)."""
    from sqlalchemy import select

    from . import create_app
    from .bootstrap import ensure_first_admin
    from .extensions import db
    from .models import Backend, User
    from .services import backends as backend_service
    from .services import keys as key_service
    from .transaction import committed

    app = create_app(env=env)
    with app.app_context(), committed():
        ensure_first_admin()
        if db.session.scalar(select(Backend).where(Backend.name == "demo-openai")) is None:
            openai_backend = backend_service.create_backend(
                {"name": "demo-openai", "kind": "openai", "base_url": fake_url + "/v1",
                 "models": ["gpt-*", "text-embedding-*"], "model_aliases": {"demo": "gpt-4o-mini"}}, "demo", None)
            anthropic_backend = backend_service.create_backend(
                {"name": "demo-anthropic", "kind": "anthropic", "base_url": fake_url, "models": ["claude-*"]},
                "demo", None)
            for backend in (openai_backend, anthropic_backend):
                for index in (1, 2):
                    secret = f"sk-fake-{backend.kind}-{index}-{secrets.token_hex(8)}"
                    backend_service.add_key(backend, {"secret": secret, "label": f"demo-{index}"}, "demo", None)
        else:  # the fake's port may differ between runs
            names = ["demo-openai", "demo-anthropic"]
            for backend in list(db.session.scalars(select(Backend).where(Backend.name.in_(names)))):
                backend_service.update_backend(
                    backend, {"base_url": fake_url + ("/v1" if backend.kind == "openai" else "")}, "demo", None)
        user = db.session.scalar(select(User).where(User.name == "demo-user"))
        key_body = {"label": f"demo {time.strftime('%Y-%m-%d %H:%M')}"}
        if user is None:
            _key, plaintext = key_service.create_user_and_key(
                {"name": "demo-user", "tier": "dev", "token_quota": 100000, "quota_period": "monthly"}, key_body,
                "demo", None)
        else:
            _key, plaintext = key_service.issue(user, key_body, "demo", None)
    return plaintext, app.config["ADMIN_API_TOKEN"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description="Run KeyGate with a fake upstream on embedded defaults.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream-port", type=int, default=0)
    args = parser.parse_args()
    instance = Path(os.environ.get("INSTANCE_PATH") or DEFAULT_INSTANCE)
    env = {**os.environ, "GATEWAY_MODE": "demo", "INSTANCE_PATH": str(instance),
           "GATEWAY_BIND": f"127.0.0.1:{args.port}", "GATEWAY_WORKERS": "1",
           "BLOCK_PRIVATE_UPSTREAMS": "false", "ADMIN_PASSWORD": _admin_password(instance)}
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=PROJECT_ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fake, fake_url = _start_fake(args.upstream_port)
    try:
        user_key, admin_token = _provision(env, fake_url)
        base = f"http://127.0.0.1:{args.port}"
        print(f"""
KeyGate demo
  gateway        {base}   (health: {base}/health)
  admin portal   {base}/admin/   user: {env.get('ADMIN_USERNAME', 'admin')}  password: {env['ADMIN_PASSWORD']}
  admin API      X-Admin-Key: {admin_token}
  usage page     {base}/usage
  demo user key  {user_key}   (shown once; a new one is issued on every start)
  fake upstream  {fake_url}

Stream a completion:
  curl -N {base}/v1/chat/completions -H "Authorization: Bearer {user_key}" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "gpt-4o-mini", "stream": true, "messages": [{{"role": "user", "content": "Hello [[interval:0.1]]"}}]}}'

Or with the OpenAI SDK:
  python -c "import openai; c = openai.OpenAI(base_url='{base}/v1', api_key='{user_key}'); \\
[print(x.choices[0].delta.content or '', end='', flush=True) for x in c.chat.completions.create(model='gpt-4o-mini', \\
messages=[{{'role': 'user', 'content': 'Hello'}}], stream=True) if x.choices]; print()"
""", flush=True)  # noqa: E501  (a copy-paste command line)
        gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                    cwd=PROJECT_ROOT, env=env)
        signal.signal(signal.SIGTERM, lambda *_: gunicorn.terminate())
        try:
            gunicorn.wait()
        except KeyboardInterrupt:
            gunicorn.terminate()
            gunicorn.wait(timeout=30)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
