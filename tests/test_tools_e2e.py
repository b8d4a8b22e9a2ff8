"""The tool loop through the running bot: signed events in, the fake AI/ML API scripted per round,
tools run for real (current_time, fetch_url against a loopback web server), rows in the database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from bot.storage.models import Message, ToolCallRecord, UsageRecord
from tests.fakes.aimlapi import FakeAimlApi, Reply, ToolCallScript
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import make_settings, mention, running_bot

PAGE = (
    "<html><head><title>t</title><script>var x = 1;</script></head>"
    "<body><h1>Otters</h1><p>Otters hold hands.</p></body></html>"
)


class PageServer:
    """A web server on loopback: /page (HTML), /slow (answers after 5 s), /hop (redirects to /page)."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/page", self._page)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/hop", self._hop)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _page(self, request: web.Request) -> web.Response:  # noqa: ARG002
        return web.Response(text=PAGE, content_type="text/html")

    async def _slow(self, request: web.Request) -> web.Response:  # noqa: ARG002
        await asyncio.sleep(5)
        return web.Response(text="too late", content_type="text/plain")

    async def _hop(self, request: web.Request) -> web.Response:  # noqa: ARG002
        raise web.HTTPFound("/page")


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    server = PageServer()
    await server.start()
    yield server
    await server.stop()


def call(name: str, arguments: dict[str, Any] | str, **extra: Any) -> ToolCallScript:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCallScript(name, text, **extra)


def tool_messages(aiml: FakeAimlApi, request: int) -> list[dict[str, Any]]:
    return [m for m in aiml.chat_requests[request].json["messages"] if m["role"] == "tool"]


async def rows(db_url: str, model: type[Any]) -> list[Any]:
    from bot.storage.db import create_engine, session_factory

    engine = create_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            return list((await session.execute(select(model).order_by(model.id))).scalars())
    finally:
        await engine.dispose()


async def ask(
    db_url: str,
    slack: FakeSlackApi,
    aiml: FakeAimlApi,
    *replies: Reply,
    ts: str = "100.000001",
    **overrides: Any,
) -> str:
    aiml.enqueue(*replies)
    async with running_bot(make_settings(db_url, slack, aiml, **overrides), slack, aiml) as bot:
        await bot.send(mention("what does the tool say?", ts))
        await bot.idle()
        return bot.answer("C1", ts)


async def test_a_two_round_tool_turn_streams_the_answer_and_sends_the_result_back(db_url, fakes):
    slack, aiml = fakes
    args = '{"tz": "Europe/Paris"}'
    answer = await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=[ToolCallScript("current_time", args, id="call_a", pieces=4)]),
        Reply(content="It is late in Paris.", credits_used=100),
    )
    assert answer == "It is late in Paris."
    first, second = aiml.chat_requests
    offered = {t["function"]["name"] for t in first.json["tools"]}
    assert offered == {"current_time", "fetch_url", "slack_read_thread", "slack_read_channel"}
    assert first.json["tool_choice"] == "auto"
    sent = second.json["messages"]
    assert sent[-2]["role"] == "assistant" and sent[-2]["content"] is None
    assert sent[-2]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "current_time", "arguments": args}}
    ]
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_a"
    assert "(Europe/Paris)" in sent[-1]["content"] and "+01:00" in sent[-1]["content"]

    usage = await rows(db_url, UsageRecord)
    assert [u.credits_used for u in usage] == [1234, 100]
    assert len({u.client_request_id for u in usage}) == 2
    [record] = await rows(db_url, ToolCallRecord)
    assert (record.tool, record.outcome, record.round) == ("current_time", "ok", 1)
    assert record.arguments_sha256 == hashlib.sha256(args.encode()).hexdigest()
    [reply] = [m for m in slack.thread("C1", "100.000001") if m.bot_id]
    assert "1,334 credits" in reply.context and "tools: current_time" in reply.context


async def test_parallel_calls_run_together_and_each_result_answers_its_call(db_url, fakes):
    slack, aiml = fakes
    calls = [
        ToolCallScript("current_time", '{"tz": "Asia/Tokyo"}', id="call_tokyo"),
        ToolCallScript("current_time", '{"tz": "America/New_York"}', id="call_ny"),
    ]
    await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=calls, interleave_calls=True),
        Reply(content="Both."),
    )
    assert aiml.chat_requests[0].json["parallel_tool_calls"] is True
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(aiml, 1)}
    assert "Asia/Tokyo" in results["call_tokyo"] and "America/New_York" in results["call_ny"]
    assert [r.outcome for r in await rows(db_url, ToolCallRecord)] == ["ok", "ok"]


