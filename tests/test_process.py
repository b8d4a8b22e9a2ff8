"""The real `python -m bot run` process: start-up, SIGTERM during a stream, logs without secrets."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi, FakeUser
from tests.harness import SIGNING_SECRET, eventually, signed_headers
from tests.test_cli import bot_env, query

BOT_TOKEN = "xoxb-test"
API_KEY = "test-key"
QUESTION = "my secret plan is PINEAPPLE-42"
ANSWER_WORD = "BANANA7 "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def spawn_bot(tmp_path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """`python -m bot run` in `tmp_path` (so no .env of the repository leaks in), output captured."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_bot(tmp_path: Path, slack: FakeSlackApi, aiml: FakeAimlApi, grace: float, database_url: str):
    slack.users.setdefault("U1", FakeUser(real_name="U1"))  # the asker of `send_mention`, a member
    port = free_port()
    env = bot_env(
        tmp_path,
        DATABASE_URL=database_url,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack.api_url,
        AIMLAPI_KEY=API_KEY,
        AIMLAPI_BASE_URL=aiml.base_url,
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        STREAM_UPDATE_INTERVAL="0.2",
        SHUTDOWN_GRACE_SECONDS=str(grace),
    )
    process = await spawn_bot(tmp_path, env)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await http.get("/healthz")).status_code == 200:
                return process, http
        except httpx.TransportError:
            pass
        if process.returncode is not None or time.monotonic() > deadline:
            _, err = await process.communicate()
            raise AssertionError(f"bot did not start: {err.decode()[-2000:]}")
        await asyncio.sleep(0.1)


async def send_mention(http: httpx.AsyncClient, ts: str) -> None:
    body = json.dumps(
        {
            "type": "event_callback",
            "team_id": "T1",
            "event_id": f"Ev{ts}",
            "event": {
                "type": "app_mention",
                "user": "U1",
                "text": f"<@UBOT> {QUESTION}",
                "ts": ts,
                "channel": "C1",
            },
        }
    )
    assert (await http.post("/slack/events", content=body, headers=signed_headers(body))).status_code == 200


async def stored_status(database_url: str) -> list[tuple[object, ...]]:
    return await query(database_url, "SELECT role, status FROM messages ORDER BY id")


@pytest.mark.parametrize(("grace", "expected"), [(30.0, "complete"), (0.5, "interrupted")])
async def test_sigterm_during_a_stream_finishes_or_interrupts_it_and_logs_no_secrets(
    tmp_path, fakes, grace, expected, db_url
):
    slack, aiml = fakes
    aiml.enqueue(Reply(content=ANSWER_WORD * 30, chunk_size=len(ANSWER_WORD), chunk_interval=0.1))
    process, http = await start_bot(tmp_path, slack, aiml, grace, db_url)
    try:
        await send_mention(http, "100.000001")
        await eventually(lambda: any(ANSWER_WORD.strip() in m.text for m in slack.messages("C1")), 10)
        process.send_signal(signal.SIGTERM)
        if expected == "complete":
            # Draining: load balancers see it as not ready while the reply finishes; it is still alive.
            ready = await http.get("/readyz")
            deadline = time.monotonic() + 10
            while ready.status_code == 200 and time.monotonic() < deadline:
                ready = await http.get("/readyz")
            assert ready.json() == {"status": "unavailable", "database": "ok"}
            assert (await http.get("/livez")).status_code == 200
        _, err = await asyncio.wait_for(process.communicate(), 40)
    finally:
        await http.aclose()
    assert process.returncode == 0, err.decode()[-2000:]

    [reply] = [m for m in slack.messages("C1") if m.bot_id]
    assert "Thinking" not in reply.text
    if expected == "complete":
        assert reply.markdown == ANSWER_WORD * 30
    else:
        assert reply.markdown.startswith(ANSWER_WORD) and reply.markdown != ANSWER_WORD * 30
        assert "interrupted" in reply.context.lower()
    assert (await stored_status(db_url))[-1] == ("assistant", expected)

    logs = err.decode()
    assert "bot running" in logs  # INFO lines are there...
    for secret in (BOT_TOKEN, SIGNING_SECRET, API_KEY, "PINEAPPLE", ANSWER_WORD.strip()):
        assert secret not in logs  # ...but no token, secret, key or message body
    for line in logs.splitlines():
        json.loads(line)  # JSON lines, one object each


async def test_a_rejected_bot_token_at_start_up_is_one_clear_line(tmp_path, fakes):
    slack, aiml = fakes
    env = bot_env(
        tmp_path,
        SLACK_BOT_TOKEN="xoxb-revoked",
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=slack.api_url,
        AIMLAPI_KEY=API_KEY,
        AIMLAPI_BASE_URL=aiml.base_url,
    )
    process = await spawn_bot(tmp_path, env)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert err.decode().strip().splitlines() == [
        "error: SLACK_BOT_TOKEN: Slack rejected the token (invalid_auth)"
    ]


async def test_settings_are_read_from_a_dotenv_file_in_the_working_directory(tmp_path, fakes):
    slack, _ = fakes
    (tmp_path / ".env").write_text(
        f"SLACK_BOT_TOKEN=xoxb-from-dotenv\nSLACK_SIGNING_SECRET=s\nAIMLAPI_KEY=k\nSLACK_API_URL={slack.api_url}\n"
    )
    process = await spawn_bot(tmp_path, bot_env(tmp_path))
    _, err = await asyncio.wait_for(process.communicate(), 30)
    # The fake knows only xoxb-test, so the token from .env was sent to Slack and rejected.
    assert process.returncode == 2
    assert "Slack rejected the token" in err.decode()
    assert [c.method for c in slack.calls] == ["auth.test"]
