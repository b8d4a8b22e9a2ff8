"""Splitting long Markdown answers over Slack messages, and what interim edits show."""

from __future__ import annotations

import random

import pytest

from bot.conversation.ports import ReplySummary
from bot.slack.text import (
    MAX_MESSAGE_CHARS,
    PLACEHOLDER,
    SplitPoint,
    display,
    find_split,
    split_for_slack,
    summary_line,
)

WORDS = ["alpha", "beta", "gamma", "delta", "the", "a", "model", "Slack", "x" * 40, "**bold**", "`code`"]


def _prose(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = rng.choices(WORDS, k=rng.randint(1, 14))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ":", ""]))
    return " ".join(out)


def _code_block(rng: random.Random, lines: int) -> str:
    marker = rng.choice(["```", "```", "````", "~~~"])
    info = rng.choice(["", "python", "js", "bash title=x"])
    indent = rng.choice(["", "", "   "])
    body = "".join(f"{indent}line_{i} = {'v' * rng.randint(0, 60)}\n" for i in range(lines))
    return f"{indent}{marker}{info}\n{body}{indent}{marker}\n"


def _document(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        if roll < 0.45:
            parts.append(_prose(rng, rng.randint(1, 8)) + rng.choice(["\n\n", "\n", "\n\n\n"]))
        elif roll < 0.75:
            parts.append(_code_block(rng, rng.randint(1, rng.choice([5, 40, 120]))) + "\n")
        elif roll < 0.85:
            parts.append("".join(f"- {_prose(rng, 1)}\n" for _ in range(rng.randint(1, 6))) + "\n")
        elif roll < 0.95:
            parts.append("y" * rng.randint(50, 900) + "\n")  # a long word such as a URL
        else:
            parts.append(_code_block(rng, rng.randint(1, 30)).rstrip("\n")[:-3])  # left open
    return "".join(parts)


def _crossed(text: str, limit: int) -> int:
    """`limit`, lowered where needed so that the text does not fit in one message."""
    return max(16, min(limit, len(text) * 3 // 4))


def _split_fully(text: str, limit: int) -> tuple[list[str], list[SplitPoint]]:
    pieces, points = [], []
    rest = text
    while len(rest) > limit:
        point = find_split(rest, limit)
        assert point.cut > 0
        pieces.append(point.head(rest))
        points.append(point)
        rest = point.rest(rest)
    pieces.append(rest)
    return pieces, points


def _rejoin(pieces: list[str], points: list[SplitPoint]) -> str:
    """Undo the splits: drop each added fence close and the reopening line after it."""
    out = []
    for i, piece in enumerate(pieces):
        if i > 0:
            piece = piece[len(points[i - 1].reopen) :]
        if i < len(points) and points[i].close:
            piece = piece[: -len(points[i].close)]
        out.append(piece)
    return "".join(out)


def _unclosed(text: str) -> bool:
    return display(text) != text if text.strip() else False


def _fences(text: str) -> list[tuple[int, int]]:
    """(start, end) of every fenced block, by CommonMark's rule (the end is the text's if unclosed)."""
    blocks, offset, opened = [], 0, None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if opened is None:
            marker = stripped[:3]
            if marker in ("```", "~~~") and not (marker == "```" and "`" in stripped.lstrip("`")):
                width = len(stripped) - len(stripped.lstrip(marker[0]))
                opened = (offset, marker[0], width)
        elif len(stripped) >= opened[2] and stripped == opened[1] * len(stripped):
            blocks.append((opened[0], offset + len(line)))
            opened = None
        offset += len(line)
    if opened is not None:
        blocks.append((opened[0], len(text)))
    return blocks


def _block_around(text: str, cut: int) -> tuple[int, int] | None:
    return next(((start, end) for start, end in _fences(text) if start < cut < end), None)


@pytest.mark.parametrize("seed", range(300))
def test_split_pieces_fit_and_rejoin_into_the_original(seed: int) -> None:
    rng = random.Random(seed)
    text = _document(rng)
    limit = _crossed(text, rng.choice([60, 200, 700, 1500, MAX_MESSAGE_CHARS]))
    pieces, points = _split_fully(text, limit)
    assert all(len(piece) <= limit for piece in pieces)
    assert _rejoin(pieces, points) == text
    if not any(p.close for p in points):
        assert "".join(pieces) == text


@pytest.mark.parametrize("seed", range(300))
def test_a_message_never_ends_inside_a_code_block_unless_the_block_is_too_big(seed: int) -> None:
    rng = random.Random(1000 + seed)
    text = _document(rng)
    limit = _crossed(text, rng.choice([200, 700, 1500]))
    rest = text
    while len(rest) > limit:
        point = find_split(rest, limit)
        head = point.head(rest)
        if point.close:
            assert point.reopen.lstrip()[:3] in ("```", "~~~")
            assert not _unclosed(head), "a forced split closes its fence"
            # forced only when the whole block (from its opening line) does not fit in one message
            block = _block_around(rest, point.cut)
            assert block is not None
            assert block[1] - block[0] > limit
            assert rest[block[0] :].startswith(point.reopen)
        else:
            assert _block_around(rest, point.cut) is None
        rest = point.rest(rest)


def test_prose_splits_at_a_paragraph_break_in_the_second_half() -> None:
    text = ("word " * 60 + "\n\n") * 30
    head, rest = split_for_slack(text, 1000)
    assert head.endswith("\n\n")
    assert len(head) <= 1000
    assert len(head) > 500
    assert head + rest == text


def test_prose_without_paragraphs_splits_after_a_sentence() -> None:
    text = "This is one sentence. " * 100
    head, rest = split_for_slack(text, 500)
    assert head.endswith(". ")
    assert not rest.startswith(" ")
    assert head + rest == text


def test_a_code_block_that_fits_moves_whole_to_the_next_message() -> None:
    code = "```python\n" + "print('hi')\n" * 60 + "```\n"
    text = "Intro.\n\n" + code + "\nAfter."
    head, rest = split_for_slack(text, len(code) + 5)
    assert head == "Intro.\n\n"
    assert rest.startswith(code)


def test_a_code_block_bigger_than_a_message_is_closed_and_reopened_with_its_language() -> None:
    text = "Here:\n```python\n" + "".join(f"x_{i} = {i}\n" for i in range(500)) + "```\nDone.\n"
    head, rest = split_for_slack(text, 1000)
    assert len(head) <= 1000
    assert head.startswith("Here:\n```python\n")
    assert head.endswith("\n```")
    assert rest.startswith("```python\nx_")
    assert display(head) == head


def test_a_single_giant_code_line_is_cut_mid_line_and_still_closed() -> None:
    text = "```\n" + "z" * 3000 + "\n```\n"
    point = find_split(text, 1000)
    head = point.head(text)
    assert len(head) <= 1000
    assert head.endswith("\n```")
    assert point.rest(text).startswith("```\nzzz")


def test_text_within_the_limit_is_not_split() -> None:
    assert split_for_slack("short", 100) == ("short", "")


def test_display_closes_an_unclosed_fence_and_changes_nothing_else() -> None:
    assert display("See:\n```python\nx = 1") == "See:\n```python\nx = 1\n```"
    assert display("See:\n```python\nx = 1\n") == "See:\n```python\nx = 1\n```"
    assert display("~~~~\ncode") == "~~~~\ncode\n~~~~"
    closed = "a\n```\nb\n```\nc *d* `e`"
    assert display(closed) == closed
    assert display("inline ```not a fence``` here") == "inline ```not a fence``` here"


def test_display_shows_the_placeholder_for_empty_text() -> None:
    assert display("") == PLACEHOLDER
    assert display("  \n") == PLACEHOLDER


def test_every_prefix_of_a_streamed_answer_displays_with_balanced_fences() -> None:
    answer = "Intro\n\n```python\ndef f():\n    return 1\n```\n\nText `x`.\n\n```\nmore\n```\nEnd."
    for n in range(1, len(answer) + 1):
        shown = display(answer[:n])
        if shown == PLACEHOLDER:
            continue
        assert shown.startswith(answer[:n])
        fence_lines = [line for line in shown.split("\n") if line.startswith("```")]
        assert len(fence_lines) % 2 == 0, shown


def test_the_summary_line_shows_only_what_is_known() -> None:
    full = ReplySummary("zhipu/glm-5", 1200, 3400, 56789, "stop")
    assert summary_line(full) == "zhipu/glm-5 · 4,600 tokens (1,200 in, 3,400 out) · 56,789 credits"
    assert summary_line(ReplySummary(None, None, None, None, None)) is None
    assert summary_line(ReplySummary("a<b>&c", None, 7, None, None)) == "a&lt;b&gt;&amp;c · 7 tokens out"
