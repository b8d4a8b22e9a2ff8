"""The audit log as `/glm audit` shows it: one line per change, saying who changed what and how."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bot.conversation.settings_store import AuditEntry

_LABELS = {
    "mode": "mode",
    "model": "model",
    "max_output_tokens": "longest answer",
    "followups": "follow-ups",
    "replace_prompt": "replace the bot's instructions",
    "system_prompt": "instructions",
}
_VALUE_CHARS = 40


def audit_lines(entries: Iterable[AuditEntry]) -> list[str]:
    return [audit_line(entry) for entry in entries]


def audit_line(entry: AuditEntry) -> str:
    when = f"{entry.created_at:%Y-%m-%d %H:%M} UTC"
    target = {"channel": f"<#{entry.target_id}>", "user": f"<@{entry.target_id}>"}.get(
        entry.target_kind, "the workspace"
    )
    what = entry.action.replace("_", " ")
    changes = describe_change(entry.before, entry.after) or "no change"
    return f"• {when}: <@{entry.actor_id}> changed {what} of {target}: {changes}"


def describe_change(before: Mapping[str, object] | None, after: Mapping[str, object] | None) -> str:
    """`model default → x; instructions added`: only what differs, long texts not repeated."""
    old, new = before or {}, after or {}
    parts = []
    for key in [*new, *(k for k in old if k not in new)]:
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        label = _LABELS.get(key, key.replace("_", " "))
        if key == "system_prompt":
            parts.append(f"{label} {'added' if was is None else 'removed' if now is None else 'changed'}")
        else:
            parts.append(f"{label} {_value(was)} → {_value(now)}")
    return "; ".join(parts)


def _value(value: object) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):  # tool names
        if not value:
            return "none"
        value = ", ".join(str(item) for item in value)
    text = str(value)
    return f"`{text[:_VALUE_CHARS]}…`" if len(text) > _VALUE_CHARS else f"`{text}`"
