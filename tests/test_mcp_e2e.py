"""An MCP tool that needs approval, used by the model in a real turn: mention → tool call → question in
the thread → the asker's press → the MCP server runs it (or not) → the answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.slack.approval import APPROVE, DENY
from tests.fakes.aimlapi import FakeAimlApi, Reply, ToolCallScript
from tests.fakes.mcp_process import stdio_command
from tests.fakes.slack_api import FakeSlackApi
from tests.harness import eventually, make_settings, mention, running_bot
from tests.test_tool_approval import CONTEXT, buttons, press


@pytest.mark.parametrize(("button", "runs"), [(APPROVE, True), (DENY, False)])
async def test_an_mcp_tool_needing_approval_runs_only_after_the_asker_approves(
    db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi, tmp_path: Path, button: str, runs: bool
) -> None:
    command, args = stdio_command()
    config = tmp_path / "mcp.toml"
    quoted = ", ".join(f'"{a}"' for a in args)
    config.write_text(
        f'[servers.local]\ncommand = "{command}"\nargs = [{quoted}]\n'
        "[servers.local.tools.echo]\napproval = true\n"
    )
    aiml.enqueue(
        Reply(content="", tool_calls=[ToolCallScript("local__echo", '{"text": "ship it"}', id="c1")]),
        Reply(content="Done."),
    )
    settings = make_settings(db_url, slack, aiml, mcp_config_file=config, tool_approval_timeout=30)
    async with running_bot(settings, slack, aiml) as bot:
        mcp = bot.runtime.mcp
        assert mcp is not None
        await eventually(lambda: bool(mcp.tools_for(CONTEXT)), 60)

        await bot.send(mention("echo it", "100.000001", user="U1"))
        # The question is the message with Approve (an answer may carry other buttons, e.g. feedback).
        await eventually(lambda: any(APPROVE in buttons(m) for m in bot.replies("C1", "100.000001")), 30)
        question = next(m for m in bot.replies("C1", "100.000001") if APPROVE in buttons(m))
        assert question.blocks and "local__echo" in question.blocks[0]["text"]["text"]
        await bot.interact(press(question, button, "U1"))
        await bot.idle(timeout=60)

        tool_messages = [m for m in aiml.chat_requests[1].json["messages"] if m["role"] == "tool"]
        assert len(tool_messages) == 1
        assert ("echo: ship it" in tool_messages[0]["content"]) is runs
        assert bot.answer("C1", "100.000001").endswith("Done.")
