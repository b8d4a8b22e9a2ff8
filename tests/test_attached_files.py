"""Files attached to a message the bot answers, through the real endpoint: read into the person's
message (PDF, CSV), noted when they cannot be read (an image, a failed download), cut at the caps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.aimlapi import FakeAimlApi, Reply
from tests.fakes.slack_api import FakeFile, FakeSlackApi
from tests.harness import Bot, make_settings, message, running_bot
from tests.pdf_fixture import pdf_with_text
from tests.test_metrics import scrape


@pytest.fixture
async def bot(db_url: str, slack: FakeSlackApi, aiml: FakeAimlApi) -> AsyncIterator[Bot]:
    settings = make_settings(
        db_url, slack, aiml, file_text_max_chars=500, files_text_max_chars=800, file_max_bytes=2_000
    )
    async with running_bot(settings, slack, aiml) as running:
        yield running


def dm_with_files(text: str, ts: str, *files: FakeFile) -> dict[str, Any]:
    """A DM with attachments, as Slack sends it: a `file_share` message carrying `files`."""
    return message(
        text,
        ts,
        channel="D1",
        channel_type="im",
        subtype="file_share",
        files=[f.as_event() for f in files],
    )


async def asked(bot: Bot, aiml: FakeAimlApi, event: dict[str, Any]) -> str:
    """What the model was sent as the person's newest message."""
    aiml.enqueue(Reply(content="Read it."))
    response = await bot.send(event)
    assert response.status_code == 200
    await bot.idle()
    return str(aiml.chat_requests[-1].json["messages"][-1]["content"])


async def test_a_pdf_and_a_csv_are_read_into_the_persons_message(bot: Bot, slack: FakeSlackApi, aiml):
    pdf = slack.add_file(
        "report.pdf",
        pdf_with_text("Quarterly revenue grew 12%"),
        mimetype="application/pdf",
        filetype="pdf",
    )
    csv = slack.add_file(
        "sales.csv", b"region,total\nnorth,10\nsouth,7\n", mimetype="text/csv", filetype="csv"
    )

    sent = await asked(bot, aiml, dm_with_files("Compare these", "100.000001", pdf, csv))

    assert sent.startswith("Compare these\n\n")
    assert '<attached_file name="report.pdf">\nQuarterly revenue grew 12%\n</attached_file>' in sent
    assert '<attached_file name="sales.csv">\nregion,total\nnorth,10\nsouth,7\n\n</attached_file>' in sent
    downloads = slack.calls_to("files.download")
    assert len(downloads) == 2 and all(c.ok and c.team == "T1" for c in downloads)  # with the bot token
    assert bot.answer("D1", "100.000001") == "Read it."


async def test_an_image_gets_a_note_that_the_bot_cannot_read_it_and_is_not_downloaded(bot, slack, aiml):
    image = slack.add_file("chart.png", b"\x89PNG\r\n\x1a\n", mimetype="image/png", filetype="png")

    sent = await asked(bot, aiml, dm_with_files("What does it show?", "100.000001", image))

    assert sent == "What does it show?\n\n[Attached file “chart.png”: an image, which I can't read]"
    assert image.downloads == 0
    counted = await scrape(bot.http)
    assert counted[("slackbot_files_read_total", (("kind", "image"), ("outcome", "not_supported")))] == 1


async def test_a_file_over_the_cap_is_cut_with_a_note_and_the_turn_cap_leaves_later_files_out(
    bot, slack, aiml
):
    long = slack.add_file("long.txt", ("a" * 600).encode())  # per-file cap 500
    medium = slack.add_file("medium.md", ("b" * 400).encode(), filetype="markdown")  # 300 left of 800
    last = slack.add_file("last.py", b"print('hi')\n", filetype="python")  # nothing left

    sent = await asked(bot, aiml, dm_with_files("", "100.000001", long, medium, last))

    assert (
        '<attached_file name="long.txt" note="cut after 500 of 600 characters (the per-file limit)">\n'
        + "a" * 500
        + "\n</attached_file>"
    ) in sent
    assert "cut after 300 of 400 characters (the limit for all files of a message)" in sent
    assert "b" * 300 + "\n</attached_file>" in sent and "b" * 301 not in sent
    assert (
        "[Attached file “last.py”: not read: the limit for all files of a message of 800 characters" in sent
    )


