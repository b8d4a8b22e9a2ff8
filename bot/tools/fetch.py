"""`fetch_url(url)`: the text of a web page, or of a plain-text, JSON or PDF document.

Server-side request forgery is the risk: the model picks the URL, and the text may be steered by a
page it read. So only http(s); every hop of a redirect is checked again; and the check is on the
resolved addresses, not the name: each one must be global (no private, loopback, link-local,
shared, reserved or multicast address) unless FETCH_ALLOW_PRIVATE is set, and the connection is
made to the address that was checked (`PinnedTransport`), so a name that resolves differently a
moment later (DNS rebinding) cannot slip through. Size and time are bounded.

HTML becomes text with BeautifulSoup on the standard library's parser: well kept, pure Python, no
C parser to build, and forgiving of broken pages; readability-style extraction (trafilatura) would
pull in lxml and much more for a tool whose output the model reads anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from bs4 import BeautifulSoup
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from bot.conversation.tools import ToolContext, ToolResult, ToolSpec

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_TEXT_CHARS = 20_000  # what the model gets; a page's text is cut here with a note
_USER_AGENT = "glm-slack-bot/0.1 (fetch_url tool)"
_SKIPPED_TAGS = ("script", "style", "noscript", "template", "svg", "head")

SPEC = ToolSpec(
    name="fetch_url",
    description=(
        "Read a web page or a plain-text, JSON or PDF document from a public http(s) URL and return "
        "its text (long documents are cut)."
    ),
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "An absolute http:// or https:// URL."}},
        "required": ["url"],
    },
)


class Refused(Exception):
    """The URL may not be fetched: a reason the model can read."""


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 2_000_000
    timeout: float = 15.0
    allow_private: bool = False


def check_address(ip: str, *, allow_private: bool) -> None:
    """Raise `Refused` unless `ip` is a global unicast address (or private ones are allowed)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    if allow_private:
        return
    if not address.is_global or address.is_multicast:
        raise Refused(f"the address {address} is not public (private, loopback, link-local or reserved)")


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves the request's host, checks every address, then connects to the first checked one
    (the Host header and the TLS server name stay the name, so certificates are still verified)."""

    def __init__(self, *, allow_private: bool, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise Refused(f"only http and https URLs can be read, not {url.scheme}:")
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(f"the name {host} does not resolve ({exc.strerror})") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise Refused(f"the name {host} does not resolve")
        for address in addresses:  # every one: the connection below must not pick an unchecked one
            check_address(address, allow_private=self._allow_private)
        pinned = addresses[0].split("%", 1)[0]
        request.url = url.copy_with(host=pinned)
        request.headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class FetchUrl:
    """The tool; one shared HTTP client for every call."""

    def __init__(self, limits: FetchLimits, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._limits = limits
        self._http = httpx.AsyncClient(
            transport=transport or PinnedTransport(allow_private=limits.allow_private),
            follow_redirects=False,  # followed by hand, each hop checked by the transport again
            timeout=httpx.Timeout(limits.timeout),
            headers={
                "User-Agent": _USER_AGENT,
                "Accept": "text/html, text/plain, application/json, application/pdf;q=0.9, */*;q=0.5",
            },
        )

    @property
    def spec(self) -> ToolSpec:
        return SPEC

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:  # noqa: ARG002
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            return ToolResult("Error: give the URL to read as `url`.", ok=False, detail="no URL")
        try:
            async with asyncio.timeout(self._limits.timeout):
                final_url, content_type, body, cut = await self._get(url.strip())
            text = await asyncio.to_thread(_text_of, content_type, body, cut)  # parsing is CPU work
        except Refused as exc:
            log.info("fetch_url refused a URL: %s", exc)
            return ToolResult(f"Error: refused to read this URL: {exc}.", ok=False, detail="refused")
        except TimeoutError:
            return ToolResult(
                f"Error: the page did not load within {self._limits.timeout:g} s.",
                ok=False,
                detail="timed out",
            )
        except httpx.HTTPError as exc:
            return ToolResult(
                f"Error: could not read the URL ({type(exc).__name__}).", ok=False, detail="failed"
            )
        if len(text) > MAX_TEXT_CHARS:
            text = (
                text[:MAX_TEXT_CHARS]
                + f"\n[cut: the text goes on for {len(text) - MAX_TEXT_CHARS:,} characters]"
            )
        size = f"{len(body) // 1000:,} kB" if len(body) >= 1000 else f"{len(body)} bytes"
        return ToolResult(f"URL: {final_url}\n\n{text}", detail=f"{httpx.URL(final_url).host}, {size}")

    async def _get(self, url: str) -> tuple[str, str, bytes, bool]:
        """(final URL, content type, body up to the cap, whether the body was cut)."""
        current = _parse(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with self._http.stream("GET", current) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = _parse(str(current.join(location)))
                    continue
                if not response.is_success:
                    raise Refused(f"the server answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size, cut = 0, False
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= self._limits.max_bytes:
                        cut = True
                        break
                body = b"".join(chunks)[: self._limits.max_bytes]
                return str(current), response.headers.get("content-type", ""), body, cut
        raise Refused(f"more than {MAX_REDIRECTS} redirects")


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise Refused(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Refused("only absolute http and https URLs can be read")
    return parsed


def _text_of(content_type: str, body: bytes, cut: bool) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    charset = _charset(content_type)
    if kind == "application/pdf" or (not kind and body.startswith(b"%PDF-")):
        if cut:
            raise Refused("the PDF is larger than the size limit")
        return _pdf_text(body)
    if kind in ("text/html", "application/xhtml+xml"):
        soup = BeautifulSoup(body, "html.parser", from_encoding=charset)
        for tag in soup(_SKIPPED_TAGS):
            tag.decompose()
        lines = (line.strip() for line in soup.get_text("\n").splitlines())
        text = "\n".join(line for line in lines if line)
    elif kind.startswith("text/") or kind.endswith(("/json", "+json", "/xml", "+xml")) or not kind:
        text = body.decode(charset or "utf-8", errors="replace")
        if kind.endswith("json") and not cut:
            with contextlib.suppress(ValueError):  # the model reads broken JSON as text
                text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    else:
        raise Refused(f"cannot read documents of type {kind}")
    return text + ("\n[cut: the document is larger than the size limit]" if cut else "")


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


def _pdf_text(body: bytes) -> str:
    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise Refused(f"the PDF could not be read ({type(exc).__name__})") from None
    return "\n\n".join(f"[page {n}]\n{text.strip()}" for n, text in enumerate(pages, 1) if text.strip())
