"""The last message of an answer looks the same whichever way it streamed (edits or Slack's native
stream): the answer text, then a context block with the metadata and notes, then the feedback buttons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.conversation.ports import ReplySummary
from bot.slack.feedback import feedback_block
from bot.slack.text import mrkdwn_escape, summary_line

END_NOTE = "End of the answer."

Block = dict[str, Any]


def summary_elements(summary: ReplySummary) -> list[str]:
    """The context line of a finished answer: its note (cut off, empty answer, ...) and metadata."""
    elements = [f"_{mrkdwn_escape(summary.note)}_"] if summary.note else []
    line = summary_line(summary)
    if line:
        elements.append(line)
    return elements


def failure_elements(note: str) -> list[str]:
    """The context line of an answer that ended early."""
    return [f":warning: _{mrkdwn_escape(note)}_"]


def ending_blocks(elements: Sequence[str], *, feedback: bool = False) -> tuple[Block, ...]:
    """What follows the answer text in its last message: the context line, then (for an answer that
    finished) the feedback buttons."""
    context = [{"type": "mrkdwn", "text": e} for e in elements]
    blocks: tuple[Block, ...] = ({"type": "context", "elements": context},) if context else ()
    return (*blocks, feedback_block()) if feedback else blocks


def answer_blocks(body: str) -> tuple[Block, ...]:
    """The answer text as Slack shows it: standard Markdown in a `markdown` block."""
    return ({"type": "markdown", "text": body},)


def final_message(body: str, ending: Sequence[Block], note: str | None) -> tuple[str, tuple[Block, ...]]:
    """(text, blocks) of the answer's last message showing `body`; a message with no answer text of
    its own (the answer ended exactly at a message boundary, or never began) shows the note."""
    if body.strip():
        return body, (*answer_blocks(body), *ending)
    blocks = tuple(ending) or (
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"_{END_NOTE}_"}]},
    )
    return note or END_NOTE, blocks
