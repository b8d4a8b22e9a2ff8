"""Pure text rules for showing answers in Slack: where to split a long answer, interim display, metadata.

Slack rejects `chat.update` text over 4,000 characters, so a long answer is spread over several
messages; the split keeps Markdown intact (never inside a code fence unless one block alone is too
big, and then the fence is closed and reopened) and never cuts through a character as people see it
(a grapheme cluster: an emoji with its skin tone or ZWJ sequence, a flag, a letter with its accents).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from bot.conversation.ports import ReplySummary

MAX_MESSAGE_CHARS = 3_900  # answer characters per message; chat.update rejects `text` over 4,000
PLACEHOLDER = "_Thinking…_"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>`{3,}|~{3,})(?P<info>.*)$")
_CLOSERS = r")\]\"'”’*_」』）］｝〕〉》】〗〙〛｣"  # may follow a sentence end: brackets, quotes, emphasis
# A sentence end: `.!?…` only with the space that follows them (so "3.5" and "e.g." mid-word are not
# ends); the CJK full stops, exclamation and question marks and semicolons, in their full-width,
# half-width, small and vertical forms, also without one, since CJK text has no spaces. A full-width
# full stop before a digit is a decimal point.
_SENTENCE_END = re.compile(
    rf"[.!?…‼⁇⁈⁉][{_CLOSERS}]*[ \t]+"
    rf"|(?:[。｡！？；﹒﹔﹖﹗︒︔︕︖]|．(?![0-9０-９]))[{_CLOSERS}]*[ \t]*"
)
_SPACES = re.compile(r"[ \t]+")
_GRAPHEME = regex.compile(r"\X")  # an extended grapheme cluster (Unicode UAX #29), as `regex` implements it


@dataclass(frozen=True)
class SplitPoint:
    """Where to split `text`: the head is `text[:cut] + close`, the rest `reopen + text[cut:]`.

    `close` and `reopen` are empty unless a single code block is larger than the limit; then the
    head closes the fence and the rest reopens it with the same info string.
    """

    cut: int
    close: str = ""
    reopen: str = ""

    def head(self, text: str) -> str:
        return text[: self.cut] + self.close

    def rest(self, text: str) -> str:
        return self.reopen + text[self.cut :]


@dataclass(frozen=True)
class _Fence:
    start: int  # offset of the opening line
    body: int  # offset just after the opening line
    opener: str  # the opening line, without its line break
    indent: str
    marker: str  # "```", "~~~~", ...

    def closed_by(self, line: str) -> bool:
        stripped = line.strip()
        return (
            len(stripped) >= len(self.marker)
            and stripped == stripped[0] * len(stripped)
            and stripped[0] == self.marker[0]
        )


@dataclass(frozen=True)
class _Line:
    start: int
    stop: int  # after the line break, if any
    content: str  # without the line break
    fence: _Fence | None  # the fence open before this line (None: the line starts outside code)


def _lines(text: str) -> Iterator[_Line]:
    """Each line with the code fence it sits in; an opening or closing line belongs to its fence."""
    fence: _Fence | None = None
    start = 0
    while start < len(text):
        newline = text.find("\n", start)
        stop = len(text) if newline < 0 else newline + 1
        content = text[start:stop].rstrip("\r\n")
        yield _Line(start, stop, content, fence)
        if fence is None:
            fence = _opening(content, start, stop)
        elif fence.closed_by(content):
            fence = None
        start = stop


def _opening(line: str, start: int, stop: int) -> _Fence | None:
    match = _FENCE.match(line)
    if match is None:
        return None
    marker = match["marker"]
    if marker[0] == "`" and "`" in match["info"]:
        return None  # an inline code span such as ```x``` is not a fence
    return _Fence(start, stop, line, match["indent"], marker)


def _open_fence_at_end(text: str) -> _Fence | None:
    last: _Line | None = None
    for last in _lines(text):  # noqa: B007 - only the final state matters
        pass
    if last is None:
        return None
    if last.fence is None:
        return _opening(last.content, last.start, last.stop)
    return None if last.fence.closed_by(last.content) else last.fence


def find_split(text: str, limit: int = MAX_MESSAGE_CHARS, *, floor: int | None = None) -> SplitPoint:
    """Choose where to end a message of at most `limit` characters (see `SplitPoint`).

    Preference: a paragraph break, then a line break, then a sentence end, then a space, all outside
    code fences and at least half-way to the limit (or at `floor`: a native stream cannot take back
    what it already sent); a split inside a code block only when that block
    alone is larger than the limit; a hard cut only when nothing else fits.
    """
    if limit < 16:
        raise ValueError("limit is too small to hold a split code fence")
    if len(text) <= limit:
        return SplitPoint(len(text))
    paragraph = line_break = 0
    fence_lines: list[_Line] = []  # content lines of the current fence, up to the limit
    outside: list[_Line] = []  # prose lines (outside code, not fence lines) up to the limit
    at_limit: _Fence | None = None  # the fence around the limit, if any
    previous_blank = False
    for line in _lines(text):
        if line.start > limit:
            break
        opened = _opening(line.content, line.start, line.stop) if line.fence is None else None
        if line.start <= limit < line.stop:
            at_limit = line.fence or opened
        if line.fence is not None:
            previous_blank = False
            if not line.fence.closed_by(line.content):
                fence_lines.append(line)
            continue
        if line.start > 0 and text[: line.start].strip():
            line_break = line.start
            if previous_blank and line.content.strip():
                paragraph = line.start
        previous_blank = not line.content.strip()
        fence_lines = []
        if opened is None:
            outside.append(line)
    if at_limit is not None and _block_end(text, at_limit) - at_limit.start <= limit:
        at_limit = None  # the block fits in one message: never split it

    floor = limit // 2 if floor is None else floor
    candidates = (paragraph, line_break, *_inline_candidates(text, outside, limit))
    for cut in candidates:
        if cut >= floor:
            return SplitPoint(cut)
    forced = _split_inside(text, at_limit, fence_lines, limit) if at_limit is not None else None
    if forced is not None:
        return forced
    return SplitPoint(next((cut for cut in candidates if cut > 0), None) or _hard_cut(text, limit))


def cut_at(text: str, offset: int) -> SplitPoint:
    """A split exactly at `offset`, closing a code fence open there in the head and reopening it."""
    head = text[:offset]
    fence = _open_fence_at_end(head)
    if fence is None:
        return SplitPoint(offset)
    close = ("" if head.endswith("\n") or not head else "\n") + fence.indent + fence.marker
    return SplitPoint(offset, close, fence.opener + "\n")


def grapheme_start(text: str, offset: int) -> int:
    """The last grapheme cluster boundary at or before `offset`: a cut there splits no character."""
    if offset <= 0 or offset >= len(text):
        return max(0, min(offset, len(text)))
    # A line feed always ends a cluster (UAX #29 GB4/GB5), so segmenting from the line's start is
    # exact and keeps the work to one line.
    for cluster in _GRAPHEME.finditer(text, text.rfind("\n", 0, offset) + 1):
        if cluster.end() > offset:
            return cluster.start()
    return len(text)


def _hard_cut(text: str, limit: int) -> int:
    """Cut at the limit, moved back to the start of the character it would split.

    Only a single cluster longer than a whole message (thousands of combining marks) is cut inside,
    since Slack refuses the message otherwise.
    """
    return grapheme_start(text, limit) or limit


def _block_end(text: str, fence: _Fence) -> int:
    for line in _lines(text[fence.body :]):
        if fence.closed_by(line.content):
            return fence.body + line.stop
    return len(text)


def _inline_candidates(text: str, outside: list[_Line], limit: int) -> tuple[int, int]:
    """The last sentence end and the last space (cut after them) in prose, at or before the limit."""
    sentence = space = 0
    for line in reversed(outside):
        if sentence and space:
            break
        if line.start >= limit:
            continue
        segment = text[line.start : min(line.stop, limit)]
        if not sentence:
            sentence = _last_cut(text, line.start, _SENTENCE_END.finditer(segment))
        if not space:
            space = _last_cut(text, line.start, _SPACES.finditer(segment))
    return sentence, space


def _last_cut(text: str, offset: int, matches: Iterator[re.Match[str]]) -> int:
    """The end of the last match (as an offset into `text`) that leaves something other than blanks
    before it, moved back where it would split a character (in "。」́" the mark belongs to the quote),
    as long as the match's first character (the full stop, the space) stays before the cut."""
    for match in reversed(list(matches)):
        end = grapheme_start(text, offset + match.end())
        if end > offset + match.start() and text[:end].strip():
            return end
    return 0


