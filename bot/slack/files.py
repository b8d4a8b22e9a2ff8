"""Files attached to a Slack message: described from the event, downloaded with the bot token, read.

Slack serves a file's bytes at `url_private_download` to a request carrying the bot token (scope
`files:read`); without it Slack answers 200 with its sign-in page, so an HTML answer for a file that
is not HTML is a refusal, not the file. The token is only ever sent to Slack's own hosts (or the
configured API host, for GovSlack and tests). Downloads are bounded in size and time; the text is cut
to the caps of bot.files.extract, and every file the model cannot read gets a line that says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from slack_sdk.web.async_client import AsyncWebClient

from bot.files.extract import (
    Attachment,
    FileKind,
    FileText,
    TextCaps,
    UnreadableFile,
    cut_to_caps,
    describe_kind,
    extract_text,
    kind_of,
)
from bot.metrics import Metrics
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason

log = logging.getLogger(__name__)

MAX_FILES = 10  # Slack attaches at most 10 files to one message; more in an event is not Slack's
_SLACK_FILE_HOSTS = (".slack.com", ".slack-gov.com", ".slack-edge.com")
_CHUNK = 64 * 1024
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int  # FILE_MAX_BYTES: larger files are not downloaded
    timeout: float  # FILE_DOWNLOAD_TIMEOUT: seconds for one file's whole download
    caps: TextCaps  # FILE_TEXT_MAX_CHARS per file, FILES_TEXT_MAX_CHARS per message


def attachments_in(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The files of a message event (`files`, as Slack sends them with `file_share` messages)."""
    files = event.get("files")
    if not isinstance(files, list):
        return ()
    found = [attachment_of(item) for item in files[:MAX_FILES] if isinstance(item, dict)]
    return tuple(found)


def attachment_of(item: Mapping[str, Any]) -> Attachment:
    """One file object, from an event or files.info. A file shared from another organisation may come
    with its id only (`file_access: check_file_info`): then there is no url, and files.info has it."""
    file_id = str(item.get("id") or "")
    name = item.get("name") or item.get("title") or file_id or "file"
    url = item.get("url_private_download") or item.get("url_private")
    size = item.get("size")
    return Attachment(
        file_id=file_id,
        name=str(name)[:200],
        mimetype=_text(item.get("mimetype")),
        filetype=_text(item.get("filetype")),
        size=size if isinstance(size, int) and size >= 0 else None,
        url=str(url) if isinstance(url, str) else None,
        deleted=item.get("mode") == "tombstone",
    )


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


class DownloadFailed(Exception):
    """The file's bytes did not arrive; the message is the note the person's message gets."""


