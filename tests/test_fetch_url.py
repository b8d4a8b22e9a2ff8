"""fetch_url on its own: address checks, the pinned connection, documents it reads, its limits."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS
from bot.conversation.keys import ConversationKey
from bot.conversation.tools import ToolContext
from bot.tools.clock import CurrentTime
from bot.tools.fetch import FetchLimits, FetchUrl, PinnedTransport, Refused, check_address

CONTEXT = ToolContext(ConversationKey("T1", "C1", "1.0"), "U1", None, DEFAULT_CHANNEL_SETTINGS)


def pdf_with(text: str) -> bytes:
    """A one-page PDF showing `text` (built by hand: offsets in the xref table must be exact)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def pdf(request: web.Request) -> web.Response:  # noqa: ARG001
        return web.Response(body=pdf_with("Quarterly report"), content_type="application/pdf")

    async def data(request: web.Request) -> web.Response:  # noqa: ARG001
        return web.json_response({"answer": 42})

    async def big(request: web.Request) -> web.Response:  # noqa: ARG001
        return web.Response(text="z" * 50_000, content_type="text/plain")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', '0')) + 1}")

    async def image(request: web.Request) -> web.Response:  # noqa: ARG001
        return web.Response(body=b"\x89PNG....", content_type="image/png")

    app = web.Application()
    for path, handler in (
        ("/r.pdf", pdf),
        ("/d.json", data),
        ("/big", big),
        ("/loop", loop),
        ("/i.png", image),
    ):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    await runner.cleanup()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_non_global_addresses_are_refused(address):
    with pytest.raises(Refused):
        check_address(address, allow_private=False)
    check_address(address, allow_private=True)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:84e5"])
def test_public_addresses_pass(address):
    check_address(address, allow_private=False)


async def test_the_connection_goes_to_the_checked_address_with_the_name_as_host():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    transport = PinnedTransport(allow_private=True, inner=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://localhost:8123/x")
    [request] = seen
    assert request.url.host in ("127.0.0.1", "::1") and request.url.port == 8123
    assert request.headers["Host"] == "localhost:8123"


async def test_a_pdf_and_json_are_read_as_text(site):
    fetch = FetchUrl(FetchLimits(allow_private=True))
    try:
        pdf = await fetch.run({"url": f"{site}/r.pdf"}, CONTEXT)
        data = await fetch.run({"url": f"{site}/d.json"}, CONTEXT)
    finally:
        await fetch.aclose()
    assert pdf.ok and "Quarterly report" in pdf.content and "[page 1]" in pdf.content
    assert data.ok and json.loads(data.content.split("\n\n", 1)[1]) == {"answer": 42}


async def test_size_redirects_and_types_are_bounded(site):
    fetch = FetchUrl(FetchLimits(max_bytes=10_000, allow_private=True))
    try:
        big = await fetch.run({"url": f"{site}/big"}, CONTEXT)
        loop = await fetch.run({"url": f"{site}/loop"}, CONTEXT)
        image = await fetch.run({"url": f"{site}/i.png"}, CONTEXT)
        missing = await fetch.run({}, CONTEXT)
    finally:
        await fetch.aclose()
    assert big.ok and "z" * 10_000 in big.content and "z" * 10_001 not in big.content
    assert "larger than the size limit" in big.content
    assert not loop.ok and "more than 5 redirects" in loop.content
    assert not image.ok and "image/png" in image.content
    assert not missing.ok


async def test_current_time_answers_in_the_zone_asked():
    result = await CurrentTime().run({"tz": "Asia/Kolkata"}, CONTEXT)
    assert result.ok and "+05:30 (Asia/Kolkata)" in result.content
    assert not (await CurrentTime().run({"tz": "../etc/passwd"}, CONTEXT)).ok