async def test_a_file_over_the_byte_limit_is_not_downloaded_even_when_slack_says_it_is_small(
    bot, slack, aiml
):
    big = slack.add_file("big.log", b"x" * 3_000)
    understated = slack.add_file("small.txt", b"y" * 3_000, size=100)

    sent = await asked(bot, aiml, dm_with_files("Look", "100.000001", big, understated))

    assert "[Attached file “big.log”: not read: 3,000 bytes is over the 2,000-byte limit for a file]" in sent
    assert (
        "[Attached file “small.txt”: not read: 3,000 bytes is over the 2,000-byte limit for a file]" in sent
    )
    assert big.downloads == 0 and "yyy" not in sent


async def test_a_failed_download_and_a_refused_token_are_noted_and_the_turn_is_still_answered(
    bot, slack, aiml
):
    broken = slack.add_file("notes.txt", b"never seen", fail_with=503)
    elsewhere = slack.add_file("data.json", b"{}", mimetype="application/json", filetype="json")
    event = dm_with_files("Summarise", "100.000001", broken, elsewhere)
    # A file whose link is not Slack's: the bot token is never sent there.
    event["files"][1]["url_private_download"] = "https://attacker.example/steal"

    sent = await asked(bot, aiml, event)

    assert "[Attached file “notes.txt”: Slack answered 503 when I downloaded it]" in sent
    assert "[Attached file “data.json”: it is not stored in Slack, so I did not download it]" in sent
    assert "never seen" not in sent
    assert bot.answer("D1", "100.000001") == "Read it."


async def test_a_file_shared_from_another_organisation_is_looked_up_and_a_deleted_one_is_noted(
    bot, slack, aiml
):
    shared = slack.add_file("plan.md", b"# Plan\nShip it", filetype="markdown")
    event = dm_with_files("What is the plan?", "100.000001", shared)
    # Slack Connect: the event names the file only; files.info has the rest.
    event["files"] = [
        {"id": shared.id, "file_access": "check_file_info"},
        {"id": "F0GONE", "mode": "tombstone", "name": "old.txt"},
    ]

    sent = await asked(bot, aiml, event)

    assert '<attached_file name="plan.md">\n# Plan\nShip it\n</attached_file>' in sent
    assert "[Attached file “old.txt”: it was deleted before I could read it]" in sent
    assert [c.params["file"] for c in slack.calls_to("files.info")] == [shared.id]


async def test_a_download_follows_redirects_within_slack_only(bot, slack, aiml):
    target = slack.add_file("real.txt", b"the real content")
    inside = slack.add_file("moved.txt", b"")
    inside.redirect_to = target.url  # another of Slack's own addresses
    outside = slack.add_file("away.txt", b"")
    outside.redirect_to = "https://attacker.example/collect"

    sent = await asked(bot, aiml, dm_with_files("Read", "100.000001", inside, outside))

    assert '<attached_file name="moved.txt">\nthe real content\n</attached_file>' in sent
    assert "[Attached file “away.txt”: it is not stored in Slack, so I did not download it]" in sent


async def test_slacks_sign_in_page_is_not_taken_for_the_file(slack: FakeSlackApi) -> None:
    """The fake answers a download without the bot token as Slack does: 200 with its sign-in page."""
    import aiohttp

    notes = slack.add_file("notes.txt", b"secret notes")
    async with aiohttp.ClientSession() as session, session.get(notes.url) as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "secret" not in await response.text()
    assert notes.downloads == 0