async def test_a_tool_that_outlives_its_timeout_gives_the_model_a_timeout_error(db_url, fakes, pages):
    slack, aiml = fakes
    answer = await ask(
        db_url,
        slack,
        aiml,
        Reply(content="Let me look. ", tool_calls=[call("fetch_url", {"url": pages.url("/slow")})]),
        Reply(content="The page is slow."),
        tools_call_timeout=1.0,
        fetch_allow_private=True,
    )
    assert answer == "Let me look. The page is slow."
    [result] = tool_messages(aiml, 1)
    assert result["content"].startswith("Error:") and "did not answer within" in result["content"]
    [record] = await rows(db_url, ToolCallRecord)
    assert record.outcome == "timeout" and record.duration_ms >= 900
    # While it ran, the interim message showed the tool in its context block.
    shown = [json.dumps(c.params.get("blocks")) for c in slack.calls_to("chat.update")]
    assert any("fetch_url" in s and "hourglass" in s for s in shown)


async def test_past_the_round_limit_the_model_answers_without_tools(db_url, fakes):
    slack, aiml = fakes
    again = Reply(content="", tool_calls=[call("current_time", {})])
    answer = await ask(db_url, slack, aiml, again, again, Reply(content="Enough."), tools_max_rounds=2)
    assert answer == "Enough."
    assert [r.json["tool_choice"] for r in aiml.chat_requests] == ["auto", "auto", "none"]
    assert len(await rows(db_url, UsageRecord)) == 3
    assert [r.round for r in await rows(db_url, ToolCallRecord)] == [1, 2]


async def test_a_malformed_call_gets_an_error_the_model_can_read(db_url, fakes):
    slack, aiml = fakes
    broken = [
        ToolCallScript("current_time", '{"tz": "Europe/Pa', id="call_bad_json"),
        ToolCallScript("launch_rockets", "{}", id="call_unknown"),
        ToolCallScript("current_time", "[1, 2]", id="call_not_object"),
    ]
    answer = await ask(db_url, slack, aiml, Reply(content="", tool_calls=broken), Reply(content="Sorry."))
    assert answer == "Sorry."
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(aiml, 1)}
    assert "not a JSON object" in results["call_bad_json"] and "invalid JSON" in results["call_bad_json"]
    assert "no tool named 'launch_rockets'" in results["call_unknown"]
    assert "not an object" in results["call_not_object"]
    assert [r.outcome for r in await rows(db_url, ToolCallRecord)] == ["error", "error", "error"]


async def test_current_time_with_an_unknown_zone_is_an_error_result(db_url, fakes):
    slack, aiml = fakes
    await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=[call("current_time", {"tz": "Mars/Olympus"})]),
        Reply(),
    )
    [result] = tool_messages(aiml, 1)
    assert "'Mars/Olympus' is not an IANA time zone" in result["content"]
    [record] = await rows(db_url, ToolCallRecord)
    assert record.outcome == "error"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_fetch_url_refuses_a_loopback_address_unless_private_addresses_are_allowed(
    db_url, fakes, pages, host
):
    slack, aiml = fakes
    fetch = Reply(content="", tool_calls=[call("fetch_url", {"url": pages.url("/page", host)})])
    await ask(db_url, slack, aiml, fetch, Reply())
    [refused] = tool_messages(aiml, 1)
    assert "refused" in refused["content"] and "not public" in refused["content"]
    assert "Otters" not in refused["content"]

    fetch_via_redirect = Reply(content="", tool_calls=[call("fetch_url", {"url": pages.url("/hop", host)})])
    await ask(db_url, slack, aiml, fetch_via_redirect, Reply(), ts="100.000002", fetch_allow_private=True)
    [read] = tool_messages(aiml, 3)
    assert "Otters hold hands." in read["content"] and "var x" not in read["content"]


async def test_fetch_url_reads_only_http_urls(db_url, fakes):
    slack, aiml = fakes
    await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=[call("fetch_url", {"url": "file:///etc/passwd"})]),
        Reply(),
    )
    [result] = tool_messages(aiml, 1)
    assert "only absolute http and https URLs" in result["content"] and "root:" not in result["content"]


async def test_the_next_turn_sends_the_earlier_tool_calls_and_results_back(db_url, fakes):
    slack, aiml = fakes
    aiml.enqueue(
        Reply(
            content="Checking. ", tool_calls=[ToolCallScript("current_time", '{"tz": "UTC"}', id="call_1")]
        ),
        Reply(content="Noon."),
        Reply(content="Still noon."),
    )
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("time?", "100.000001"))
        await bot.idle()
        await bot.send(mention("and now?", "100.000002", thread_ts="100.000001"))
        await bot.idle()
    history = aiml.chat_requests[2].json["messages"]
    roles = [
        (m["role"], m.get("tool_call_id"), bool(m.get("tool_calls")))
        for m in history
        if m["role"] != "system"
    ]
    assert roles == [
        ("user", None, False),
        ("assistant", None, True),
        ("tool", "call_1", False),
        ("assistant", None, False),
        ("user", None, False),
    ]
    assert history[-3]["content"].endswith("(UTC)")
    assert [m["content"] for m in history if m["role"] == "assistant"] == ["Checking. ", "Noon."]
    stored = [m for m in await rows(db_url, Message) if m.role.value == "assistant"]
    assert stored[0].content == "Checking. Noon." and stored[0].tool_exchange is not None


