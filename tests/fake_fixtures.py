"""Fixtures for the fakes at the HTTP boundary: Slack's Web API and the AI/ML API, on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.aimlapi import FakeAimlApi
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.tcp_proxy import TcpProxy


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlackApi]:
    """Slack for workspace T1, bot token xoxb-test, bot user UBOT."""
    async with FakeSlackApi() as fake:
        yield fake


@pytest.fixture
async def aiml() -> AsyncIterator[FakeAimlApi]:
    """The AI/ML API, key test-key; script replies with `aiml.enqueue(Reply(...))`."""
    async with FakeAimlApi(api_key="test-key") as fake:
        yield fake


@pytest.fixture
def fakes(slack: FakeSlackApi, aiml: FakeAimlApi) -> tuple[FakeSlackApi, FakeAimlApi]:
    return slack, aiml


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[TcpProxy]:
    """A loopback TCP proxy in front of the test's database, to cut or black-hole it."""
    proxy = TcpProxy.in_front_of(db_url)
    await proxy.start()
    yield proxy
    await proxy.stop()
