"""The `/glm` slash command: one router for the admin surface, and the channel settings modal.

`/glm <word> ...` runs the subcommand registered under `word` (`GlmCommand.add`); `/glm help` lists
them. Answers are ephemeral (only the caller sees them). `/glm settings` opens the modal with the
command's trigger_id, which Slack honours for 3 seconds, so the command is acknowledged first and the
look-ups before views.open are cached ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import ClientError
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.conversation.channel_settings import ChannelSettings
from bot.conversation.settings_rules import Invalid, SettingsBounds, check_form
from bot.conversation.settings_store import ChannelSettingsStore
from bot.slack.admin_access import WHO_MAY_CONFIGURE, AdminAccess
from bot.slack.app_home import AppHome
from bot.slack.audit_text import audit_lines
from bot.slack.call_errors import SLACK_CALL_ERRORS, call_error_reason
from bot.slack.home_blocks import describe_settings
from bot.slack.settings_modal import CALLBACK_ID, ModalTarget, settings_view, submitted_form
from bot.storage.db import UNAVAILABLE, error_reason

log = logging.getLogger(__name__)

COMMAND = "/glm"
AUDIT_ROWS = 10
NOT_IN_CHANNEL = "Run `/glm settings` in the channel you want to change: direct messages have no settings."
DATABASE_AWAY = "I can't reach my database right now. Please try again in a minute."
MODAL_FAILED = "Slack did not let me open the settings form. Please run `/glm settings` again."


@dataclass(frozen=True)
class GlmRequest:
    """One `/glm` invocation, for a subcommand."""

    team_id: str
    channel_id: str
    user_id: str
    args: str  # what follows the subcommand's word
    trigger_id: str
    is_admin: bool
    client: AsyncWebClient


@dataclass(frozen=True)
class Subcommand:
    usage: str  # e.g. "settings", "quota @person 50000/day"
    summary: str  # one line for `/glm help`
    run: Callable[[GlmRequest], Awaitable[str | None]]  # the ephemeral answer; None: it answered itself
    admins_only: bool = False


class GlmCommand:
    def __init__(
        self,
        access: AdminAccess,
        store: ChannelSettingsStore,
        bounds: SettingsBounds,
        home: AppHome | None = None,
        tool_names: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        """`tool_names`: the tools the bot offers now (built-ins, Slack tools, MCP servers that are up),
        asked each time the form opens or is saved."""
        self._access, self._store, self._bounds, self._home = access, store, bounds, home
        self._tool_names = tool_names
        self._subcommands: dict[str, Subcommand] = {}
        self.add("settings", Subcommand("settings", "change this channel's settings", self._settings))
        self.add("audit", Subcommand("audit", "the latest changes by admins", self._audit, admins_only=True))
        self.add("help", Subcommand("help", "this list", self._help))

    def add(self, word: str, subcommand: Subcommand) -> None:
        """Route `/glm <word> ...` to `subcommand` (and list it in `/glm help`)."""
        self._subcommands[word.lower()] = subcommand

    async def on_command(
        self, ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()  # before any look-up: Slack shows the person an error after 3 seconds
        word, _, args = str(command.get("text", "")).strip().partition(" ")
        user_id, team_id = str(command.get("user_id", "")), str(command.get("team_id", ""))
        subcommand = self._subcommands.get(word.lower() or "help")
        if subcommand is None:
            await _answer(respond, f"I don't know `/glm {word}`.\n" + self._help_text(), user_id)
            return
        is_admin = await self._access.is_admin(user_id, team_id)
        if subcommand.admins_only and not is_admin:
            await _answer(respond, f"Only the bot's admins can use `/glm {word.lower()}`.", user_id)
            return
        request = GlmRequest(
            team_id=team_id,
            channel_id=str(command.get("channel_id", "")),
            user_id=user_id,
            args=args.strip(),
            trigger_id=str(command.get("trigger_id", "")),
            is_admin=is_admin,
            client=client,
        )
        try:
            answer = await subcommand.run(request)
        except UNAVAILABLE as exc:
            log.warning(
                "/glm %s: database unavailable: %s", word, error_reason(exc), extra={"user_id": user_id}
            )
            answer = DATABASE_AWAY
        if answer:
            await _answer(respond, answer, user_id)

    async def _settings(self, request: GlmRequest) -> str | None:
        if request.channel_id.startswith("D") or not request.channel_id:
            return NOT_IN_CHANNEL
        may = request.is_admin or await self._access.may_configure(
            request.client, request.user_id, request.team_id, request.channel_id
        )
        if not may:
            return WHO_MAY_CONFIGURE + " Ask one of them to change this channel's settings."
        # The form shows what is stored now, not what this replica cached a few seconds ago.
        self._store.invalidate(request.team_id, request.channel_id)
        current = await self._store.for_channel(request.team_id, request.channel_id)
        bounds = self._bounds_for(current)
        view = settings_view(ModalTarget(request.team_id, request.channel_id), current, bounds)
        try:
            await request.client.views_open(trigger_id=request.trigger_id, view=view)
        except SLACK_CALL_ERRORS as exc:
            log.warning("/glm settings: views.open failed: %s", call_error_reason(exc))
            return MODAL_FAILED
        return None

    def _bounds_for(self, current: ChannelSettings) -> SettingsBounds:
        """The bounds with the tools a channel may choose: the bot's now, and any the channel has."""
        names = dict.fromkeys([*self._tool_names(), *sorted(current.tools or ())])
        return replace(self._bounds, tools=tuple(names))

    async def _audit(self, request: GlmRequest) -> str:
        entries = await self._store.recent_changes(request.team_id, AUDIT_ROWS)
        if not entries:
            return "No changes have been made yet."
        return "*Latest changes*\n" + "\n".join(audit_lines(entries))

    async def _help(self, _request: GlmRequest) -> str:
        return self._help_text()

    def _help_text(self) -> str:
        lines = [
            f"• `/glm {sub.usage}`: {sub.summary}" + (" (admins)" if sub.admins_only else "")
            for sub in self._subcommands.values()
        ]
        return "*What `/glm` does*\n" + "\n".join(lines)

    async def on_settings_submitted(
        self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        """Validate, store and audit; errors are shown under their fields and the modal stays open."""
        user = body.get("user")
        user_id = str(user.get("id", "")) if isinstance(user, dict) else ""
        target = ModalTarget.load(str(view.get("private_metadata", "")))
        if target is None:
            log.warning("settings modal submitted without its channel", extra={"user_id": user_id})
            await ack(response_action="errors", errors={"mode": MODAL_FAILED})
            return
        # Checked again: the form may have been open while the person stopped being an admin.
        if not await self._access.may_configure(client, user_id, target.team_id, target.channel_id):
            await ack(response_action="errors", errors={"mode": WHO_MAY_CONFIGURE})
            return
        try:
            current = await self._store.for_channel(target.team_id, target.channel_id)
        except UNAVAILABLE as exc:
            log.warning("settings not saved: database unavailable: %s", error_reason(exc))
            await ack(response_action="errors", errors={"mode": DATABASE_AWAY})
            return
        checked = check_form(submitted_form(view), self._bounds_for(current))
        if isinstance(checked, Invalid):
            await ack(response_action="errors", errors=dict(checked.errors))
            return
        try:
            await self._store.save(target.team_id, target.channel_id, checked, actor_id=user_id)
        except UNAVAILABLE as exc:
            log.warning("settings not saved: database unavailable: %s", error_reason(exc))
            await ack(response_action="errors", errors={"mode": DATABASE_AWAY})
            return
        await ack()
        log.info("channel settings changed", extra={"channel": target.channel_id, "user_id": user_id})
        await _confirm(
            client, target, user_id, f"Saved the settings for this channel: {describe_settings(checked)}."
        )
        if self._home is not None:
            await self._home.publish(client, user_id, target.team_id)


def register_glm_command(app: AsyncApp, glm: GlmCommand) -> None:
    app.command(COMMAND)(glm.on_command)
    app.view(CALLBACK_ID)(glm.on_settings_submitted)


async def _confirm(client: AsyncWebClient, target: ModalTarget, user_id: str, text: str) -> None:
    """An ephemeral note in the channel; the modal closing alone does not say that it worked."""
    try:
        await client.chat_postEphemeral(channel=target.channel_id, user=user_id, text=text)
    except SLACK_CALL_ERRORS as exc:
        log.info("settings saved, confirmation not shown: %s", call_error_reason(exc))


async def _answer(respond: AsyncRespond, text: str, user_id: str) -> None:
    try:
        await respond(text=text, response_type="ephemeral", replace_original=False)
    except (ClientError, TimeoutError, OSError) as exc:
        log.warning("/glm: answer not delivered: %s", type(exc).__name__, extra={"user_id": user_id})
