"""The channel settings modal (Block Kit): built from a channel's settings, read back on submission.

Each input's block_id and action_id is the SettingsForm field it fills, so the domain's errors
(bot.conversation.settings_rules) map straight onto the blocks Slack shows them under.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.blocks import (
    CheckboxesElement,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    NumberInputElement,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticMultiSelectElement,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.conversation.channel_settings import ChannelMode, ChannelSettings
from bot.conversation.settings_rules import MIN_OUTPUT_TOKENS, SettingsBounds, SettingsForm

CALLBACK_ID = "glm_channel_settings"
_MODES = {
    ChannelMode.THREADS: "Mentions and thread follow-ups (default)",
    ChannelMode.MENTIONS: "Only when @mentioned",
    ChannelMode.OFF: "Off: never answer in this channel",
}
_CHECKED = "on"
ALL_TOOLS = "*"  # the option meaning every tool, including ones added later (settings.tools None)
_MAX_CHECKBOXES = 10  # Slack's limit for a checkboxes element; a multi-select holds 100


@dataclass(frozen=True)
class ModalTarget:
    """The channel a modal changes, carried through Slack in the view's private_metadata."""

    team_id: str
    channel_id: str

    def dump(self) -> str:
        return json.dumps({"team": self.team_id, "channel": self.channel_id})

    @staticmethod
    def load(metadata: str) -> ModalTarget | None:
        try:
            data = json.loads(metadata)
            return ModalTarget(str(data["team"]), str(data["channel"]))
        except (ValueError, KeyError, TypeError):
            return None


def settings_view(target: ModalTarget, current: ChannelSettings, bounds: SettingsBounds) -> View:
    mode_options = [Option(value=mode.value, text=label) for mode, label in _MODES.items()]
    # A select holds at most 100 options of at most 75 characters; the default model comes first.
    model_options = [Option(value=model, text=model[:75]) for model in bounds.models[:100]]
    current_model = next((o for o in model_options if o.value == current.model), model_options[0])
    # Stored values the bounds have since shrunk below would make Slack refuse the whole view.
    limit = current.max_output_tokens
    limit = None if limit is None else max(min(limit, bounds.max_output_tokens), MIN_OUTPUT_TOKENS)
    prompt = (current.system_prompt or "")[: bounds.max_prompt_chars] or None
    followups = Option(value=_CHECKED, text="Answer follow-ups in threads without a new mention")
    replace = Option(value=_CHECKED, text="Replace the bot's own instructions instead of adding to them")
    blocks = [
        SectionBlock(text=MarkdownTextObject(text=f"Settings for <#{target.channel_id}>")),
        InputBlock(
            block_id="mode",
            label="When the bot answers here",
            element=StaticSelectElement(
                action_id="mode",
                options=mode_options,
                initial_option=mode_options[list(_MODES).index(current.mode)],
            ),
        ),
        InputBlock(
            block_id="followups",
            label="Follow-ups",
            optional=True,
            element=CheckboxesElement(
                action_id="followups",
                options=[followups],
                initial_options=[followups] if current.followups else None,
            ),
        ),
        InputBlock(
            block_id="system_prompt",
            label="Instructions for this channel",
            optional=True,
            hint=PlainTextObject(
                text=f"Added to the bot's own instructions. At most {bounds.max_prompt_chars:,} characters."
            ),
            element=PlainTextInputElement(
                action_id="system_prompt",
                multiline=True,
                max_length=bounds.max_prompt_chars,
                initial_value=prompt,
            ),
        ),
        InputBlock(
            block_id="replace_prompt",
            label="Replace",
            optional=True,
            element=CheckboxesElement(
                action_id="replace_prompt",
                options=[replace],
                initial_options=[replace] if current.replace_prompt else None,
            ),
        ),
        InputBlock(
            block_id="model",
            label="Model",
            element=StaticSelectElement(
                action_id="model",
                options=model_options,
                initial_option=current_model,
            ),
        ),
        InputBlock(
            block_id="max_output_tokens",
            label="Longest answer (tokens)",
            optional=True,
            hint=PlainTextObject(text=f"Empty: the bot's default, {bounds.max_output_tokens:,}."),
            element=NumberInputElement(
                action_id="max_output_tokens",
                is_decimal_allowed=False,
                min_value=MIN_OUTPUT_TOKENS,
                max_value=bounds.max_output_tokens,
                initial_value=limit,
            ),
        ),
        *_tools_blocks(current, bounds),
        ContextBlock(
            elements=[MarkdownTextObject(text="Every change is logged: admins see them with `/glm audit`.")]
        ),
    ]
    return View(
        type="modal",
        callback_id=CALLBACK_ID,
        title="Channel settings",
        submit="Save",
        close="Cancel",
        private_metadata=target.dump(),
        blocks=blocks,
    )


def _tools_blocks(current: ChannelSettings, bounds: SettingsBounds) -> list[InputBlock]:
    """The tools the model may call here: "all" or a choice among the bot's tools (none: no tools)."""
    if not bounds.tools:
        return []
    every = Option(value=ALL_TOOLS, text="All tools, including ones added later")
    options = [every, *(Option(value=name, text=name[:75]) for name in bounds.tools[:99])]
    if current.tools is None:
        initial: list[Option] | None = [every]
    else:
        initial = [o for o in options[1:] if o.value in current.tools] or None
    element: CheckboxesElement | StaticMultiSelectElement
    if len(options) <= _MAX_CHECKBOXES:
        element = CheckboxesElement(action_id="tools", options=options, initial_options=initial)
    else:
        element = StaticMultiSelectElement(
            action_id="tools", placeholder="Choose tools", options=options, initial_options=initial
        )
    hint = "Within the tools the bot has switched on. Nothing ticked: no tools in this channel."
    return [
        InputBlock(
            block_id="tools", label="Tools", optional=True, hint=PlainTextObject(text=hint), element=element
        )
    ]


def submitted_form(view: Mapping[str, Any]) -> SettingsForm:
    """The form as the person left it, from a view_submission's `view.state.values`."""
    state = view.get("state")
    values = state.get("values", {}) if isinstance(state, dict) else {}

    def field(name: str) -> dict[str, Any]:
        block = values.get(name)
        element = block.get(name) if isinstance(block, dict) else None
        return element if isinstance(element, dict) else {}

    def selected(name: str) -> str | None:
        option = field(name).get("selected_option")
        return str(option["value"]) if isinstance(option, dict) and "value" in option else None

    def text(name: str) -> str | None:
        value = field(name).get("value")
        return str(value) if value is not None else None

    def checked(name: str) -> bool:
        options = field(name).get("selected_options") or []
        return any(isinstance(o, dict) and o.get("value") == _CHECKED for o in options)

    def tools() -> tuple[str, ...] | None:
        if "tools" not in values:
            return None  # the form offered no tools to choose: the channel keeps them all
        options = field("tools").get("selected_options") or []
        names = tuple(str(o["value"]) for o in options if isinstance(o, dict) and "value" in o)
        return None if ALL_TOOLS in names else names

    return SettingsForm(
        mode=selected("mode"),
        system_prompt=text("system_prompt"),
        replace_prompt=checked("replace_prompt"),
        model=selected("model"),
        max_output_tokens=text("max_output_tokens"),
        followups=checked("followups"),
        tools=tools(),
    )
