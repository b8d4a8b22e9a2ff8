"""What a channel's settings may be (checked when an admin saves them) and what they make of a turn.

Both the settings form and the turn read the same bounds: a model outside ALLOWED_MODELS is refused
when saved, and should the list shrink later, a channel still set to a removed model gets the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.conversation.channel_settings import ChannelMode, ChannelSettings

# A channel's instructions, not a document: long enough for a team's conventions, short enough that
# the history keeps most of the context window.
MAX_PROMPT_CHARS = 4_000
# Below this an answer cannot say much more than a sentence; a typo (e.g. "10") is more likely.
MIN_OUTPUT_TOKENS = 64


@dataclass(frozen=True)
class SettingsBounds:
    """The bot's own configuration that bounds every channel's settings."""

    default_model: str  # AIMLAPI_MODEL
    models: tuple[str, ...]  # the allowed models, the default first
    max_output_tokens: int  # LLM_MAX_OUTPUT_TOKENS: the default and the ceiling
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # Tool names a channel may choose: those the bot offers now, and any the channel already has
    # (an MCP server that is down keeps its place in the channel's list).
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingsForm:
    """What an admin entered, unchecked: text as typed, None where a field was left empty."""

    mode: str | None
    system_prompt: str | None
    replace_prompt: bool
    model: str | None
    max_output_tokens: str | None
    followups: bool
    tools: tuple[str, ...] | None = None  # the names ticked; None: "all tools" was ticked


@dataclass(frozen=True)
class Invalid:
    """Why the form cannot be saved: form field name -> a message for the person."""

    errors: Mapping[str, str]


def check_form(form: SettingsForm, bounds: SettingsBounds) -> ChannelSettings | Invalid:
    """The settings the form describes, or every reason it cannot be saved."""
    errors: dict[str, str] = {}
    mode = ChannelMode.THREADS
    try:
        mode = ChannelMode(form.mode or ChannelMode.THREADS.value)
    except ValueError:
        errors["mode"] = "Choose one of: " + ", ".join(m.value for m in ChannelMode)

    prompt = (form.system_prompt or "").strip() or None
    if prompt is not None and len(prompt) > bounds.max_prompt_chars:
        errors["system_prompt"] = (
            f"At most {bounds.max_prompt_chars:,} characters (this one has {len(prompt):,})."
        )
    if form.replace_prompt and prompt is None:
        errors["system_prompt"] = "Write the prompt that replaces the bot's own, or untick “replace”."

    model = (form.model or "").strip() or None
    if model is not None and model not in bounds.models:
        errors["model"] = "Not an allowed model. Allowed: " + ", ".join(bounds.models)
    if model == bounds.default_model:
        model = None  # the default: follows AIMLAPI_MODEL if that changes

    limit: int | None = None
    raw_limit = (form.max_output_tokens or "").strip().replace(",", "").replace("_", "")
    if raw_limit:
        try:
            limit = int(raw_limit)
        except ValueError:
            errors["max_output_tokens"] = "A whole number of tokens, e.g. 2048."
        else:
            if not MIN_OUTPUT_TOKENS <= limit <= bounds.max_output_tokens:
                errors["max_output_tokens"] = (
                    f"Between {MIN_OUTPUT_TOKENS} and {bounds.max_output_tokens:,} tokens."
                )
    tools = None if form.tools is None else frozenset(form.tools)
    unknown = sorted((tools or frozenset()) - set(bounds.tools))
    if unknown:
        errors["tools"] = "Not a tool of this bot: " + ", ".join(unknown) + "."
    if errors:
        return Invalid(errors)
    return ChannelSettings(
        mode=mode,
        system_prompt=prompt,
        replace_prompt=form.replace_prompt,
        model=model,
        max_output_tokens=limit,
        followups=form.followups,
        tools=tools,
    )


@dataclass(frozen=True)
class TurnPlan:
    """What one turn sends upstream, after its channel's settings."""

    system_prompt: str
    model: str
    max_output_tokens: int


def plan_turn(channel: ChannelSettings, base_prompt: str, bounds: SettingsBounds) -> TurnPlan:
    """The channel's prompt appended to the base prompt (or replacing it), its model if still
    allowed, and its output limit within the bot's ceiling."""
    prompt = base_prompt
    if channel.system_prompt:
        prompt = (
            channel.system_prompt
            if channel.replace_prompt
            else "\n\n".join(part for part in (base_prompt, channel.system_prompt) if part)
        )
    model = channel.model if channel.model in bounds.models else bounds.default_model
    limit = bounds.max_output_tokens
    if channel.max_output_tokens is not None:
        limit = max(1, min(channel.max_output_tokens, bounds.max_output_tokens))
    return TurnPlan(prompt, model, limit)
