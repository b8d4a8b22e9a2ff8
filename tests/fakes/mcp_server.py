"""A small MCP server built with the official SDK, for the tests: `python mcp_server.py stdio` or
`python mcp_server.py http PORT` (streamable HTTP on 127.0.0.1:PORT/mcp). Runs as a subprocess so a
test can start it late, kill it and start it again, as real servers come and go.

Its tools: `echo`, `add`, `whoami` (the Authorization header and FAKE_MCP_SECRET it sees), `slow`,
`picture` (an image with a caption), `lookup.issue` (a name that is not a valid function name) and
`fail` (an error the tool reports itself).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ImageContent, TextContent

server = MCPServer("fake-tools", instructions="Tools for the bot's tests.")


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return f"echo: {text}"


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Who the server thinks is calling.")
def whoami(ctx: Context) -> str:
    headers = ctx.headers or {}
    return (
        f"authorization={headers.get('authorization', '-')} secret={os.environ.get('FAKE_MCP_SECRET', '-')}"
    )


@server.tool(description="Sleep, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finally"


@server.tool(description="A picture with a caption.")
def picture() -> list[TextContent | ImageContent]:
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    return [TextContent(text="a red dot"), ImageContent(data=pixel, mime_type="image/png")]


@server.tool(name="lookup.issue", description="Look an issue up by number.")
def lookup_issue(number: int) -> str:
    return f"issue {number}: it works"


@server.tool(description="Always fails.")
def fail() -> str:
    raise ValueError("the tool broke on purpose")


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "http":
        asyncio.run(server.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2])))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
