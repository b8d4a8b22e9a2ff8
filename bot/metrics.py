"""Prometheus metrics, on a registry per process (tests build several apps in one interpreter)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from bot.conversation.service import TurnOutcome

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)

UPSTREAM_ERROR_KINDS = frozenset(
    {"auth", "credits", "bad_request", "rate_limited", "unavailable", "timeout", "interrupted"}
)

# Label values and the gauge's value, read when Prometheus scrapes.
Samples = Callable[[], Iterable[tuple[Sequence[str], float]]]


class _ReadAtScrape:
    """A gauge read from live state at scrape time, so no polling loop has to keep it fresh."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], read: Samples) -> None:
        self._name, self._documentation, self._labels, self._read = name, documentation, labels, read

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labels)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, value in self._read():
            family.add_metric(list(values), value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # What the default registry has and a custom one lacks: CPU, memory, file descriptors, GC.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.events_received = Counter(
            "slackbot_events_received", "Slack events received", ["type"], registry=r
        )
        self.events_ignored = Counter(
            "slackbot_events_ignored", "Slack events ignored", ["reason"], registry=r
        )
        self.replies = Counter("slackbot_replies", "Replies finished, by outcome", ["outcome"], registry=r)
        self.ttft = Histogram(
            "slackbot_time_to_first_token_seconds",
            "Upstream time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reply_duration = Histogram(
            "slackbot_reply_duration_seconds", "Event to final edit", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.slack_calls = Counter(
            "slackbot_slack_calls", "Slack Web API calls by the renderer", ["method", "outcome"], registry=r
        )
        self.slack_call_seconds = Histogram(
            "slackbot_slack_call_seconds", "Slack Web API call latency", ["method"], registry=r
        )
        self.upstream_errors = Counter("slackbot_upstream_errors", "AI/ML API errors", ["kind"], registry=r)
        self.credits = Counter("slackbot_credits_used", "AI/ML API credits spent", registry=r)
        self.tokens = Counter("slackbot_tokens", "Tokens used", ["kind"], registry=r)
        self.active_streams = Gauge("slackbot_active_streams", "Replies streaming now", registry=r)
        self.maintenance_failures = Counter(
            "slackbot_maintenance_runs_failed", "Maintenance runs that failed", registry=r
        )
        self.maintenance_last_success = Gauge(
            "slackbot_maintenance_last_success_timestamp_seconds",
            "Unix time of the last successful maintenance run",
            registry=r,
        )
        self.usage_spooled = Counter(
            "slackbot_usage_rows_spooled",
            "Ledger writes kept in the spool while the database was away",
            registry=r,
        )
        self.usage_dropped = Counter(
            "slackbot_usage_rows_dropped", "Ledger writes lost (spool full or unwritable)", registry=r
        )
        self.turns_waiting = Gauge(
            "slackbot_turns_waiting",
            "Turns admitted and waiting for an earlier turn of their thread",
            registry=r,
        )
        self.feedback = Counter(
            "slackbot_feedback", "Feedback button presses stored, by value (up/down)", ["value"], registry=r
        )
        self.turns_running = Gauge("slackbot_turns_running", "Turns holding their thread now", registry=r)
        self.files_read = Counter(
            "slackbot_files_read",
            "Attached files, by kind and what became of them",
            ["kind", "outcome"],
            registry=r,
        )
        self.slack_reads = Counter(
            "slackbot_slack_reads",
            "Slack reads for a person (tools, summaries), by what was read and the outcome",
            ["what", "outcome"],
            registry=r,
        )
        self.summaries = Counter(
            "slackbot_summaries", "Summaries asked for, by outcome", ["outcome"], registry=r
        )
        self.tool_calls = Counter(
            "slackbot_tool_calls",
            "Tool calls the model made, by tool and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_call_seconds = Histogram(
            "slackbot_tool_call_seconds", "Time one tool call took", ["tool"], registry=r
        )

        # MCP: slackbot_mcp_server_up{server} and _tools{server} are read at scrape (bot.mcp.toolbox).
        self.mcp_tool_calls = Counter(
            "slackbot_mcp_tool_calls",
            "MCP tool calls by server and outcome (ok, error, timeout, failed, unavailable)",
            ["server", "outcome"],
            registry=r,
        )
        self.mcp_tool_call_seconds = Histogram(
            "slackbot_mcp_tool_call_seconds",
            "MCP tool call duration",
            ["server"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_approvals = Counter(
            "slackbot_tool_approvals", "Approval requests by decision", ["decision"], registry=r
        )
        self.home_charts = Counter(
            "slackbot_home_charts", "App Home chart uploads and failures, by outcome", ["outcome"], registry=r
        )

    def tool_call_ended(self, tool: str, outcome: str, seconds: float) -> None:
        """`tool` is a configured tool's name, or "unknown" for one the model made up."""
        self.tool_calls.labels(tool, outcome).inc()
        self.tool_call_seconds.labels(tool).observe(seconds)

    def observe_slack_call(self, method: str, outcome: str, seconds: float) -> None:
        """Edits that landed are `chat.update` + `ok`; Slack's 429s are outcome `ratelimited`."""
        self.slack_calls.labels(method, outcome).inc()
        self.slack_call_seconds.labels(method).observe(seconds)

    def event_ignored(self, reason: str) -> None:
        self.events_ignored.labels(reason).inc()

    def turn_ended(self, outcome: TurnOutcome, seconds: float) -> None:
        """A reply ended (`seconds` from the event to its end): its outcome, latency, tokens and cost."""
        self.reply_duration.observe(seconds)
        self.replies.labels(outcome.status.value).inc()
        if outcome.label in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(outcome.label).inc()
        result = outcome.usage
        if result is None:
            return
        if result.ttft_ms is not None:
            self.ttft.observe(result.ttft_ms / 1000)
        if result.usage.credits_used:
            self.credits.inc(result.usage.credits_used)
        for kind, value in (
            ("prompt", result.usage.prompt_tokens),
            ("completion", result.usage.completion_tokens),
        ):
            if value:
                self.tokens.labels(kind).inc(value)

    def file_read(self, kind: str, outcome: str) -> None:
        self.files_read.labels(kind, outcome).inc()

    def slack_read(self, what: str, outcome: str) -> None:
        self.slack_reads.labels(what, outcome).inc()

    def summary_ended(self, outcome: TurnOutcome) -> None:
        """A summary's completion: counted with the replies' cost and tokens, as the ledger counts it."""
        self.summaries.labels(outcome.label if outcome.label in UPSTREAM_ERROR_KINDS else "complete").inc()
        if outcome.label in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(outcome.label).inc()
        usage = outcome.usage.usage if outcome.usage is not None else None
        if usage is None:
            return
        if usage.credits_used:
            self.credits.inc(usage.credits_used)
        for kind, value in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
            if value:
                self.tokens.labels(kind).inc(value)

    def mcp_tool_call(self, server: str, outcome: str, seconds: float) -> None:
        self.mcp_tool_calls.labels(server, outcome).inc()
        self.mcp_tool_call_seconds.labels(server).observe(seconds)

    def tool_approval(self, decision: str) -> None:
        """`approved`, `denied`, `timed_out` or `failed` (the request could not be posted)."""
        self.tool_approvals.labels(decision).inc()

    def home_chart(self, outcome: str) -> None:
        """The admins' App Home chart: `uploaded`, `draw_failed`, `upload_failed` or `refused`."""
        self.home_charts.labels(outcome).inc()

    def maintenance_failed(self) -> None:
        self.maintenance_failures.inc()

    def maintenance_succeeded(self) -> None:
        self.maintenance_last_success.set_to_current_time()

    def usage_row_spooled(self) -> None:
        self.usage_spooled.inc()

    def usage_row_dropped(self) -> None:
        self.usage_dropped.inc()

    def read_at_scrape(
        self, name: str, documentation: str, read: Samples, labels: Sequence[str] = ()
    ) -> None:
        """Export a gauge whose samples `read()` returns at each scrape (label values, value)."""
        self.registry.register(_ReadAtScrape(name, documentation, labels, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