class SlackFiles:
    """Reads the files of one message; one instance per process."""

    def __init__(self, client: AsyncWebClient, limits: FileLimits, *, metrics: Metrics | None = None) -> None:
        self._client = client
        self._limits = limits
        self._metrics = metrics
        self._api_host = urlsplit(client.base_url).hostname

    async def read(self, attachments: Sequence[Attachment]) -> list[FileText]:
        """Every attachment as text or a note, in order, cut to the caps."""
        read = await asyncio.gather(*(self._read_one(a) for a in attachments))
        return cut_to_caps(read, self._limits.caps)

    async def _read_one(self, attachment: Attachment) -> FileText:
        read, outcome = await self._take(attachment)
        if self._metrics is not None:
            self._metrics.file_read(kind_of(attachment).value, outcome)
        return read

    async def _take(self, attachment: Attachment) -> tuple[FileText, str]:
        """The file's text or note, and what became of it (a metrics label)."""
        if attachment.deleted:
            return FileText(attachment.name, None, "it was deleted before I could read it"), "deleted"
        if attachment.url is None and attachment.file_id:
            try:
                attachment = await self._details(attachment)
            except DownloadFailed as exc:
                return FileText(attachment.name, None, str(exc)), "not_downloaded"
        kind = kind_of(attachment)
        if kind in (FileKind.IMAGE, FileKind.OTHER):
            note = f"{describe_kind(attachment)}, which I can't read"
            return FileText(attachment.name, None, note), "not_supported"
        if attachment.size is not None and attachment.size > self._limits.max_bytes:
            return FileText(attachment.name, None, self._too_large(attachment.size)), "too_large"
        try:
            data = await self._download(attachment)
            if kind is FileKind.PDF:  # pypdf is CPU-bound: off the event loop
                text = await asyncio.to_thread(extract_text, attachment, data)
            else:
                text = extract_text(attachment, data)
        except DownloadFailed as exc:
            log.info("attached file not downloaded: %s", exc, extra={"file_id": attachment.file_id})
            return FileText(attachment.name, None, str(exc)), "not_downloaded"
        except UnreadableFile as exc:
            log.info("attached file not readable: %s", exc, extra={"file_id": attachment.file_id})
            return FileText(attachment.name, None, f"could not be read: {exc}"), "unreadable"
        log.info(
            "attached file read",
            extra={"file_id": attachment.file_id, "kind": kind.value, "bytes": len(data), "chars": len(text)},
        )
        return FileText(attachment.name, text), "read"

    async def _details(self, attachment: Attachment) -> Attachment:
        """The whole file object from files.info, for a file the event only named."""
        try:
            async with asyncio.timeout(self._limits.timeout):
                response = await self._client.files_info(file=attachment.file_id, count=0)
        except SLACK_CALL_ERRORS as exc:
            log.info("files.info failed: %s", call_error_reason(exc), extra={"file_id": attachment.file_id})
            raise DownloadFailed(
                f"Slack did not share this file with me ({call_error_reason(exc)})"
            ) from None
        item = response.get("file")
        if not isinstance(item, dict):
            raise DownloadFailed("Slack did not share this file with me")
        return attachment_of(item)

    def _too_large(self, size: int) -> str:
        return f"not read: {size:,} bytes is over the {self._limits.max_bytes:,}-byte limit for a file"

    async def _download(self, attachment: Attachment) -> bytes:
        url = attachment.url
        if url is None:
            raise DownloadFailed("Slack did not share this file's contents with me")
        token = self._client.token or ""
        owned = self._client.session is None
        session = aiohttp.ClientSession() if owned else self._client.session
        assert session is not None
        try:
            async with asyncio.timeout(self._limits.timeout):
                return await self._fetch(session, attachment, url, token)
        except TimeoutError:
            raise DownloadFailed(f"the download took longer than {self._limits.timeout:g} seconds") from None
        except aiohttp.ClientError as exc:
            raise DownloadFailed(f"the download failed ({type(exc).__name__})") from None
        finally:
            if owned:
                await session.close()

    async def _fetch(
        self, session: aiohttp.ClientSession, attachment: Attachment, url: str, token: str
    ) -> bytes:
        # Redirects are followed here, not by aiohttp, so the token only ever goes to Slack's hosts.
        for _ in range(MAX_REDIRECTS + 1):
            if not self._may_send_token(url):
                raise DownloadFailed("it is not stored in Slack, so I did not download it")
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = str(response.url.join(yarl.URL(location)))
                    continue
                if response.status != 200:
                    raise DownloadFailed(f"Slack answered {response.status} when I downloaded it")
                content_type = response.headers.get("Content-Type", "").lower()
                if content_type.startswith("text/html") and not _is_html(attachment):
                    # Slack's sign-in page: the token was refused (no files:read, or no access).
                    raise DownloadFailed("Slack did not let me download it (is files:read granted?)")
                return await self._body(response)
        raise DownloadFailed("Slack redirected the download too often")

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, refused past `max_bytes` even when Slack's `size` was missing or wrong."""
        limit = self._limits.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise DownloadFailed(self._too_large(response.content_length))
        data = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise DownloadFailed(f"not read: it is over the {limit:,}-byte limit for a file")
        return bytes(data)

    def _may_send_token(self, url: str) -> bool:
        """Only Slack (or the configured API host) ever sees the bot token."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if self._api_host and host == self._api_host and parts.scheme in ("http", "https"):
            return True
        return parts.scheme == "https" and host.endswith(_SLACK_FILE_HOSTS)


def _is_html(attachment: Attachment) -> bool:
    return (attachment.filetype or "").lower() == "html" or attachment.name.lower().endswith(
        (".html", ".htm")
    )
