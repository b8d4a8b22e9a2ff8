"""Channel settings: stored and audited, cached with a TTL, bounded when saved and at each turn."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation.channel_settings import DEFAULT_CHANNEL_SETTINGS, ChannelMode, ChannelSettings
from bot.conversation.settings_rules import Invalid, SettingsBounds, SettingsForm, check_form, plan_turn
from bot.conversation.settings_store import ChannelSettingsStore
from bot.settings import SettingsError, load_settings
from bot.storage.db import UNAVAILABLE, create_engine, session_factory
from bot.storage.migrate import run_alembic, upgrade_head
from bot.storage.models import AdminAudit, ChannelSettingsRow
from tests.fakes.tcp_proxy import TcpProxy

BOUNDS = SettingsBounds("zhipu/glm-5", ("zhipu/glm-5", "openai/gpt-4o"), max_output_tokens=8192)
FRENCH = ChannelSettings(system_prompt="Answer in French.", model="openai/gpt-4o", max_output_tokens=1024)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_channel_nobody_configured_has_the_defaults(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = ChannelSettingsStore(sessions)

    assert await store.for_channel("T1", "C1") == DEFAULT_CHANNEL_SETTINGS


async def test_a_save_is_seen_at_once_here_and_within_the_ttl_by_another_replica(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    here, replica = (
        ChannelSettingsStore(sessions, ttl=5, clock=clock),
        ChannelSettingsStore(sessions, ttl=5, clock=clock),
    )
    await here.for_channel("T1", "C1")
    assert await replica.for_channel("T1", "C1") == DEFAULT_CHANNEL_SETTINGS

    await here.save("T1", "C1", FRENCH, actor_id="UADMIN")

    assert await here.for_channel("T1", "C1") == FRENCH
    assert await replica.for_channel("T1", "C1") == DEFAULT_CHANNEL_SETTINGS  # cached, still fresh
    clock.now += 5.01
    assert await replica.for_channel("T1", "C1") == FRENCH


async def test_every_save_is_audited_with_what_it_replaced(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = ChannelSettingsStore(sessions)
    quiet = ChannelSettings(mode=ChannelMode.MENTIONS, followups=False)

    assert await store.save("T1", "C1", FRENCH, actor_id="U1") is None
    assert await store.save("T1", "C1", quiet, actor_id="U2") == FRENCH

    changes = await store.recent_changes("T1")
    assert [(c.actor_id, c.target_id) for c in changes] == [("U2", "C1"), ("U1", "C1")]
    assert changes[0].before is not None and changes[0].before["model"] == "openai/gpt-4o"
    assert changes[0].after is not None and changes[0].after["mode"] == "mentions"
    assert changes[1].before is not None and changes[1].before["mode"] == "threads"  # the defaults
    assert await store.recent_changes("T2") == []
    assert await store.configured_channels("T1") == [("C1", quiet)]


async def test_two_first_saves_at_once_leave_one_row_and_two_audit_entries(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    stores = [ChannelSettingsStore(sessions), ChannelSettingsStore(sessions)]
    other = ChannelSettings(model="openai/gpt-4o")

    await asyncio.gather(
        stores[0].save("T1", "C1", FRENCH, actor_id="U1"), stores[1].save("T1", "C1", other, actor_id="U2")
    )

    async with sessions() as session:
        rows = list(await session.scalars(select(ChannelSettingsRow)))
        audit = list(await session.scalars(select(AdminAudit).order_by(AdminAudit.id)))
    assert len(rows) == 1 and len(audit) == 2
    # The later change's `before` is the earlier one's `after`: nothing is lost from the log.
    assert audit[1].before == audit[0].after
    assert await ChannelSettingsStore(sessions).for_channel("T1", "C1") in (FRENCH, other)


def form(**changes: object) -> SettingsForm:
    values: dict[str, object] = {
        "mode": "threads",
        "system_prompt": None,
        "replace_prompt": False,
        "model": "zhipu/glm-5",
        "max_output_tokens": None,
        "followups": True,
    }
    values.update(changes)
    return SettingsForm(**values)  # type: ignore[arg-type]


def test_an_untouched_form_means_the_defaults_and_follows_the_default_model() -> None:
    assert check_form(form(), BOUNDS) == DEFAULT_CHANNEL_SETTINGS


def test_a_valid_form_becomes_settings_with_the_prompt_trimmed() -> None:
    checked = check_form(
        form(mode="mentions", system_prompt="  Be terse. ", model="openai/gpt-4o", max_output_tokens="2,048"),
        BOUNDS,
    )
    assert checked == ChannelSettings(
        mode=ChannelMode.MENTIONS, system_prompt="Be terse.", model="openai/gpt-4o", max_output_tokens=2048
    )


def test_every_problem_of_a_form_is_reported_at_once() -> None:
    checked = check_form(
        form(mode="loud", model="x/y", max_output_tokens="9", system_prompt="p" * 4001), BOUNDS
    )
    assert isinstance(checked, Invalid)
    assert set(checked.errors) == {"mode", "model", "max_output_tokens", "system_prompt"}


def test_a_turn_appends_the_channel_prompt_or_replaces_the_base_prompt() -> None:
    appended = plan_turn(ChannelSettings(system_prompt="Be terse."), "Base.", BOUNDS)
    replaced = plan_turn(ChannelSettings(system_prompt="Be terse.", replace_prompt=True), "Base.", BOUNDS)

    assert appended.system_prompt == "Base.\n\nBe terse."
    assert replaced.system_prompt == "Be terse."


def test_a_model_no_longer_allowed_falls_back_to_the_default_and_limits_stay_under_the_ceiling() -> None:
    plan = plan_turn(ChannelSettings(model="gone/model", max_output_tokens=100_000), "Base.", BOUNDS)

    assert plan.model == "zhipu/glm-5"
    assert plan.max_output_tokens == 8192


async def test_the_settings_migration_downgrades_and_upgrades_again(empty_db_url: str) -> None:
    await upgrade_head(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        await run_alembic(empty_db_url, lambda config: command.downgrade(config, "0002"))
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert not {"channel_settings", "admin_audit"} & tables
        assert "usage_records" in tables

        await upgrade_head(empty_db_url)
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert {"channel_settings", "admin_audit"} <= tables
    finally:
        await engine.dispose()


@pytest.mark.parametrize("mode", list(ChannelMode))
async def test_each_mode_is_stored_and_read_back(
    sessions: async_sessionmaker[AsyncSession], mode: ChannelMode
) -> None:
    settings = ChannelSettings(mode=mode)
    await ChannelSettingsStore(sessions).save("T1", "C9", settings, actor_id="U1")

    assert await ChannelSettingsStore(sessions).for_channel("T1", "C9") == settings


def test_allowed_models_are_read_comma_separated_with_the_default_model_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_MODELS", " openai/gpt-4o, zhipu/glm-4.5 ,openai/gpt-4o")
    monkeypatch.setenv("AIMLAPI_MODEL", "zhipu/glm-5")

    assert load_settings(env_file=None).models_allowed == ("zhipu/glm-5", "openai/gpt-4o", "zhipu/glm-4.5")


def test_without_allowed_models_only_the_default_model_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOWED_MODELS", raising=False)

    assert load_settings(env_file=None).models_allowed == (load_settings(env_file=None).aimlapi_model,)


def test_a_malformed_allowed_model_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_MODELS", "zhipu/glm-5,not a model")

    with pytest.raises(SettingsError, match=r"^ALLOWED_MODELS: not model ids: not a model"):
        load_settings(env_file=None)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_while_the_database_is_away_the_last_settings_read_are_used(
    db_url: str, proxy: TcpProxy
) -> None:
    engine = create_engine(proxy.url_for(db_url))
    clock = Clock()
    store = ChannelSettingsStore(session_factory(engine), ttl=5, clock=clock)
    try:
        await store.save("T1", "C1", FRENCH, actor_id="U1")
        assert await store.for_channel("T1", "C1") == FRENCH
        clock.now += 60  # long expired
        proxy.cut()

        assert await store.for_channel("T1", "C1") == FRENCH
        with pytest.raises(UNAVAILABLE):
            await store.for_channel("T1", "C2")  # never read: no settings to fall back on
    finally:
        proxy.restore()
        await engine.dispose()
