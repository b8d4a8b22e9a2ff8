"""Per-channel settings: whether and how the bot answers in one channel, and with what prompt and model."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class ChannelMode(enum.StrEnum):
    OFF = "off"  # the bot does not answer in this channel
    MENTIONS = "mentions"  # only messages that @mention the bot
    THREADS = "threads"  # mentions, and follow-ups in threads the bot takes part in (the default)


@dataclass(frozen=True)
class ChannelSettings:
    """One channel's settings; the defaults are the bot's behaviour where nobody set anything."""

    mode: ChannelMode = ChannelMode.THREADS
    system_prompt: str | None = None  # appended to the base prompt, or replacing it
    replace_prompt: bool = False
    model: str | None = None  # None: the bot's default model (AIMLAPI_MODEL)
    max_output_tokens: int | None = None  # None: the bot's default
    followups: bool = True  # answer follow-ups in threads without a new mention
    # Tools the model may call here, within TOOLS_ENABLED; None: all of those.
    tools: frozenset[str] | None = None


DEFAULT_CHANNEL_SETTINGS = ChannelSettings()


class ChannelSettingsSource(Protocol):
    """Where admission and the conversation read a channel's settings (the database, or fixed)."""

    async def for_channel(self, team_id: str, channel_id: str) -> ChannelSettings: ...