def _split_inside(text: str, fence: _Fence, fence_lines: list[_Line], limit: int) -> SplitPoint | None:
    """Split a code block bigger than a message: close it in the head and reopen it in the rest."""
    close = fence.indent + fence.marker
    reopen = fence.opener + "\n"
    for line in reversed(fence_lines):
        if fence.body < line.start and line.start + len(close) <= limit:
            return SplitPoint(line.start, close, reopen)
    cut = _hard_cut(text, limit - len(close) - 1)  # one line longer than a message: cut it, mark the cut
    if cut <= fence.body:
        return None  # the opening line alone fills a message
    return SplitPoint(cut, "\n" + close, reopen)


def split_for_slack(text: str, limit: int = MAX_MESSAGE_CHARS) -> tuple[str, str]:
    """Split `text` into a head of at most `limit` characters and the rest (see `find_split`)."""
    point = find_split(text, limit)
    return point.head(text), point.rest(text)


def display(text: str, placeholder: str = PLACEHOLDER) -> str:
    """What an interim edit shows: the text with an unclosed code fence closed, or the placeholder."""
    if not text.strip():
        return placeholder
    fence = _open_fence_at_end(text)
    if fence is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + fence.indent + fence.marker


# Slack notifies a channel, a user group, everyone or a person for the control sequences `<!here>`,
# `<!channel>`, `<!everyone>`, `<!subteam^ID>` and `<@U…>` in mrkdwn `text` (docs.slack.dev, "Formatting
# text": `&`, `<` and `>` are its control characters). How the `markdown` block treats them is not
# documented, and a Markdown renderer decodes `&lt;` back into `<`, so the entity forms count too; the
# bare `@here` words are linked only with `link_names`, which the bot never sets, but may be by the
# markdown block's translation. A WORD JOINER (U+2060, invisible, no line break) after the `<`, or after
# the `@` of a bare word, breaks each of them for every parser while the text reads as written, inside
# code spans and blocks too, where escaping as `&lt;` would show the entity itself.
# Person mentions are broken as well: the person asking is notified by the thread already, and a
# model told to (by a prompt or by a pasted document) must not page anyone else, a hundred times.
WORD_JOINER = "\u2060"
_BROADCAST = re.compile(
    # `<!…>` and `<@…>`, raw or entity-encoded (HTML decodes an entity without its semicolon too)
    r"(?:<|&lt;?|&#0*60;?|&#x0*3c;?)(?=[!@])"
    r"|(?<![\w.+\-/])@(?=(?:here|channel|everyone)(?![\w-]|\.\w))",  # bare, not part of an address
    re.IGNORECASE,
)