async def test_usage_counts_the_credits_of_every_round(db_url, fakes):
    from tests.fakes.response_url import ResponseUrl

    slack, aiml = fakes
    aiml.enqueue(
        Reply(content="", tool_calls=[call("current_time", {})], credits_used=4000),
        Reply(content="Now.", credits_used=321),
    )
    receiver = ResponseUrl()
    await receiver.start()
    try:
        async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
            await bot.send(mention("time?", "100.000001"))
            await bot.idle()
            await bot.command("/usage", response_url=receiver.url)
            answer = await receiver.next_answer()
    finally:
        await receiver.stop()
    assert "4,321" in str(answer["blocks"]) + answer["text"]


async def test_tool_calls_are_counted_by_tool_and_outcome_with_made_up_tools_as_unknown(db_url, fakes):
    from tests.test_metrics import scrape

    slack, aiml = fakes
    calls = [
        call("current_time", {"tz": "UTC"}),
        call("summon_dragon", {}),
        call("current_time", {"tz": "Nowhere"}),
    ]
    aiml.enqueue(Reply(content="", tool_calls=calls), Reply())
    async with running_bot(make_settings(db_url, slack, aiml), slack, aiml) as bot:
        await bot.send(mention("go", "100.000001"))
        await bot.idle()
        samples = await scrape(bot.http)
    counted = {
        labels: value for (name, labels), value in samples.items() if name == "slackbot_tool_calls_total"
    }
    assert counted == {
        (("outcome", "ok"), ("tool", "current_time")): 1,
        (("outcome", "error"), ("tool", "current_time")): 1,
        (("outcome", "error"), ("tool", "unknown")): 1,
    }


async def test_in_native_streaming_tool_progress_is_a_task_timeline_of_the_stream(db_url, fakes, pages):
    slack, aiml = fakes
    answer = await ask(
        db_url,
        slack,
        aiml,
        Reply(content="Let me look. ", tool_calls=[call("fetch_url", {"url": pages.url("/slow")})]),
        Reply(content="It is slow."),
        slack_streaming="native",
        tools_call_timeout=1.0,
        fetch_allow_private=True,
    )
    [reply] = [m for m in slack.thread("C1", "100.000001") if m.bot_id]
    assert "Let me look. It is slow." in reply.text + answer
    states = [(t["title"], t["status"], t.get("details")) for t in reply.tasks]
    assert states[0][:2] == ("fetch_url", "in_progress")
    assert states[-1] == ("fetch_url", "error", "timeout")
    assert "tools: fetch_url" in reply.context


@pytest.mark.parametrize("mode", ["auto", "native"])
async def test_a_tool_called_before_any_text_is_named_in_the_status_while_it_runs(db_url, fakes, pages, mode):
    slack, aiml = fakes
    answer = await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=[call("fetch_url", {"url": pages.url("/slow")})]),
        Reply(content="It is slow."),
        slack_streaming=mode,
        tools_call_timeout=1.0,
        fetch_allow_private=True,
    )
    assert answer == "It is slow."
    first_text = min(c.time for c in slack.calls if c.method in ("chat.startStream", "chat.postMessage"))
    named = [
        c
        for c in slack.calls_to("assistant.threads.setStatus")
        if "fetch_url" in c.params["status"] and c.time < first_text
    ]
    assert named and named[0].params["status"] == "is running fetch_url…"
    # The stale status does not outlive the answer.
    assert slack.status("C1", "100.000001") == ""


async def test_without_the_status_the_placeholder_shows_a_tool_that_began_before_it(db_url, fakes, pages):
    slack, aiml = fakes
    slack.fail_next("assistant.threads.setStatus", error="missing_scope")
    answer = await ask(
        db_url,
        slack,
        aiml,
        Reply(content="", tool_calls=[call("fetch_url", {"url": pages.url("/slow")})], ttft=0.05),
        Reply(content="It is slow."),
        slack_streaming="auto",
        tools_call_timeout=1.5,
        fetch_allow_private=True,
    )
    assert answer == "It is slow."
    placeholder = slack.calls_to("chat.postMessage")[0]
    shown = json.dumps(placeholder.params.get("blocks"))
    assert "Thinking" in shown and "fetch_url" in shown and "hourglass" in shown
