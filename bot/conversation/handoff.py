"""A waiting turn written down with its place in line, so another replica can answer it.

A turn is admitted (its event acked: Slack never sends it again) before it runs. With replicas its
place row carries this record (bot.storage.turn_places) until the turn stores its reply: when the
replica holding the place dies or drains before then, another replica adopts the place and runs the
turn from the record, as if it had admitted it (bot.conversation.turns.Turns.resume). Attachments are kept as
their metadata: the adopting replica downloads them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bot.conversation.keys import ConversationKey, ConversationKind
from bot.files.extract import Attachment
from bot.storage.turn_places import BEGINS_KEY, PLACEHOLDER_KEY

if TYPE_CHECKING:  # admission writes these records: it imports this module
    from bot.conversation.admission import Arrival

VERSION = 1  # a record of another version is not adopted (its place is let go)


@dataclass(frozen=True)
class Handoff:
    """What the adopting replica needs: the message, whether its claim opened the conversation, and
    the placeholder already showing the turn (posted before its replica died), if any."""

    arrival: Arrival
    new_thread: bool
    placeholder: str | None = None


def to_record(arrival: Arrival, *, new_thread: bool) -> dict[str, object]:
    """JSON-ready: written in the claim's transaction with the place."""
    key = arrival.key
    return {
        "v": VERSION,
        "event_id": arrival.event_id,
        "team_id": key.team_id,
        "channel_id": key.channel_id,
        "thread_ts": key.thread_ts,
        "kind": arrival.kind.value,
        "user_id": arrival.user_id,
        "message_ts": arrival.message_ts,
        "text": arrival.text,
        "addressed": arrival.addressed,
        "mid_thread": arrival.mid_thread,
        "attachments": [asdict(a) for a in arrival.attachments],
        "new_thread": new_thread,
        # This code clears the record once the turn stored its reply (Place.begin_reply), so a started
        # place still holding it died before storing anything: it may be adopted. Older code never
        # cleared it; their started places are never adopted (bot.storage.turn_places._ORPHAN).
        BEGINS_KEY: True,
    }


def from_record(record: Any) -> Handoff | None:
    """None for a record this code cannot read (another version, damaged)."""
    from bot.conversation.admission import Arrival

    if not isinstance(record, dict) or record.get("v") != VERSION:
        return None
    try:
        arrival = Arrival(
            event_id=str(record["event_id"]),
            key=ConversationKey(str(record["team_id"]), str(record["channel_id"]), str(record["thread_ts"])),
            kind=ConversationKind(record["kind"]),
            user_id=str(record["user_id"]),
            message_ts=str(record["message_ts"]),
            text=str(record["text"]),
            addressed=bool(record["addressed"]),
            mid_thread=bool(record["mid_thread"]),
            attachments=tuple(Attachment(**a) for a in record.get("attachments", ())),
        )
        placeholder = record.get(PLACEHOLDER_KEY)
        return Handoff(arrival, bool(record["new_thread"]), str(placeholder) if placeholder else None)
    except (KeyError, TypeError, ValueError):
        return None
