"""The domain layers stay free of Slack and HTTP libraries (design.md's import rules)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "bot.conversation.service",
        "bot.conversation.turns",
        "bot.conversation.access",
        "bot.conversation.settings_store",
        "bot.conversation.summaries",
        "bot.files.extract",
        "bot.conversation.approvals",
        "bot.conversation.shared_order",
        "bot.conversation.handoff",
        "bot.usage.report",
        "bot.usage.personal",
        "bot.usage.home",
    ],
)
def test_the_domain_imports_no_slack_or_http_library(module):
    probe = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('httpx', 'slack_sdk', 'slack_bolt', 'aiohttp') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_nothing_connects_or_reads_the_environment_at_import():
    probe = "import os; os.environ.clear(); import bot.app, bot.cli, bot.web; print('ok')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
