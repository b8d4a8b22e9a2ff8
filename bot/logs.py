"""Logging, configured once: JSON lines (or console) through structlog, with per-event context.

Listeners bind team/channel/thread with `bind_context`; every log line in that task carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

bind_context = structlog.contextvars.bind_contextvars


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (request bodies at DEBUG) stays out of INFO logs.
    for noisy in (
        "slack_bolt",
        "slack_sdk",
        "httpx",
        "httpcore",
        "httpx2",  # the MCP SDK's HTTP client logs every request at INFO
        "httpcore2",
        "mcp",
        "aiohttp.access",
        "apscheduler",
        "alembic.runtime.plugins",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
