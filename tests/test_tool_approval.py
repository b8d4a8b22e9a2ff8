"""Approval before a tool call, through the real endpoint: the question in the thread, the asker's press
(signed `block_actions` to /slack/events), a stranger's press, silence; and the MCP servers the
running bot starts from MCP_CONFIG_FILE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot.conversation.approvals import Answer, ApprovalBook, Press, PressOutcome
from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.keys import ConversationKey
from bot.conversation.tools import ToolContext, ToolSpec
from bot.mcp.config import McpConfigError
from bot.slack.approval import APPROVE, DENY, NOT_RECORDED, NOT_WAITING, SlackApprover, arguments_text
from bot.slack.text import WORD_JOINER
from bot.storage.models import ToolApprovalRow
from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.mcp_process import stdio_command
from tests.fakes.slack_api import FakeMessage, FakeSlackApi
from tests.fakes.tcp_proxy import TcpProxy
from tests.harness import Bot, eventually, make_settings, running_bot

THREAD = "1600000000.000100"
CONTEXT = ToolContext(ConversationKey("T1", "C1", THREAD), "U1", None, ChannelSettings())
SPEC = ToolSpec("github__create_issue", "Open an issue", needs_approval=True)
ARGUMENTS = {"title": "Build is red <!channel>", "body": "see ```logs``` & ask @here"}


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    async with running_bot(make_settings(db_url, slack, aiml, tool_approval_timeout=30), slack, aiml) as bot:
        yield bot


def approver(bot: Bot) -> SlackApprover:
    assert bot.runtime.approver is not None
    return bot.runtime.approver


async def asked(bot: Bot) -> tuple[asyncio.Task[bool], FakeMessage]:
    """Start an approval as the tool loop would, and return it with the question it posted."""
    task = asyncio.create_task(approver(bot).approve(SPEC, ARGUMENTS, CONTEXT))
    await eventually(lambda: bool(bot.replies("C1", THREAD)))
    return task, bot.replies("C1", THREAD)[-1]


def buttons(message: FakeMessage) -> dict[str, dict[str, Any]]:
    return {
        element["action_id"]: element
        for block in message.blocks or []
        if block["type"] == "actions"
        for element in block["elements"]
    }


def press(message: FakeMessage, action_id: str, user: str) -> dict[str, Any]:
    """The `block_actions` payload Slack sends when `user` presses a button of `message`."""
    button = buttons(message)[action_id]
    return {
        "type": "block_actions",
        "team": {"id": "T1", "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy",
        "trigger_id": "1.2.3",
        "container": {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": "C1",
            "is_ephemeral": False,
            "thread_ts": message.thread_ts,
        },
        "channel": {"id": "C1", "name": "general"},
        "message": message.as_api(),
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "tool_approval",
                "value": button["value"],
                "text": button["text"],
                "action_ts": "1700000001.000200",
            }
        ],
    }


def shown(message: FakeMessage) -> str:
    return (
        "\n".join(b["text"]["text"] for b in message.blocks or [] if b["type"] == "section")
        + "\n"
        + message.context
    )


def approvals(bot: Bot, decision: str) -> float | None:
    return bot.runtime.metrics.registry.get_sample_value(
        "slackbot_tool_approvals_total", {"decision": decision}
    )


async def test_the_asker_approves_and_the_message_shows_who_approved_without_buttons(bot: Bot) -> None:
    task, question = await asked(bot)
    assert set(buttons(question)) == {APPROVE, DENY}
    text = shown(question)
    assert "*github__create_issue*" in text and "Only <@U1> can answer" in text
    assert "30 seconds" in text
    assert not task.done()

    response = await bot.interact(press(question, APPROVE, "U1"))

    assert response.status_code == 200
    assert await asyncio.wait_for(task, 10) is True
    await eventually(lambda: not buttons(bot.replies("C1", THREAD)[-1]))
    decided = bot.replies("C1", THREAD)[-1]
    assert decided.ts == question.ts and "✅ Approved by <@U1>" in decided.context
    assert "github__create_issue" in shown(decided)  # what was approved stays readable
    assert approvals(bot, "approved") == 1.0


async def test_the_asker_denies_and_the_call_does_not_run(bot: Bot) -> None:
    task, question = await asked(bot)

    await bot.interact(press(question, DENY, "U1"))

    assert await asyncio.wait_for(task, 10) is False
    await eventually(lambda: "❌ Denied by <@U1>" in bot.replies("C1", THREAD)[-1].context)
    assert approvals(bot, "denied") == 1.0


async def test_someone_else_pressing_is_told_only_the_asker_may_answer_and_changes_nothing(bot: Bot) -> None:
    task, question = await asked(bot)

    await bot.interact(press(question, APPROVE, "U2"))

    await eventually(lambda: any(e.user == "U2" for e in bot.slack.ephemerals))
    note = next(e for e in bot.slack.ephemerals if e.user == "U2")
    assert note.text == "Only <@U1>, who asked, can approve or deny this tool call."
    assert note.channel == "C1" and note.thread_ts == THREAD
    await asyncio.sleep(0.2)
    assert not task.done() and buttons(bot.replies("C1", THREAD)[-1])

    await bot.interact(press(question, DENY, "U1"))
    assert await asyncio.wait_for(task, 10) is False


async def test_the_arguments_are_shown_escaped_with_mentions_defused_and_no_early_code_fence_end(
    bot: Bot,
) -> None:
    task, question = await asked(bot)
    arguments = question.blocks[1]["text"]["text"] if question.blocks else ""
    assert arguments.startswith("```\n{") and arguments.endswith("}\n```")
    assert arguments.count("```") == 2  # the model's fence inside cannot close the block
    assert f"&lt;{WORD_JOINER}!channel&gt;" in arguments
    assert f"@{WORD_JOINER}here" in arguments and "&amp; ask" in arguments
    await bot.interact(press(question, DENY, "U1"))
    await asyncio.wait_for(task, 10)


def test_long_arguments_are_cut_with_a_note() -> None:
    text = arguments_text({"body": "x" * 10_000}, limit=500)
    assert len(text) < 600 and "more characters)" in text


async def test_no_answer_in_time_is_a_deny_and_a_late_press_is_told_so(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    settings = make_settings(db_url, slack, aiml, tool_approval_timeout=0.5)
    async with running_bot(settings, slack, aiml) as bot:
        task, question = await asked(bot)
        late = press(question, APPROVE, "U1")  # as the person saw it, before the time ran out

        assert await asyncio.wait_for(task, 10) is False
        await eventually(lambda: not buttons(bot.replies("C1", THREAD)[-1]))
        assert "No answer within 0.5 seconds: not run" in bot.replies("C1", THREAD)[-1].context
        assert approvals(bot, "timed_out") == 1.0

        await bot.interact(late)
        await eventually(lambda: any(e.user == "U1" for e in bot.slack.ephemerals))
        assert bot.slack.ephemerals[-1].text == NOT_WAITING


async def test_a_question_that_cannot_be_posted_is_a_deny(bot: Bot) -> None:
    bot.slack.not_joined.add("C9")
    context = ToolContext(ConversationKey("T1", "C9", THREAD), "U1", None, ChannelSettings())

    assert await asyncio.wait_for(approver(bot).approve(SPEC, {}, context), 10) is False
    assert approvals(bot, "failed") == 1.0


async def test_the_running_bot_offers_the_tools_of_the_servers_in_its_config_file(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    command, args = stdio_command()
    config = tmp_path / "mcp.toml"
    quoted = ", ".join(f'"{a}"' for a in args)
    config.write_text(f'[servers.local]\ncommand = "{command}"\nargs = [{quoted}]\napproval = true\n')
    settings = make_settings(db_url, slack, aiml, mcp_config_file=config)
    async with running_bot(settings, slack, aiml) as bot:
        mcp = bot.runtime.mcp
        assert mcp is not None
        await eventually(lambda: bool(mcp.tools_for(CONTEXT)), 60)
        offered = {tool.spec.name: tool for tool in mcp.tools_for(CONTEXT)}
        assert offered["local__echo"].spec.needs_approval
        assert (await offered["local__echo"].run({"text": "hi"}, CONTEXT)).content == "echo: hi"
        metrics = (await bot.http.get("/metrics")).text
        assert 'slackbot_mcp_server_up{server="local"} 1.0' in metrics
    assert mcp.tools_for(CONTEXT) == ()  # stopped with the bot


async def test_a_broken_mcp_config_file_stops_start_up_with_one_line_naming_it(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, tmp_path: Path
) -> None:
    config = tmp_path / "mcp.toml"
    config.write_text(
        '[servers.web]\nurl = "https://x"\nheaders_from_env = { Authorization = "NOT_SET_X" }\n'
    )
    settings = make_settings(db_url, slack, aiml, mcp_config_file=config)
    with pytest.raises(McpConfigError) as caught:
        async with running_bot(settings, slack, aiml):
            pass
    assert str(caught.value) == (
        f"MCP_CONFIG_FILE: {config}: servers.web.headers_from_env.Authorization: "
        "environment variable NOT_SET_X is not set"
    )


async def test_a_press_reaching_another_replica_decides_for_the_one_that_asked(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    settings = make_settings(db_url, slack, aiml, tool_approval_timeout=30)
    async with running_bot(settings, slack) as asking, running_bot(settings, slack) as other:
        task, question = await asked(asking)

        await other.interact(press(question, APPROVE, "U1"))

        assert await asyncio.wait_for(task, 10) is True
        await eventually(lambda: "✅ Approved by <@U1>" in asking.replies("C1", THREAD)[-1].context)
        assert not [e for e in slack.ephemerals if e.user == "U1"]


async def test_an_answer_counts_once_and_an_expired_question_takes_no_answer(sessions) -> None:
    book = ApprovalBook(sessions, wait=300)
    key = ConversationKey("T1", "C1", THREAD)
    await book.open("q1", key, "U1", "github__create_issue")
    await book.open("q2", key, "U1", "github__create_issue")

    assert await book.answer("q1") is None  # pending
    assert await book.press("q1", "U2", approved=True) == PressOutcome(Press.NOT_THE_ASKER, "U1")
    assert await book.press("q1", "U1", approved=False) == PressOutcome(Press.RECORDED, "U1")
    assert await book.press("q1", "U1", approved=True) == PressOutcome(Press.NOT_WAITING)
    assert await book.expire("q1") == Answer(False, "U1")  # the press came first: it stands

    assert await book.expire("q2") is None
    assert await book.press("q2", "U1", approved=True) == PressOutcome(Press.NOT_WAITING)
    assert await book.answer("q2") == Answer(False, None)
    assert await book.press("unknown", "U1", approved=True) == PressOutcome(Press.NOT_WAITING)


async def test_a_question_left_by_a_process_that_is_gone_cannot_be_approved_later(sessions) -> None:
    book = ApprovalBook(sessions, wait=300)
    await book.open("old", ConversationKey("T1", "C1", THREAD), "U1", "github__create_issue")
    async with sessions() as session, session.begin():
        await session.execute(
            update(ToolApprovalRow).values(created_at=datetime.now(UTC) - timedelta(hours=1))
        )

    assert await book.press("old", "U1", approved=True) == PressOutcome(Press.NOT_WAITING)
    assert await book.answer("old") == Answer(False, None)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_while_the_database_is_away_a_press_is_not_lost_silently_and_the_call_does_not_run(
    db_url: str, proxy: TcpProxy, slack: FakeSlackApi, aiml: FakeAimlApi
) -> None:
    settings = make_settings(proxy.url_for(db_url), slack, aiml, tool_approval_timeout=2)
    async with running_bot(settings, slack, aiml) as bot:
        task, question = await asked(bot)
        proxy.cut()

        await bot.interact(press(question, APPROVE, "U1"))

        await eventually(lambda: any(e.user == "U1" for e in bot.slack.ephemerals))
        assert bot.slack.ephemerals[-1].text == NOT_RECORDED
        assert await asyncio.wait_for(task, 30) is False  # no recorded yes: it does not run
        proxy.restore()
