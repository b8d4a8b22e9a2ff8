"""Access: who may use the bot where. An admission stage (bot.conversation.admission).

Rules, first match refuses: the channel's mode is off; a DM while DMs are disabled; a blocked
channel, or one missing from a non-empty allow list (DMs are governed by DMS_ENABLED alone); a
blocked person, or one missing from a non-empty allow list; then, unless allowed, people from
another organisation (Slack Connect) and guests. Blocking wins over allowing. The terminal's
operator is never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.conversation.admission import Candidate, Refused
from bot.conversation.channel_settings import ChannelMode
from bot.conversation.keys import ConversationKind


@dataclass(frozen=True)
class AccessRules:
    allowed_channels: frozenset[str] = frozenset()  # empty: every channel
    blocked_channels: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()  # empty: everyone
    blocked_users: frozenset[str] = frozenset()
    allow_guests: bool = False
    allow_external: bool = False
    dms_enabled: bool = True

    @property
    def checks_people(self) -> bool:
        """Whether a person's account (guest, organisation) matters under these rules."""
        return not (self.allow_guests and self.allow_external)


# What the person reads, by refusal reason; each is followed by who to ask, except a passing failure.
_WHY = {
    "channel_off": "I'm switched off in this channel.",
    "dms_disabled": "I don't answer direct messages here.",
    "channel_blocked": "I'm not available in this channel.",
    "channel_not_allowed": "I'm not available in this channel.",
    "user_blocked": "You don't have access to me.",
    "user_not_allowed": "You don't have access to me.",
    "guest": "Guest accounts don't have access to me.",
    "external": "I only answer people of the workspace that installed me.",
}
NOTE_UNKNOWN_PERSON = (
    "I couldn't check your account just now, so I can't answer. Please try again in a minute."
)


class Access:
    """Refuses those the rules keep out, with a short note that says who to ask."""

    def __init__(self, rules: AccessRules, *, contact: str) -> None:
        """`contact`: who to ask for access, as the surface writes it (Slack: the admins' mentions)."""
        self._rules = rules
        self._contact = contact

    @property
    def needs_person(self) -> bool:
        return self._rules.checks_people

    async def check(self, candidate: Candidate) -> Refused | None:
        reason = self._reason(candidate)
        if reason is None:
            return None
        if reason == "person_unknown":
            return Refused(reason, notice=NOTE_UNKNOWN_PERSON)
        return Refused(reason, notice=f"Sorry, {_WHY[reason]} To get access, ask {self._contact}.")

    def _reason(self, candidate: Candidate) -> str | None:
        rules, arrival = self._rules, candidate.arrival
        if arrival.kind is ConversationKind.TERMINAL:
            return None
        channel, user = arrival.key.channel_id, arrival.user_id
        if candidate.channel.mode is ChannelMode.OFF:
            return "channel_off"
        if arrival.kind is ConversationKind.DM:
            if not rules.dms_enabled:
                return "dms_disabled"
        elif channel in rules.blocked_channels:
            return "channel_blocked"
        elif rules.allowed_channels and channel not in rules.allowed_channels:
            return "channel_not_allowed"
        if user in rules.blocked_users:
            return "user_blocked"
        if rules.allowed_users and user not in rules.allowed_users:
            return "user_not_allowed"
        person = candidate.person
        if person is None:
            # users.info could not say who this is (Slack down, rate limited). Where guests or other
            # organisations are kept out, not knowing means not answering (fail closed): a guest must
            # not get in through an outage. Where both are let in, nothing depends on the account.
            return "person_unknown" if rules.checks_people else None
        if person.is_external and not rules.allow_external:
            return "external"
        if person.is_guest and not rules.allow_guests:
            return "guest"
        return None
