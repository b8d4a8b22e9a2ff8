"""The benchmark's reading of the fake Slack's call log: when a thread showed its status and its first
answer text, whatever way the reply streamed, and how many calls of each method it took."""

from __future__ import annotations

from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bench.botproc import BOT_TOKEN
from bench.calls import (
    answer_text,
    calls_by_method,
    calls_per_reply,
    first_status_at,
    first_text_at,
    last_visible_at,
    message_index,
    short_calls,
)
from bench.fakes import BenchSlack, SlackModel
from bench.scenarios import SCENARIOS, in_modes
from bench.targets import auto_targets, evaluate
from tests.fakes.slack_api import Call, FakeMessage, FakeSlackApi

ROOT, OTHER_ROOT = "1800000000.000001", "1800000000.000002"
REPLY, OTHER_REPLY = "1700000000.000100", "1700000000.000200"
THREAD, OTHER_THREAD = ("C1", ROOT), ("C1", OTHER_ROOT)


def _call(method: str, at: float, http: int = 200, error: str | None = None, **params: Any) -> Call:
    return Call(method, params, "T1", at, http, error)


def _markdown(text: str) -> list[dict[str, Any]]:
    return [{"type": "markdown", "text": text}]


def _index() -> dict[tuple[str, str], str]:
    return message_index(
        [
            FakeMessage(ROOT, "C1", None, "question", None, "U1", None),
            FakeMessage(REPLY, "C1", ROOT, "", None, "UBOT", "BBOT"),
            FakeMessage(OTHER_REPLY, "C1", OTHER_ROOT, "", None, "UBOT", "BBOT"),
        ]
    )


def test_the_placeholder_and_refused_edits_are_not_the_first_answer_text() -> None:
    calls = [
        _call(
            "chat.postMessage", 1.0, channel="C1", thread_ts=ROOT, text="…", blocks=_markdown("_Thinking…_")
        ),
        _call("chat.update", 1.5, 429, "ratelimited", channel="C1", ts=REPLY, blocks=_markdown("Hello")),
        _call("chat.update", 2.0, channel="C1", ts=REPLY, text="Hello", blocks=_markdown("Hello")),
        _call("chat.update", 3.0, channel="C1", ts=REPLY, blocks=_markdown("Hello world.")),
    ]

    assert first_text_at(calls, _index()) == {THREAD: 2.0}


def test_native_streams_show_text_by_their_start_or_their_first_append() -> None:
    calls = [
        # A stream started without text shows nothing yet; its first append does.
        _call("chat.startStream", 1.0, channel="C1", thread_ts=ROOT, recipient_user_id="U1"),
        _call(
            "chat.appendStream", 1.4, channel="C1", ts=REPLY, chunks=[{"type": "markdown_text", "text": "Hi"}]
        ),
        # A stream that starts with the first text shows it at once.
        _call("chat.startStream", 1.2, channel="C1", thread_ts=OTHER_ROOT, markdown_text="Sure,"),
        _call("chat.appendStream", 1.3, channel="C1", ts=OTHER_REPLY, markdown_text=" here"),
    ]

    assert first_text_at(calls, _index()) == {THREAD: 1.4, OTHER_THREAD: 1.2}


def test_a_first_text_posted_as_a_new_message_counts_and_a_plain_note_does_not() -> None:
    note = _call("chat.postMessage", 0.5, channel="C1", thread_ts=ROOT, text="I can't reach my database.")
    answer = _call("chat.postMessage", 0.9, channel="C1", thread_ts=OTHER_ROOT, markdown_text="The answer")

    assert first_text_at([note, answer], _index()) == {OTHER_THREAD: 0.9}
    assert answer_text({"text": "fallback", "blocks": _markdown("A")}) == "A"


def test_the_status_shows_at_the_first_accepted_non_empty_status_of_its_thread() -> None:
    calls = [
        _call(
            "assistant.threads.setStatus",
            0.2,
            429,
            "ratelimited",
            channel_id="C1",
            thread_ts=ROOT,
            status="…",
        ),
        _call("assistant.threads.setStatus", 0.3, channel_id="C1", thread_ts=ROOT, status=""),  # clears
        _call("assistant.threads.setStatus", 0.6, channel_id="C1", thread_ts=ROOT, status="is thinking…"),
        _call("assistant.threads.setStatus", 0.7, channel_id="C1", thread_ts=ROOT, status="is writing…"),
        _call(
            "assistant.threads.setStatus", 0.4, channel_id="C1", thread_ts=OTHER_ROOT, status="is thinking…"
        ),
    ]

    assert first_status_at(calls, _index()) == {THREAD: 0.6, OTHER_THREAD: 0.4}


def test_the_final_state_is_the_last_accepted_call_that_changed_the_thread_a_stop_included() -> None:
    calls = [
        _call("chat.startStream", 1.0, channel="C1", thread_ts=ROOT, markdown_text="Hi"),
        _call("chat.stopStream", 4.0, channel="C1", ts=REPLY, blocks=[{"type": "context", "elements": []}]),
        _call("chat.stopStream", 5.0, 429, "ratelimited", channel="C1", ts=REPLY),
        _call("assistant.threads.setStatus", 6.0, channel_id="C1", thread_ts=ROOT, status=""),
    ]

    assert last_visible_at(calls, _index()) == {THREAD: 4.0}


