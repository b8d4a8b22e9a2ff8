"""The tool settings from the environment: TOOLS_ENABLED as a list, clear errors naming the variable."""

from __future__ import annotations

import pytest

from bot.settings import SettingsError, load_settings


def test_tools_enabled_is_a_comma_list_and_unset_means_every_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLS_ENABLED", raising=False)
    assert load_settings(env_file=None).tools_enabled is None
    monkeypatch.setenv("TOOLS_ENABLED", " current_time, fetch_url ,")
    assert load_settings(env_file=None).tools_enabled == frozenset({"current_time", "fetch_url"})


def test_a_malformed_tool_name_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLS_ENABLED", "current_time,fetch url")
    with pytest.raises(SettingsError, match=r"^TOOLS_ENABLED: not tool names: fetch url"):
        load_settings(env_file=None)


@pytest.mark.parametrize("name", ["TOOLS_MAX_ROUNDS", "TOOLS_CALL_TIMEOUT", "FETCH_MAX_BYTES"])
def test_limits_below_their_minimum_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "0")
    with pytest.raises(SettingsError, match=rf"^{name}:"):
        load_settings(env_file=None)
