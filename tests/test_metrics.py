"""/metrics as an operator scrapes it during an incident: process health, edit budgets, the pool."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.aimlapi import Reply
from tests.harness import make_settings, mention, running_bot


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_include_the_standard_process_and_gc_collectors(db_url, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        samples = await scrape(bot.http)
    names = {name for name, _ in samples}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
    ):
        assert name in names
    assert samples[("process_resident_memory_bytes", ())] > 0


async def test_each_workspaces_edit_budget_shows_its_tokens_and_waiting_replies(db_url, fakes):
    slack, aiml = fakes
    # One edit every 5 s and no burst: the second reply has to wait for a slot.
    settings = make_settings(db_url, slack, aiml, slack_edits_per_minute=12.0, slack_edit_burst=1)
    for text in ("First.", "Second."):
        aiml.enqueue(Reply(content=text))
    budget = ("slackbot_edit_budget_tokens", (("team", "T1"),))
    waiters = ("slackbot_edit_budget_waiters", (("team", "T1"),))
    async with running_bot(settings, slack) as bot:
        before = await scrape(bot.http)
        assert budget not in before and waiters not in before  # no workspace has edited yet

        await bot.send(mention("first", "100.000001"))
        await bot.send(mention("second", "200.000001"))
        during = await scrape(bot.http)
        deadline = time.monotonic() + 30
        while during.get(waiters, 0) < 1 and time.monotonic() < deadline:
            during = await scrape(bot.http)
        # On PostgreSQL the first reply may still be waiting on its shared row's statement too.
        assert during[waiters] >= 1 and during[budget] < 1

        await bot.idle(timeout=30)
        after = await scrape(bot.http)
    assert after[waiters] == 0
    # Both replies land; which thread reached the model first (and got "First.") is a race.
    assert {bot.answer("C1", "100.000001"), bot.answer("C1", "200.000001")} == {"First.", "Second."}


async def test_database_connections_in_use_are_read_from_the_pool_at_scrape_time(db_url, fakes):
    slack, aiml = fakes
    in_use = ("slackbot_db_pool_connections_in_use", ())
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        assert bot.runtime.core is not None
        engine = bot.runtime.core.engine
        async with engine.connect(), engine.connect():
            busy = await scrape(bot.http)
        idle = await scrape(bot.http)
        deadline = time.monotonic() + 30
        while idle[in_use] > 0 and time.monotonic() < deadline:  # the maintenance loop may be at work
            idle = await scrape(bot.http)
    assert busy[in_use] >= 2
    assert idle[in_use] == 0
