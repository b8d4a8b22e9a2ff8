"""Slack's app-manifest rules that matter to this bot, as a JSON Schema (draft 7) plus scope tables.

SCHEMA is a subset of Slack's public manifest schema (slackapi/manifest-schema,
`schemas/manifest.schema.1.0.0.json`, the version a manifest without `_metadata` is checked against),
written out by hand. It keeps that schema's structure and limits for the parts this manifest uses:
the allowed top-level keys, `display_information`, `features` (app_home, bot_user, slash_commands),
`oauth_config.scopes`, and `settings` (event_subscriptions, interactivity and the flags), each with
`additionalProperties: false` as there. Slack's schema types scope and event names only as strings
of at most 50 characters; here they are also checked against the names Slack documents (BOT_SCOPES,
EVENT_SCOPES), so a typo fails. The manifest is also checked against Slack's whole schema, vendored in
tests/slack_manifest_schema/ (tests/test_manifest.py), which covers `features.agent_view`.
"""

from __future__ import annotations

from typing import Any

# Bot events and the scope Slack requires before it lets an app subscribe (None: no scope needed).
EVENT_SCOPES: dict[str, str | None] = {
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "message.mpim": "mpim:history",
    "app_home_opened": None,
    "agent_session_stopped": None,  # Slack's event reference names no scope
    "app_context_changed": None,  # needs features.agent_view, no scope (Slack's event reference)
    "app_uninstalled": None,
    "tokens_revoked": None,
    "assistant_thread_started": "assistant:write",
    "assistant_thread_context_changed": "assistant:write",
    "reaction_added": "reactions:read",
    "reaction_removed": "reactions:read",
    "member_joined_channel": "channels:read",
    "channel_created": "channels:read",
}

BOT_SCOPES = frozenset(
    {
        "app_mentions:read",
        "assistant:write",
        "bookmarks:read",
        "channels:history",
        "channels:join",
        "channels:read",
        "chat:write",
        "chat:write.customize",
        "chat:write.public",
        "commands",
        "emoji:read",
        "files:read",
        "files:write",
        "groups:history",
        "groups:read",
        "im:history",
        "im:read",
        "im:write",
        "links:read",
        "links:write",
        "metadata.message:read",
        "mpim:history",
        "mpim:read",
        "mpim:write",
        "pins:read",
        "reactions:read",
        "reactions:write",
        "team:read",
        "usergroups:read",
        "users:read",
        "users:read.email",
    }
)

# Web API methods a bot token calls, and the scopes of which it needs one (empty: none).
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "auth.test": frozenset(),
    "chat.postMessage": frozenset({"chat:write"}),
    "chat.update": frozenset({"chat:write"}),
    "chat.delete": frozenset({"chat:write"}),
    "chat.postEphemeral": frozenset({"chat:write"}),
    "chat.startStream": frozenset({"chat:write"}),
    "chat.appendStream": frozenset({"chat:write"}),
    "chat.stopStream": frozenset({"chat:write"}),
    "assistant.threads.setStatus": frozenset({"chat:write", "assistant:write"}),
    "assistant.threads.setTitle": frozenset({"assistant:write"}),
    "assistant.threads.setSuggestedPrompts": frozenset({"assistant:write"}),
    "agents.sessions.setStatus": frozenset({"chat:write"}),
    "agents.sessions.rename": frozenset({"chat:write"}),
    "conversations.replies": frozenset({"channels:history", "groups:history", "im:history", "mpim:history"}),
    "conversations.history": frozenset({"channels:history", "groups:history", "im:history", "mpim:history"}),
    "conversations.info": frozenset({"channels:read", "groups:read", "im:read", "mpim:read"}),
    "conversations.members": frozenset({"channels:read", "groups:read", "im:read", "mpim:read"}),
    "conversations.list": frozenset({"channels:read", "groups:read", "im:read", "mpim:read"}),
    "files.info": frozenset({"files:read"}),
    "files.download": frozenset({"files:read"}),  # url_private_download with the bot token (the fake's name)
    "users.info": frozenset({"users:read"}),
    "reactions.add": frozenset({"reactions:write"}),
    "files.getUploadURLExternal": frozenset({"files:write"}),
    "files.completeUploadExternal": frozenset({"files:write"}),
    "views.open": frozenset(),
    "views.publish": frozenset(),
    "views.update": frozenset(),
    "apps.connections.open": frozenset(),  # the app-level token's connections:write, not a bot scope
}

