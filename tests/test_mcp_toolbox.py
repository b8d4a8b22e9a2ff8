"""MCP servers' tools through McpToolBox, against real MCP servers (the SDK's) on loopback and stdio."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.keys import ConversationKey
from bot.conversation.tools import ToolContext
from bot.mcp.tool import McpTool
from bot.mcp.toolbox import McpToolBox, start_mcp
from bot.metrics import Metrics
from bot.settings import Settings
from tests.fakes.mcp_process import SCRIPT, McpHttpServer, stdio_command
from tests.harness import eventually

CONTEXT = ToolContext(ConversationKey("T1", "C1", "1700000000.000100"), "U1", None, ChannelSettings())
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ENV = {"WEB_MCP_AUTHORIZATION": "Bearer s3cr3t", "BOT_FILES_SECRET": "from-the-bot-env"}
WAIT = 60.0  # a server process takes seconds to start on a busy machine


def settings_for(config: Path) -> Settings:
    return Settings(
        _env_file=None,
        mcp_config_file=config,
        mcp_connect_timeout=15,
        mcp_health_interval=0.3,
        mcp_retry_min_seconds=0.2,
        mcp_retry_max_seconds=0.5,
        mcp_call_timeout=20,
    )


def http_entry(server: McpHttpServer, name: str = "web", extra: str = "") -> str:
    return (
        f'[servers.{name}]\nurl = "{server.url}"\n'
        'headers_from_env = { Authorization = "WEB_MCP_AUTHORIZATION" }\n' + extra
    )


def stdio_entry(name: str = "local", extra: str = "") -> str:
    command, args = stdio_command()
    quoted = ", ".join(f'"{a}"' for a in args)
    return (
        f'[servers.{name}]\ncommand = "{command}"\nargs = [{quoted}]\n'
        'env_from_env = { FAKE_MCP_SECRET = "BOT_FILES_SECRET" }\n' + extra
    )


@pytest.fixture
async def http_server() -> AsyncIterator[McpHttpServer]:
    server = McpHttpServer()
    yield server
    await server.stop()


async def started(tmp_path: Path, text: str, metrics: Metrics | None = None) -> McpToolBox:
    path = tmp_path / "mcp.toml"
    path.write_text(text, encoding="utf-8")
    return await start_mcp(settings_for(path), metrics, environ=ENV)


def tools(box: McpToolBox) -> dict[str, McpTool]:
    found = {}
    for tool in box.tools_for(CONTEXT):
        assert isinstance(tool, McpTool)
        found[tool.spec.name] = tool
    return found


def gauge(metrics: Metrics, name: str, server: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"server": server})


async def test_tools_of_an_http_and_a_stdio_server_are_offered_by_server_and_return_their_text(
    tmp_path, http_server
):
    await http_server.start()
    metrics = Metrics()
    box = await started(
        tmp_path,
        http_entry(http_server, extra="[servers.web.tools.add]\napproval = true\n")
        + stdio_entry(extra='approval = true\nallow_tools = ["whoami", "echo"]\n'),
        metrics,
    )
    try:
        await eventually(lambda: all(up for _, up, _ in box.states()), WAIT)
        offered = tools(box)
        assert set(offered) == {
            *(f"web__{t}" for t in ("echo", "add", "whoami", "slow", "picture", "lookup_issue", "fail")),
            "local__whoami",
            "local__echo",
        }
        assert all(FUNCTION_NAME.match(name) for name in offered)
        assert offered["web__add"].spec.needs_approval and not offered["web__echo"].spec.needs_approval
        assert offered["local__echo"].spec.needs_approval  # the whole server asks
        assert offered["web__add"].spec.parameters["required"] == ["a", "b"]
        assert offered["web__echo"].spec.description.startswith("[web] Echo")

        echoed = await offered["web__echo"].run({"text": "hi there"}, CONTEXT)
        assert (echoed.content, echoed.ok) == ("echo: hi there", True)
        assert (await offered["web__lookup_issue"].run({"number": 7}, CONTEXT)).content == "issue 7: it works"
        # Secrets reach the servers from the environment, never from the file.
        who = await offered["web__whoami"].run({}, CONTEXT)
        assert who.content.startswith("authorization=Bearer s3cr3t ")
        local = await offered["local__whoami"].run({}, CONTEXT)
        assert local.content == "authorization=- secret=from-the-bot-env"

        picture = await offered["web__picture"].run({}, CONTEXT)
        assert picture.ok and picture.content.startswith("a red dot\n\n[image image/png")
        assert "not shown to the model" in picture.content
        failed = await offered["web__fail"].run({}, CONTEXT)
        assert not failed.ok and "fail" in failed.content

        assert gauge(metrics, "slackbot_mcp_server_up", "web") == 1.0
        assert gauge(metrics, "slackbot_mcp_server_tools", "local") == 2.0
        calls = metrics.registry.get_sample_value
        assert calls("slackbot_mcp_tool_calls_total", {"server": "web", "outcome": "ok"}) == 4.0
        assert calls("slackbot_mcp_tool_calls_total", {"server": "web", "outcome": "error"}) == 1.0
        assert calls("slackbot_mcp_tool_calls_total", {"server": "local", "outcome": "ok"}) == 1.0
    finally:
        await box.aclose()


async def test_a_server_down_at_start_is_retried_and_its_tools_appear_when_it_comes_up(
    tmp_path, http_server, caplog
):
    caplog.set_level(logging.INFO, logger="bot.mcp")
    metrics = Metrics()
    box = await started(tmp_path, http_entry(http_server), metrics)  # nothing listens yet
    try:
        assert box.tools_for(CONTEXT) == ()
        await eventually(lambda: box.links[0].failures >= 2, WAIT)  # retried, not given up
        assert gauge(metrics, "slackbot_mcp_server_up", "web") == 0.0
        assert "MCP server web is unavailable (ConnectError" in caplog.text
        await http_server.start()
        await eventually(lambda: "web__echo" in tools(box), WAIT)
        assert gauge(metrics, "slackbot_mcp_server_up", "web") == 1.0
        assert (await tools(box)["web__echo"].run({"text": "late"}, CONTEXT)).content == "echo: late"
        assert "MCP server web connected: 7 tools" in caplog.text
    finally:
        await box.aclose()


async def test_a_server_that_dies_loses_its_tools_until_it_is_back(tmp_path, http_server):
    await http_server.start()
    metrics = Metrics()
    box = await started(tmp_path, http_entry(http_server), metrics)
    try:
        await eventually(lambda: "web__echo" in tools(box), WAIT)
        held = tools(box)["web__echo"]  # a turn that listed the tools before the crash
        await http_server.stop()
        await eventually(lambda: not box.tools_for(CONTEXT), WAIT)
        assert gauge(metrics, "slackbot_mcp_server_up", "web") == 0.0
        gone = await held.run({"text": "anyone?"}, CONTEXT)
        assert not gone.ok and "not connected" in gone.content
        await http_server.start()
        await eventually(lambda: "web__echo" in tools(box), WAIT)
        assert gauge(metrics, "slackbot_mcp_server_up", "web") == 1.0
        assert box.links[0].connects == 2
        back = await tools(box)["web__echo"].run({"text": "again"}, CONTEXT)
        assert back.content == "echo: again"
        outcome = {"server": "web", "outcome": "unavailable"}
        assert metrics.registry.get_sample_value("slackbot_mcp_tool_calls_total", outcome) == 1.0
    finally:
        await box.aclose()


async def test_a_call_past_its_timeout_is_an_error_the_model_can_read_and_the_server_stays_usable(
    tmp_path, http_server
):
    await http_server.start()
    metrics = Metrics()
    box = await started(tmp_path, http_entry(http_server, extra="timeout = 1\n"), metrics)
    try:
        await eventually(lambda: "web__slow" in tools(box), WAIT)
        late = await tools(box)["web__slow"].run({"seconds": 10}, CONTEXT)
        assert not late.ok and late.content == "web__slow did not answer within 1 seconds."
        outcome = {"server": "web", "outcome": "timeout"}
        assert metrics.registry.get_sample_value("slackbot_mcp_tool_calls_total", outcome) == 1.0
        await eventually(lambda: "web__echo" in tools(box), WAIT)
        assert (await tools(box)["web__echo"].run({"text": "still here"}, CONTEXT)).ok
    finally:
        await box.aclose()


def _children_running_the_fake() -> list[tuple[int, str]]:
    """(pid, state) of this process's children that run the fake MCP server (zombies included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and (str(SCRIPT).encode() in cmdline or state == "Z"):
            found.append((int(entry.name), state))
    return found


async def test_closing_stops_the_stdio_server_and_leaves_no_process_or_zombie_behind(tmp_path):
    box = await started(tmp_path, stdio_entry())
    try:
        await eventually(lambda: "local__echo" in tools(box), WAIT)
        assert len(_children_running_the_fake()) == 1
    finally:
        await box.aclose()
    assert _children_running_the_fake() == []
    assert box.tools_for(CONTEXT) == ()


async def test_a_stdio_server_whose_command_is_missing_is_retried_without_stopping_the_others(
    tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="bot.mcp")
    box = await started(tmp_path, '[servers.ghost]\ncommand = "/nonexistent/mcp-server"\n' + stdio_entry())
    try:
        await eventually(lambda: box.links[0].failures >= 2 and "local__echo" in tools(box), WAIT)
        assert [name for name, up, _ in box.states() if up] == ["local"]
        assert "MCP server ghost is unavailable" in caplog.text
    finally:
        await box.aclose()
