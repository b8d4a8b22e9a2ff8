"""Usage through the running bot: `/usage` via the real HTTP endpoint, the digest posted at start-up."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from bot.storage.models import UsageRecord
from tests.fakes.aimlapi import Reply
from tests.fakes.response_url import ResponseUrl
from tests.harness import eventually, make_settings, mention, running_bot, signed_headers


async def test_usage_command_answers_the_caller_with_their_own_numbers(db_url, fakes):
    slack, aiml = fakes
    receiver = ResponseUrl()
    await receiver.start()
    try:
        async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
            aiml.enqueue(Reply(content="Counted.", credits_used=4321))
            await bot.send(mention("count this", "100.000001"))
            await bot.idle()
            body = urlencode(
                {
                    "command": "/usage",
                    "text": "",
                    "user_id": "U1",
                    "team_id": "T1",
                    "channel_id": "C1",
                    "response_url": receiver.url,
                    "trigger_id": "1.2.3",
                }
            )
            headers = signed_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
            started = time.monotonic()
            response = await bot.http.post("/slack/events", content=body, headers=headers)
            assert response.status_code == 200 and time.monotonic() - started < 3
            answer = await receiver.next_answer()
    finally:
        await receiver.stop()
    assert answer["response_type"] == "ephemeral"
    assert "4,321" in str(answer["blocks"]) + answer["text"]


async def test_a_digest_missed_while_down_is_posted_at_start_up_once(db_url, fakes, sessions):
    slack, aiml = fakes
    yesterday_noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    async with sessions.begin() as session:
        session.add(
            UsageRecord(
                team_id="T1",
                channel_id="C1",
                user_id="U1",
                model_requested="zhipu/glm-5",
                model_returned="glm-5",
                prompt_tokens=100,
                completion_tokens=50,
                credits_used=2_000_000,
                usd_spent=1.0,
                status="complete",
                created_at=yesterday_noon,
            )
        )
    settings = make_settings(db_url, slack, aiml, usage_digest_channel="CDIGEST", usage_digest_time="00:00")
    async with running_bot(settings, slack):
        await eventually(lambda: bool(slack.messages("CDIGEST")), 10)
    async with running_bot(settings, slack):  # a restart does not post it again
        await asyncio.sleep(1.0)  # the start-up catch-up job runs right away
    [digest] = slack.messages("CDIGEST")
    assert "2,000,000" in digest.text + str(digest.blocks)