def test_calls_are_counted_by_method_attempt_outcome_and_reply() -> None:
    calls = [
        _call("chat.postMessage", 1.0, channel="C1", thread_ts=ROOT),
        _call("chat.update", 1.1, channel="C1", ts=REPLY),
        _call("chat.update", 1.2, 429, "ratelimited", channel="C1", ts=REPLY),
        _call("chat.update", 1.3, 200, "message_not_found", channel="C1", ts=REPLY),
        _call("users.info", 1.4, user="U1"),
    ]

    assert calls_by_method(calls) == {
        "chat.postMessage": {"calls": 1, "ok": 1, "429": 0, "other": 0},
        "chat.update": {"calls": 3, "ok": 1, "429": 1, "other": 1},
        "users.info": {"calls": 1, "ok": 1, "429": 0, "other": 0},
    }
    per_reply = calls_per_reply(calls, replies=2)
    assert per_reply == {"chat.postMessage": 0.5, "chat.update": 1.5, "users.info": 0.5}
    assert short_calls(per_reply) == "post 0.5 update 1.5 other 0.5"


def _summary(p50: float, p95: float, p99: float, never: int = 0) -> dict[str, Any]:
    return {"n": 50, "p50": p50, "p95": p95, "p99": p99, "never": never}


def _b(
    status: dict[str, Any], text: dict[str, Any], rejected: int, complete: float = 100.0
) -> dict[str, Any]:
    return {
        "status_shown_ms": status,
        "first_text_ms": text,
        "slack_429s": rejected,
        "complete_pct": complete,
    }


def _verdicts(b: dict[str, Any]) -> list[bool | None]:
    return [t["pass"] for t in auto_targets(b)]


def test_the_auto_targets_of_b_hold_at_their_limits_and_fail_past_them() -> None:
    assert _verdicts(_b(_summary(300, 700, 990), _summary(1900, 9500, 20_000), 149)) == [True] * 5
    failing = _b(_summary(300, 700, 1000), _summary(2000, 10_000, 20_000), 150, complete=98.0)
    assert _verdicts(failing) == [False] * 5
    # A reply whose status never showed fails the status target even if p99 came out under 1 s.
    assert _verdicts(_b(_summary(300, 700, 900, never=1), _summary(1, 1, 1), 0))[0] is False


def test_the_auto_targets_are_checked_on_b_in_auto_mode_only() -> None:
    edits = {
        **_b(_summary(60_000, 60_000, 60_000, never=50), _summary(27_500, 50_000, 58_000), 3),
        "complete_pct": 100.0,
        "errors": {"count": 0},
        "bot_exit_code": 0,
    }
    verdicts = {t["target"]: t["pass"] for t in evaluate({"b/edits": edits}, "full", None)}

    assert verdicts["(b/auto) event -> first answer text p50"] is None  # not run
    assert verdicts["(b/edits) Slack 429s"] is True
    verdicts = {t["target"]: t["pass"] for t in evaluate({"b/auto": edits}, "full", None)}
    assert verdicts["(b/auto) event -> first answer text p50"] is False
    assert verdicts["(b/auto) event -> status shown p99"] is False


def test_a_and_b_run_in_every_mode_and_the_rest_in_the_bots_default() -> None:
    runs = in_modes(list(SCENARIOS.values()), None)

    assert [s.run_key for s in runs] == [
        "a/edits",
        "a/native",
        "a/auto",
        "b/edits",
        "b/native",
        "b/auto",
        "c",
        "d",
        "e",
        "f",
    ]
    assert runs[0].environment(SlackModel())["SLACK_STREAMING"] == "edits"
    assert "SLACK_STREAMING" not in runs[6].environment(SlackModel())
    assert [s.run_key for s in in_modes([SCENARIOS["c"]], ["edits"])] == ["c/edits"]


class _StreamingSlack(FakeSlackApi):
    """A fake that serves chat.startStream and chat.appendStream (the native work's fake will have its
    own): the bench must stamp them by name without knowing how they are made."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route("chat.startStream", self._start)
        self.route("chat.appendStream", self._append)

    async def _start(self, params: dict[str, Any], _team: str) -> dict[str, Any]:
        text = str(params.get("markdown_text") or "")
        ts = self.add_message(str(params["channel"]), text, "UBOT", str(params["thread_ts"]), bot_id="BBOT")
        self.message(str(params["channel"]), ts).blocks = _markdown(text) if text else None
        return {"channel": params["channel"], "ts": ts}

    async def _append(self, params: dict[str, Any], _team: str) -> dict[str, Any]:
        message = self.message(str(params["channel"]), str(params["ts"]))
        text = message.markdown + answer_text(params)
        message.blocks = _markdown(text)
        return {"channel": params["channel"], "ts": message.ts}


class _StreamingBench(BenchSlack, _StreamingSlack):
    pass


async def test_the_bench_fake_stamps_what_native_stream_calls_show_and_the_log_finds_their_text() -> None:
    slack = _StreamingBench(SlackModel(latency_p50_ms=0))
    async with slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
        root = slack.add_message("C1", "question")
        started = await client.chat_startStream(channel="C1", thread_ts=root, recipient_user_id="U1")
        await client.chat_appendStream(
            channel="C1", ts=started["ts"], chunks=[{"type": "markdown_text", "text": "Hello"}]
        )
        await client.chat_appendStream(channel="C1", ts=started["ts"], markdown_text=" world.")

        assert [(s.method, s.markdown) for s in slack.shown] == [
            ("chat.startStream", ""),
            ("chat.appendStream", "Hello"),
            ("chat.appendStream", "Hello world."),
        ]
        index = message_index(slack.messages("C1"))
        appended = slack.calls_to("chat.appendStream")[0]
        assert first_text_at(slack.calls, index) == {("C1", root): appended.time}
