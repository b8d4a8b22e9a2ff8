"""config/slack-manifest.yml against Slack's manifest rules and against what the running bot does.

Both directions: every event, command and scope the manifest asks Slack for is one the bot uses,
and everything the bot handles or calls is granted by the manifest.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7
from ruamel.yaml import YAML

from tests.fakes.aimlapi import Reply
from tests.fakes.response_url import ResponseUrl
from tests.harness import Bot, eventually, make_settings, mention, message, running_bot, signed_headers
from tests.manifest_rules import EVENT_SCOPES, METHOD_SCOPES, SCHEMA
from tests.test_metrics import scrape
from tests.test_quotas import ledger_row

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "config" / "slack-manifest.yml"
# Slack's public schema, vendored (tests/slack_manifest_schema/README.md says from where); the entry
# schema refers to the versioned ones by these URLs, resolved to the local copies.
PUBLIC_SCHEMA = Path(__file__).resolve().parent / "slack_manifest_schema"
SCHEMA_BASE = "https://raw.githubusercontent.com/slackapi/manifest-schema/v0.5.0/schemas/"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(MANIFEST)
    return loaded


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(SCHEMA).iter_errors(document)
    ]


def public_schema_errors(document: dict[str, Any]) -> list[str]:
    """Errors from Slack's own schema; its entry schema is a oneOf per manifest version, so the
    reasons are the errors inside each branch."""
    registry: Registry[Any] = Registry().with_resources(
        (SCHEMA_BASE + path.name, DRAFT7.create_resource(json.loads(path.read_text(encoding="utf-8"))))
        for path in (PUBLIC_SCHEMA / "schemas").glob("*.json")
    )
    entry = json.loads((PUBLIC_SCHEMA / "manifest.schema.json").read_text(encoding="utf-8"))
    return [
        f"{'/'.join(map(str, inner.absolute_path))}: {inner.message}"
        for error in Draft7Validator(entry, registry=registry).iter_errors(document)
        for inner in (error.context or [error])
    ]


def test_the_manifest_follows_slacks_manifest_schema():
    assert schema_errors(manifest()) == []


def test_the_manifest_follows_slacks_public_manifest_schema():
    assert public_schema_errors(manifest()) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: m["features"]["agent_view"].update(agent_description="x" * 301), "agent_description"),
        (lambda m: m["features"]["agent_view"]["suggested_prompts"].append({"title": "5", "message": "5"}),
         "suggested_prompts"),
        (lambda m: m["features"]["agent_view"]["suggested_prompts"][0].pop("message"), "suggested_prompts/0"),
        (lambda m: m["features"]["agent_view"].update(prompts=[]), "agent_view"),
    ],
)  # fmt: skip
def test_slacks_public_schema_rejects_a_broken_agent_view(change, where):
    broken = copy.deepcopy(manifest())
    change(broken)
    assert any(where in error for error in public_schema_errors(broken))


def test_the_manifest_suggests_the_same_prompts_as_the_bots_prompts_file():
    configured = tomllib.loads((ROOT / "config" / "prompts.toml").read_text(encoding="utf-8"))
    listed = manifest()["features"]["agent_view"]["suggested_prompts"]
    assert listed == configured["prompts"]
    assert (ROOT / "bot" / "default_prompts.toml").read_text() == (
        ROOT / "config" / "prompts.toml"
    ).read_text()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: m.update(event_subscriptions={}), ""),  # belongs under settings
        (
            lambda m: m["settings"]["event_subscriptions"]["bot_events"].append("message.channel"),
            "bot_events",
        ),
        (lambda m: m["oauth_config"]["scopes"]["bot"].append("chat:writes"), "bot"),
        (lambda m: m["features"]["slash_commands"][0].update(command="usage"), "command"),
        (lambda m: m["display_information"].update(name="G" * 36), "name"),
        (lambda m: m["settings"]["interactivity"].pop("is_enabled"), "interactivity"),
    ],
)
def test_the_schema_check_rejects_what_slack_would_reject(change, where):
    broken = copy.deepcopy(manifest())
    change(broken)
    errors = schema_errors(broken)
    assert errors and where in errors[0]


def test_every_subscribed_event_has_the_scope_slack_requires():
    granted = set(manifest()["oauth_config"]["scopes"]["bot"])
    for event in manifest()["settings"]["event_subscriptions"]["bot_events"]:
        assert EVENT_SCOPES[event] in granted | {None}, f"{event} needs {EVENT_SCOPES[event]}"
    if manifest()["features"].get("slash_commands"):
        assert "commands" in granted


def key_paths(node: Any, prefix: str = "") -> set[str]:
    """Every dotted key path of a YAML document; list items add `[]`."""
    paths: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths |= {path} | key_paths(value, path)
    elif isinstance(node, list):
        for item in node:
            paths |= key_paths(item, prefix + "[]")
    return paths


def test_the_socket_mode_note_names_keys_that_exist_and_following_it_gives_a_valid_manifest():
    note = "\n".join(line for line in MANIFEST.read_text().splitlines() if line.startswith("#"))
    named = set(re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)+)`", note))
    assert {
        "settings.socket_mode_enabled",
        "settings.event_subscriptions.request_url",
        "settings.interactivity.request_url",
        "features.slash_commands[].url",
    } <= named
    assert named <= key_paths(manifest()), (
        f"the note names keys the manifest lacks: {named - key_paths(manifest())}"
    )

    socket = copy.deepcopy(manifest())
    socket["settings"]["socket_mode_enabled"] = True
    del socket["settings"]["event_subscriptions"]["request_url"]
    del socket["settings"]["interactivity"]["request_url"]
    for command in socket["features"]["slash_commands"]:
        del command["url"]
    assert schema_errors(socket) == []
    assert "https://" not in str(socket)  # nothing left that needs a public URL


# The Events API shape of each subscription, as Slack delivers it.
def delivered(subscription: str, ts: str) -> dict[str, Any]:
    channel_types = {"channels": "channel", "groups": "group", "im": "im", "mpim": "mpim"}
    if subscription == "app_mention":
        return mention("hello", ts)
    if subscription.startswith("message."):
        kind = channel_types[subscription.removeprefix("message.")]
        channel = {"channel": "C1", "group": "G1", "im": "D1", "mpim": "G2"}[kind]
        return message("hello", ts, channel=channel, channel_type=kind)
    if subscription == "app_context_changed":
        entity = {"type": "slack#/types/channel_id", "value": "C1", "team_id": "T1"}
        return {"type": subscription, "user": "U1", "channel": "D1", "context": {"entities": [entity]}}
    if subscription.startswith("assistant_thread_"):
        thread = {"user_id": "U1", "channel_id": "D1", "thread_ts": ts, "context": {"channel_id": "C1"}}
        return {"type": subscription, "assistant_thread": thread, "event_ts": ts}
    if subscription == "app_home_opened":  # the Home tab (the Messages tab is another surface's)
        return {"type": subscription, "user": "U1", "channel": "D1", "tab": "home", "event_ts": ts}
    return {"type": subscription, "user": "U1", "channel": "C1", "event_ts": ts, "ts": ts}


UNSUPPORTED = ("slackbot_events_ignored_total", (("reason", "unsupported_type"),))


async def handles(bot: Bot, event: dict[str, Any]) -> bool:
    """Whether a listener took the event, rather than the catch-all that only acknowledges it."""
    before = (await scrape(bot.http)).get(UNSUPPORTED, 0)
    response = await bot.send(event)
    assert response.status_code == 200
    await bot.idle()
    return (await scrape(bot.http)).get(UNSUPPORTED, 0) == before


@sqlite_only
async def test_the_bot_handles_exactly_the_events_the_manifest_subscribes_to(db_url, fakes):
    slack, aiml = fakes
    subscribed = set(manifest()["settings"]["event_subscriptions"]["bot_events"])
    async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
        handled = {
            subscription
            for number, subscription in enumerate(sorted(EVENT_SCOPES), start=1)
            if await handles(bot, delivered(subscription, f"{number}00.000001"))
        }
    assert handled == subscribed


async def post_command(bot: Bot, command: str, response_url: str) -> int:
    body = urlencode(
        {
            "command": command,
            "text": "",
            "user_id": "U1",
            "team_id": "T1",
            "channel_id": "C1",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )
    headers = signed_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    return (await bot.http.post("/slack/events", content=body, headers=headers)).status_code


@sqlite_only
async def test_the_bot_answers_exactly_the_slash_commands_in_the_manifest(db_url, fakes):
    slack, aiml = fakes
    declared = {c["command"] for c in manifest()["features"]["slash_commands"]}
    receiver = ResponseUrl()
    await receiver.start()
    try:
        async with running_bot(make_settings(db_url, slack, aiml), slack) as bot:
            # The manifest's commands, plus the ones design.md plans (`/glm`): answered ones need declaring.
            answered = {c for c in declared | {"/glm"} if await post_command(bot, c, receiver.url) == 200}
    finally:
        await receiver.stop()
    assert answered == declared


@sqlite_only
async def test_every_web_api_call_the_bot_makes_is_granted_and_every_scope_is_needed(db_url, fakes, sessions):
    slack, aiml = fakes
    for _ in range(3):
        aiml.enqueue(Reply(content="Answered."))
    granted = set(manifest()["oauth_config"]["scopes"]["bot"])
    async with sessions.begin() as session:  # yesterday's usage: the digest (and its chart) at start-up
        session.add(ledger_row(4_000, when=datetime.now(UTC) - timedelta(days=1)))
    settings = make_settings(db_url, slack, aiml, usage_digest_channel="CDIGEST", usage_digest_time="00:00")
    receiver = ResponseUrl()
    await receiver.start()
    try:
        async with running_bot(settings, slack) as bot:
            await eventually(lambda: bool(slack.calls_to("files.completeUploadExternal")), 20)
            # A mention in a thread the bot has not seen (backfill) naming a colleague (users.info),
            # a DM, and /usage: the calls a working day brings.
            root = slack.add_message("C1", "a question for the team", user="U2")
            await bot.send(mention("what does <@U2> mean?", "500.000001", thread_ts=root))
            await bot.idle()
            notes = slack.add_file("notes.txt", b"agenda")  # a DM with a file (files:read)
            files = [notes.as_event()]
            await bot.send(message("hi", "600.000001", channel="D1", channel_type="im", files=files))
            await bot.idle()
            # The Messages tab: opened (suggested prompts), a channel in view (its name only).
            slack.channel_names["C1"] = "general"
            tab = {"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "messages"}
            await bot.send(tab | {"event_ts": "650.000001"})
            await bot.send(delivered("app_context_changed", "650.000002"))
            await bot.idle()
            assert await post_command(bot, "/usage", receiver.url) == 200
            await receiver.next_answer()
            # An admin's week: the Home tab, and a channel's settings form (its creator looked up).
            await bot.send(delivered("app_home_opened", "700.000001"))
            assert (await bot.command("/glm", "settings", user="U1")).status_code == 200
            await bot.idle()
    finally:
        await receiver.stop()

    methods = {call.method for call in slack.calls}
    assert {  # the scenario ran
        "chat.postMessage",
        "conversations.replies",
        "users.info",
        "assistant.threads.setTitle",
        "assistant.threads.setSuggestedPrompts",
        "conversations.info",
    } <= methods
    used: set[str] = set()
    for method in methods:
        assert method in METHOD_SCOPES, (
            f"the bot calls {method}: add its scope to manifest_rules and the manifest"
        )
        needs = METHOD_SCOPES[method]
        assert not needs or needs & granted, f"{method} needs one of {sorted(needs)}"
        used |= needs & granted
    subscriptions = manifest()["settings"]["event_subscriptions"]["bot_events"]
    used |= {scope for event in subscriptions if (scope := EVENT_SCOPES[event]) is not None}
    if manifest()["features"].get("slash_commands"):
        used.add("commands")
    assert granted - used == set(), "scopes the bot never needs: drop them from the manifest"
