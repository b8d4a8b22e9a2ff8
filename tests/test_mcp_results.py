"""What the model gets from an MCP tool: its name as a valid function name, and its result as text."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from bot.mcp.results import to_tool_result
from bot.mcp.toolbox import tool_name

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_a_tool_is_named_after_its_server_with_invalid_characters_replaced():
    assert tool_name("github", "search_issues") == "github__search_issues"
    assert tool_name("docs", "lookup.page v2") == "docs__lookup_page_v2"


@given(server=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", fullmatch=True), tool=st.text(min_size=1))
def test_every_tool_name_is_a_valid_function_name_whatever_the_server_calls_it(server, tool):
    assert FUNCTION_NAME.match(tool_name(server, tool))


def test_names_cut_to_64_characters_or_clashing_stay_distinct():
    long_a, long_b = "a" * 70 + "x", "a" * 70 + "y"
    assert tool_name("s", long_a) != tool_name("s", long_b)
    assert len(tool_name("s", long_a)) == 64
    first = tool_name("s", "a.b")
    second = tool_name("s", "a_b", {first})
    assert first == "s__a_b" and second != first and FUNCTION_NAME.match(second)


def test_text_resources_are_read_and_links_and_binary_ones_are_named():
    result = CallToolResult(
        content=[
            TextContent(text="summary"),
            EmbeddedResource(resource=TextResourceContents(uri="file:///a.txt", text="file body")),
            EmbeddedResource(
                resource=BlobResourceContents(uri="file:///b.bin", blob="AAAA", mime_type="application/zip")
            ),
            ResourceLink(name="spec", uri="https://example.com/spec"),
        ]
    )
    converted = to_tool_result(result)
    assert converted.ok
    assert converted.content.split("\n\n") == [
        "summary",
        "[resource file:///a.txt]\nfile body",
        "[resource file:///b.bin (application/zip, about 3 bytes): not shown]",
        "[resource link: spec <https://example.com/spec>]",
    ]
    assert converted.detail == "2 text parts, 2 not shown"


def test_structured_content_alone_is_sent_as_json_and_errors_are_not_ok():
    assert to_tool_result(CallToolResult(content=[], structured_content={"n": 3})).content == '{"n": 3}'
    failed = to_tool_result(CallToolResult(content=[TextContent(text="no such repo")], is_error=True))
    assert (failed.ok, failed.content) == (False, "no such repo")
    assert to_tool_result(CallToolResult(content=[])).content == "(the tool returned nothing)"


def test_a_long_result_is_cut_with_a_note_of_what_was_left_out():
    converted = to_tool_result(CallToolResult(content=[TextContent(text="x" * 1_000)]), limit=100)
    assert converted.content == "x" * 100 + "\n[… cut: 900 more characters]"
