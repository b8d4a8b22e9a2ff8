"""Liveness and readiness as a load balancer and an orchestrator see them, through the real listener."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import pytest

from bot.health import CHECK_TIMEOUT
from tests.fakes.aimlapi import Reply
from tests.harness import eventually, make_settings, mention, running_bot
from tests.test_container import healthcheck_command

postgres_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

OK = {"status": "ok", "database": "ok"}
DOWN = {"status": "unavailable", "database": "unavailable"}


async def test_liveness_and_readiness_answer_ok_with_no_detail(db_url, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        live = await bot.http.get("/livez")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        for path in ("/readyz", "/healthz"):
            ready = await bot.http.get(path)
            assert (ready.status_code, ready.json()) == (200, OK)


@pytest.mark.parametrize("outage", ["refused", "black_hole"])
@postgres_only
async def test_an_outage_makes_readiness_503_without_host_or_driver_text_while_liveness_stays_200(
    db_url, proxy, fakes, outage, caplog
):
    slack, aiml = fakes
    url = proxy.url_for(db_url)
    async with running_bot(make_settings(url, slack, aiml), slack) as bot:
        proxy.cut() if outage == "refused" else proxy.black_hole()
        with caplog.at_level(logging.WARNING, logger="bot.health"):
            for path in ("/readyz", "/healthz"):
                started = time.monotonic()
                response = await bot.http.get(path, timeout=CHECK_TIMEOUT + 10)
                assert time.monotonic() - started < CHECK_TIMEOUT + 5  # the probe's own timeout bounds it
                assert (response.status_code, response.json()) == (503, DOWN)
                for detail in ("127.0.0.1", str(proxy.port), "postgres", "Error", "refused", "timed out"):
                    assert detail not in response.text
            live = await bot.http.get("/livez")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})

        # The operator finds the reason in the log: one line for both probes, not one per probe.
        [line] = [r.getMessage() for r in caplog.records if r.name == "bot.health"]
        assert f"127.0.0.1:{proxy.port}" in line
        proxy.restore()
        assert (await bot.http.get("/readyz")).json() == OK


@postgres_only
async def test_a_black_holed_database_gets_the_outage_note_in_slack_and_nothing_hangs(db_url, proxy, fakes):
    slack, aiml = fakes
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        proxy.black_hole()
        await bot.send(mention("hello?", "100.000001"))
        await eventually(lambda: bool(bot.replies("C1", "100.000001")), 60)
        await bot.idle(timeout=60)
        [note] = bot.replies("C1", "100.000001")
        assert "database" in note.text.lower()
        assert aiml.requests == []
        assert (await bot.http.get("/livez")).status_code == 200

        proxy.restore()
        aiml.enqueue(Reply(content="Back again."))
        await bot.send(mention("and now?", "200.000001"))
        await bot.idle(timeout=30)
        assert bot.answer("C1", "200.000001") == "Back again."


async def test_readiness_is_503_while_the_bot_drains_on_shutdown(db_url, fakes):
    slack, aiml = fakes
    aiml.enqueue(Reply(content="word " * 60, chunk_size=5, chunk_interval=0.1))
    settings = make_settings(db_url, slack, aiml, shutdown_grace_seconds=30.0)
    async with running_bot(settings, slack) as bot:
        await bot.send(mention("a long one", "300.000001"))
        await eventually(lambda: "word" in bot.answer("C1", "300.000001"), 10)
        stopping = asyncio.create_task(bot.runtime.stop())
        try:
            ready = await bot.http.get("/readyz")
            deadline = time.monotonic() + 10
            while ready.status_code == 200 and time.monotonic() < deadline:
                ready = await bot.http.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "unavailable", "database": "ok"})
            assert (await bot.http.get("/healthz")).status_code == 503
            assert (await bot.http.get("/livez")).status_code == 200  # draining is not dead
            assert bot.runtime.turns is not None and bot.runtime.turns.active  # the reply still streams
        finally:
            await stopping
    assert bot.answer("C1", "300.000001") == "word " * 60


@postgres_only
async def test_the_images_health_check_passes_during_a_database_outage_so_docker_restarts_nothing(
    db_url, proxy, fakes
):
    slack, aiml = fakes
    async with running_bot(make_settings(proxy.url_for(db_url), slack, aiml), slack) as bot:
        proxy.cut()
        assert (await bot.http.get("/readyz")).status_code == 503
        port = str(bot.runtime.port)
        check = await asyncio.create_subprocess_exec(
            sys.executable, *healthcheck_command()[1:], env={**os.environ, "PORT": port}
        )
        assert await asyncio.wait_for(check.wait(), 30) == 0
