"""What the conversation domain knows about the person asking: facts the chat surface looked up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Person:
    """The asker, as the chat surface (Slack's users.info, or the terminal) describes them.

    `team_id` is the person's own workspace: in a Slack Connect channel it differs from the
    workspace the bot is installed in, which makes the person external.
    """

    user_id: str
    team_id: str | None = None
    is_admin: bool = False  # a bot admin (ADMIN_USER_IDS) or a workspace admin or owner
    is_guest: bool = False  # a single- or multi-channel guest (is_restricted / is_ultra_restricted)
    is_external: bool = False  # from another organisation, through a Slack Connect channel
    name: str | None = None  # display name, for notes such as "Stopped by <name>"