_URL = {"type": "string", "pattern": r"^https?:\/\/", "maxLength": 3500}
_FLAG = {"type": "boolean"}

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["display_information"],
    "additionalProperties": False,
    "properties": {
        "_metadata": {"type": "object"},
        "app_directory": {"type": "object"},
        "display_information": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 35},
                "description": {"type": "string", "minLength": 1, "maxLength": 140},
                "background_color": {"type": "string", "pattern": "^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$"},
                "long_description": {"type": "string", "minLength": 175, "maxLength": 4000},
            },
        },
        "features": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "app_home": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "home_tab_enabled": _FLAG,
                        "messages_tab_enabled": _FLAG,
                        "messages_tab_read_only_enabled": _FLAG,
                    },
                },
                "bot_user": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["display_name"],
                    "properties": {
                        "display_name": {"type": "string", "minLength": 1, "maxLength": 80},
                        "always_online": _FLAG,
                    },
                },
                "slash_commands": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 50,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["command", "description"],
                        "properties": {
                            "command": {"type": "string", "minLength": 2, "maxLength": 32, "pattern": r"^\/"},
                            "url": {**_URL, "maxLength": 3000},
                            "description": {"type": "string", "minLength": 1, "maxLength": 2000},
                            "usage_hint": {"type": "string", "minLength": 1, "maxLength": 1000},
                            "should_escape": _FLAG,
                        },
                    },
                },
                "functions": {"type": "array"},
                "shortcuts": {"type": "array"},
                "workflow_steps": {"type": "array"},
                "unfurl_domains": {"type": "array"},
                "assistant_view": {"type": "object"},
                "agent_view": {"type": "object"},  # checked by Slack's own schema (test_manifest)
            },
        },
        "oauth_config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "redirect_urls": {"type": "array", "items": {"type": "string", "maxLength": 2500}},
                "scopes": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "bot": {
                            "type": "array",
                            "maxItems": 255,
                            "uniqueItems": True,
                            "items": {"type": "string", "maxLength": 50, "enum": sorted(BOT_SCOPES)},
                        },
                        "user": {"type": "array", "items": {"type": "string", "maxLength": 50}},
                        "bot_optional": {"type": "array", "items": {"type": "string", "maxLength": 50}},
                        "user_optional": {"type": "array", "items": {"type": "string", "maxLength": 50}},
                    },
                },
                "token_management_enabled": _FLAG,
                "pkce_enabled": _FLAG,
            },
        },
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "allowed_ip_address_ranges": {"type": "array"},
                "event_subscriptions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "request_url": _URL,
                        "bot_events": {
                            "type": "array",
                            "maxItems": 100,
                            "uniqueItems": True,
                            "items": {"type": "string", "maxLength": 50, "enum": sorted(EVENT_SCOPES)},
                        },
                        "user_events": {"type": "array", "items": {"type": "string", "maxLength": 50}},
                        "metadata_subscriptions": {"type": "array"},
                    },
                },
                "incoming_webhooks": {"type": "object"},
                "interactivity": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["is_enabled"],
                    "properties": {
                        "is_enabled": _FLAG,
                        "request_url": _URL,
                        "message_menu_options_url": _URL,
                    },
                },
                "org_deploy_enabled": _FLAG,
                "socket_mode_enabled": _FLAG,
                "is_hosted": _FLAG,
                "token_rotation_enabled": _FLAG,
                "siws_links": {"type": "object"},
                "hermes_app_type": {"type": "string"},
                "function_runtime": {"type": "string"},
                "is_mcp_enabled": _FLAG,
            },
        },
        "functions": {"type": "object"},
        "workflows": {"type": "object"},
        "datastores": {"type": "object"},
        "outgoing_domains": {"type": "array"},
        "types": {"type": "object"},
        "external_auth_providers": {"type": "object"},
    },
}
