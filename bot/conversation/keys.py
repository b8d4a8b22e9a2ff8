"""The names the domain gives a conversation, shared with every surface (Slack, the terminal).

They are stored as they are, so they are defined beside the tables; surfaces take them from here and
never reach into storage.
"""

from __future__ import annotations

from bot.storage.conversations import ConversationKey
from bot.storage.models import ConversationKind

__all__ = ["ConversationKey", "ConversationKind"]