def defuse(text: str) -> str:
    """`text` with every mention the model wrote made inert (see the note above); nothing else changes."""
    return _BROADCAST.sub(lambda m: m.group() + WORD_JOINER, text)


def defuse_blocks(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of Block Kit blocks with `defuse` applied to every `text` string, however deep."""
    return [_defuse_fields(block) for block in blocks]


def _defuse_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, str):
            out[key] = defuse(item) if key == "text" else item
        elif isinstance(item, Mapping):
            out[key] = _defuse_fields(item)
        elif isinstance(item, list):
            out[key] = [_defuse_fields(x) if isinstance(x, Mapping) else x for x in item]
        else:
            out[key] = item
    return out


def mrkdwn_escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as markup (for context blocks)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def summary_line(summary: ReplySummary) -> str | None:
    """`zhipu/glm-5 · 460 tokens (120 in, 340 out) · 1,234 credits`, with only the known parts."""
    parts = [mrkdwn_escape(summary.model)] if summary.model else []
    prompt, completion = summary.prompt_tokens, summary.completion_tokens
    if prompt is not None and completion is not None:
        parts.append(f"{prompt + completion:,} tokens ({prompt:,} in, {completion:,} out)")
    elif completion is not None:
        parts.append(f"{completion:,} tokens out")
    if summary.credits_used is not None:
        parts.append(f"{summary.credits_used:,} credits")
    return " · ".join(parts) or None
