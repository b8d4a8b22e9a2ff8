"""What README.md promises an operator, checked against the running bot: logs, metrics, replicas,
the system prompt file and the default command."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.logs import configure_logging
from bot.storage.models import UsageRecord
from tests.fakes.aimlapi import ErrorReply, FakeAimlApi, Reply
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import Bot, make_settings, mention, running_bot
from tests.test_cli import bot_env
from tests.test_process import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The bot's logging as `run` configures it (JSON lines), written to a buffer instead of stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("INFO", "json")
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml, llm_max_retries=0), slack) as running:
        yield running


async def test_every_log_line_about_an_event_names_its_team_channel_and_thread(
    json_logs: io.StringIO, bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    # A mention mid-thread whose history Slack refuses, answered by a failing model: both are logged.
    slack.fail_next("conversations.replies", error="ratelimited", status=429)
    aiml.enqueue(ErrorReply(status=500))
    before = json_logs.tell()

    await bot.send(mention("what did we decide?", "700.2", thread_ts="700.1"))
    await bot.idle()

    lines = [json.loads(line) for line in json_logs.getvalue()[before:].splitlines()]
    assert len(lines) >= 2, lines
    for line in lines:
        assert (line.get("team"), line.get("channel"), line.get("thread")) == ("T1", "C1", "700.1"), line
    assert len(bot.replies("C1", "700.1")) == 1  # the failure was told in the thread, not only logged


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_tokens_as_the_ledger_does_and_slacks_429s_as_ratelimited(
    bot: Bot, slack: FakeSlackApi, aiml: FakeAimlApi, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aiml.enqueue(Reply(content="Counted twice, once in each place.", prompt_tokens=321))
    slack.fail_next("chat.update", error="ratelimited", status=429, retry_after=1)

    await bot.send(mention("count my tokens", "710.1"))
    await bot.idle()

    async with sessions() as session:
        [record] = await session.scalars(select(UsageRecord))
    exported = samples((await bot.http.get("/metrics")).text)
    assert record.prompt_tokens == 321 and record.completion_tokens
    assert exported[("slackbot_tokens_total", (("kind", "prompt"),))] == 321
    assert exported[("slackbot_tokens_total", (("kind", "completion"),))] == record.completion_tokens
    ratelimited = ("slackbot_slack_calls_total", (("method", "chat.update"), ("outcome", "ratelimited")))
    assert exported[ratelimited] == 1
    assert bot.answer("C1", "710.1") == "Counted twice, once in each place."


async def test_two_replicas_given_the_same_event_at_once_reply_once(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    aiml.enqueue(Reply(content="Only one of us answers."))
    aiml.enqueue(Reply(content="A second answer must not appear."))
    settings = make_settings(db_url, slack, aiml)
    async with running_bot(settings, slack) as first, running_bot(settings, slack) as second:
        event = mention("both of you got this", "720.1")
        # Slack's retry reaching the other replica, and the message twin of the mention, all at once.
        twin = {**event, "type": "message", "channel_type": "channel"}
        responses = await asyncio.gather(
            first.send(event, event_id="EvSAME"),
            second.send(event, event_id="EvSAME", retry_num=1),
            second.send(twin, event_id="EvTWIN"),
        )
        await first.idle()
        await second.idle()

        assert [response.status_code for response in responses] == [200, 200, 200]
        assert len(aiml.requests) == 1
        [reply] = first.replies("C1", "720.1")
        assert reply.markdown == "Only one of us answers."


async def test_the_system_prompt_file_reaches_the_model_as_the_system_message(
    tmp_path: Path, db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("You are Brie, a cheese expert. Answer in one sentence.\n", encoding="utf-8")
    aiml.enqueue(Reply(content="Comté."))
    settings = make_settings(db_url, slack, aiml, system_prompt_file=prompt)

    async with running_bot(settings, slack) as bot:
        await bot.send(mention("best cheese?", "730.1"))
        await bot.idle()

    [request] = aiml.requests
    system, *_ = request.json["messages"]
    assert system == {"role": "system", "content": "You are Brie, a cheese expert. Answer in one sentence."}


async def test_without_a_system_prompt_file_the_bundled_prompt_is_sent(bot: Bot, aiml: FakeAimlApi) -> None:
    aiml.enqueue(Reply(content="Hi."))

    await bot.send(mention("hello", "740.1"))
    await bot.idle()

    bundled = (ROOT / "bot" / "default_system_prompt.md").read_text(encoding="utf-8").strip()
    assert aiml.requests[0].json["messages"][0] == {"role": "system", "content": bundled}


# ---- the real process ----------------------------------------------------------------------------


async def run_process_until_healthy(
    tmp_path: Path, slack: FakeSlackApi, aiml: FakeAimlApi, *args: str, **env: str
) -> tuple[int | None, str]:
    """`python -m bot *args` until /healthz answers 200, then SIGTERM; its exit code and stderr."""
    port = free_port()
    variables = bot_env(
        tmp_path,
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET="secret",
        SLACK_API_URL=slack.api_url,
        AIMLAPI_KEY="test-key",
        AIMLAPI_BASE_URL=aiml.base_url,
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="INFO",
    )
    variables.pop("LOG_FORMAT", None)  # the default is under test unless `env` sets it
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=tmp_path,
        env=variables | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def healthy() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            for _ in range(600):
                if process.returncode is not None or await healthy():
                    break
                await asyncio.sleep(0.1)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, err.decode()


async def test_python_m_bot_without_a_command_runs_the_bot(
    tmp_path: Path, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    code, err = await run_process_until_healthy(tmp_path, slack, aiml)

    assert code == 0, err
    logged = [json.loads(line) for line in err.splitlines()]
    assert any(line["event"] == "bot running" and line["team"] == "T1" for line in logged), err


async def test_log_format_console_writes_lines_for_people_not_json(
    tmp_path: Path, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    code, err = await run_process_until_healthy(tmp_path, slack, aiml, "run", LOG_FORMAT="console")

    assert code == 0, err
    [running] = [line for line in err.splitlines() if "bot running" in line]
    assert "[info" in running and "team=T1" in running
    for line in err.splitlines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_the_prompt_in_config_is_the_one_the_bot_ships_with() -> None:
    """README: `config/system_prompt.md` is the bundled prompt's text, ready to copy and edit."""
    shipped = (ROOT / "bot" / "default_system_prompt.md").read_text(encoding="utf-8")
    assert (ROOT / "config" / "system_prompt.md").read_text(encoding="utf-8") == shipped
