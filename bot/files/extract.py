"""Text from the bytes of an attached file, and the block of text the model reads with the message.

The chat surface downloads (Slack's `url_private_download`); this module only decides what a file is
(text, Markdown, code, CSV, JSON, PDF, or something the bot cannot read), turns its bytes into text
and cuts that text to the caps, saying what was cut. Nothing is silently dropped: a file the bot
cannot read, could not download or had to cut gets one line that says so.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

# PDFs stop being read after this many pages: a 2,000-page manual would otherwise keep a worker busy
# for seconds only for the text to be cut at the per-file cap anyway.
PDF_MAX_PAGES = 200


class FileKind(Enum):
    TEXT = "text"
    PDF = "pdf"
    IMAGE = "image"
    OTHER = "other"


@dataclass(frozen=True)
class Attachment:
    """A file attached to a person's message, as the chat surface described it."""

    file_id: str
    name: str
    mimetype: str | None = None
    filetype: str | None = None  # Slack's short type: "pdf", "csv", "python", "markdown", ...
    size: int | None = None  # bytes, when the surface says
    url: str | None = None  # where the surface downloads it from (None: ask the surface for details)
    deleted: bool = False  # removed before the bot read it: nothing to read


@dataclass(frozen=True)
class FileText:
    """What the model reads of one file: its text (maybe cut), or only a note."""

    name: str
    text: str | None  # None: nothing could be read; `note` says why
    note: str | None = None  # "cut at 20,000 of 53,112 characters", "images can't be read", ...


# Slack's `filetype` values (and extensions) of files that are text to read as they are.
_TEXT_TYPES = frozenset(
    {
        "text", "markdown", "md", "csv", "tsv", "json", "yaml", "yml", "xml", "html", "css", "javascript",
        "js", "typescript", "ts", "python", "py", "go", "rust", "rs", "java", "kotlin", "c", "cpp", "h",
        "csharp", "cs", "ruby", "rb", "php", "shell", "sh", "bash", "sql", "diff", "patch", "toml", "ini",
        "log", "swift", "scala", "perl", "r", "lua", "dockerfile", "makefile", "tex", "rst", "txt",
        "jsx", "tsx", "vue", "svelte", "groovy", "haskell", "clojure", "elixir", "erlang", "dart",
        "powershell", "matlab", "ocaml", "fsharp", "vb", "apex", "post",
    }
)  # fmt: skip
_TEXT_MIMETYPES = frozenset(
    {"application/json", "application/xml", "application/x-yaml", "application/yaml", "application/sql",
     "application/javascript", "application/x-sh", "application/toml", "application/x-ndjson"}
)  # fmt: skip


def kind_of(attachment: Attachment) -> FileKind:
    """What the file is, from its type, mimetype or name, most specific first."""
    filetype = (attachment.filetype or "").lower()
    mimetype = (attachment.mimetype or "").lower().split(";", 1)[0].strip()
    suffix = PurePosixPath(attachment.name).suffix.lower().lstrip(".")
    if filetype == "pdf" or mimetype == "application/pdf" or suffix == "pdf":
        return FileKind.PDF
    if mimetype.startswith("image/") or filetype in {"png", "jpg", "jpeg", "gif", "webp", "heic", "bmp"}:
        return FileKind.IMAGE
    if filetype in _TEXT_TYPES or mimetype.startswith("text/") or mimetype in _TEXT_MIMETYPES:
        return FileKind.TEXT
    if suffix in _TEXT_TYPES:
        return FileKind.TEXT
    return FileKind.OTHER


def describe_kind(attachment: Attachment) -> str:
    """A few words for the note on a file the bot cannot read ("an image", "a docx file")."""
    kind = kind_of(attachment)
    if kind is FileKind.IMAGE:
        return "an image"
    label = attachment.filetype or PurePosixPath(attachment.name).suffix.lstrip(".") or "this kind of"
    return f"a {label} file"


class UnreadableFile(Exception):
    """The bytes are not what the file claims to be (a broken PDF, binary data named .txt)."""


def extract_text(attachment: Attachment, data: bytes) -> str:
    """The text of a readable file's bytes; raises UnreadableFile when there is none to be had.

    Runs in a worker thread for PDFs (`asyncio.to_thread`): pypdf is pure Python and CPU-bound.
    """
    kind = kind_of(attachment)
    if kind is FileKind.PDF:
        return _pdf_text(data)
    if kind is not FileKind.TEXT:
        raise UnreadableFile(describe_kind(attachment))
    return _decode(data)


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if b"\x00" in data[:8192]:
        raise UnreadableFile("it holds binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Not UTF-8: most such files people share are Windows-1252 exports (a CSV from Excel).
        return data.decode("cp1252", errors="replace")


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader  # imported here: only turns with a PDF pay for it
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("the PDF is password-protected")
        pages: list[str] = []
        for number, page in enumerate(reader.pages, start=1):
            if number > PDF_MAX_PAGES:
                pages.append(f"[pages after {PDF_MAX_PAGES} not read]")
                break
            pages.append(page.extract_text() or "")
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AssertionError, OSError) as exc:
        raise UnreadableFile(f"the PDF could not be read ({type(exc).__name__})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise UnreadableFile("the PDF has no text layer (a scan?)")
    return text


@dataclass(frozen=True)
class TextCaps:
    per_file: int  # characters of one file's text
    per_turn: int  # characters of all files' text of one message


def cut_to_caps(files: Sequence[FileText], caps: TextCaps) -> list[FileText]:
    """Each file's text cut to `per_file`, then all of them to `per_turn` in order, each cut noted."""
    left = caps.per_turn
    out: list[FileText] = []
    for item in files:
        if item.text is None:
            out.append(item)
            continue
        allowed = min(caps.per_file, left)
        total = len(item.text)
        if total <= allowed:
            out.append(item)
            left -= total
            continue
        reason = "the per-file limit" if allowed == caps.per_file else "the limit for all files of a message"
        if allowed <= 0:
            note = f"not read: {reason} of {caps.per_turn:,} characters was reached"
            out.append(FileText(item.name, None, _joined(item.note, note)))
            continue
        note = f"cut after {allowed:,} of {total:,} characters ({reason})"
        out.append(FileText(item.name, item.text[:allowed], _joined(item.note, note)))
        left -= allowed
    return out


def _joined(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


# What wraps a file's text in the message: the model tells the person's words from the file's, and
# a file cannot close its own block early to pass text off as the person's.
_OPEN, _CLOSE = "<attached_file", "</attached_file>"


def attachments_block(files: Sequence[FileText]) -> str:
    """The files as the model reads them after the person's text; empty when there are none."""
    parts: list[str] = []
    for item in files:
        name = re.sub(r'[\s"<>]+', " ", item.name).strip() or "file"
        if item.text is None:
            parts.append(f"[Attached file “{name}”: {item.note or 'not read'}]")
            continue
        head = f'{_OPEN} name="{name}"' + (f' note="{_defuse(item.note)}"' if item.note else "") + ">"
        parts.append(f"{head}\n{_defuse(item.text)}\n{_CLOSE}")
    return "\n\n".join(parts)


def _defuse(text: str) -> str:
    """The file's own copies of our delimiters, made harmless (a zero-width space breaks the tag)."""
    return text.replace(_CLOSE, "</\u200battached_file>").replace(_OPEN, "<\u200battached_file")


def with_attachments(text: str, files: Sequence[FileText]) -> str:
    block = attachments_block(files)
    if not block:
        return text
    return f"{text}\n\n{block}" if text.strip() else block
