"""Composition root: builds the services from Settings and runs the bot until a signal stops it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.conversation.access import Access, AccessRules
from bot.conversation.admission import Admission, QuotaStage
from bot.conversation.approvals import ApprovalBook
from bot.conversation.channel_settings import ChannelSettingsSource
from bot.conversation.ledger import Ledger
from bot.conversation.notices import NoticeLog
from bot.conversation.ordering import Line, TurnOrder
from bot.conversation.quota import Quotas
from bot.conversation.quota_gate import QuotaGate
from bot.conversation.quota_home import QuotaAllowances, SentAlerts
from bot.conversation.service import ConversationService, ServiceConfig
from bot.conversation.settings_rules import SettingsBounds
from bot.conversation.settings_store import ChannelSettingsStore
from bot.conversation.summaries import Summarizer
from bot.conversation.tool_loop import ToolLimits
from bot.conversation.tools import Approver, ToolBox
from bot.conversation.turns import RunningReplies, Turns
from bot.event_loop import loop_name
from bot.files.extract import TextCaps
from bot.jobs.alerts import AlertJob
from bot.jobs.digest import DigestJob
from bot.jobs.maintenance import Maintenance
from bot.jobs.scheduler import build_scheduler
from bot.llm.client import AimlClient
from bot.mcp.toolbox import McpToolBox, start_mcp
from bot.metrics import Metrics, Samples
from bot.replicas import Replicas, replicas
from bot.settings import Settings, SettingsError
from bot.slack.admin_access import AdminAccess
from bot.slack.agent_sessions import AgentSessions
from bot.slack.agent_view import AgentView, load_prompts, register_agent_view
from bot.slack.app_home import AppHome, register_app_home
from bot.slack.approval import SlackApprover, register_approval
from bot.slack.edit_budget import EditBudget, EditBudgets
from bot.slack.feedback import register_feedback
from bot.slack.files import FileLimits, SlackFiles
from bot.slack.glm_command import GlmCommand, register_glm_command
from bot.slack.handler import EdgeConfig, SlackEdge, admin_contact
from bot.slack.home_chart import HomeChart
from bot.slack.listeners import register_listeners
from bot.slack.people import UserDirectory
from bot.slack.quota_command import QuotaCommands, add_quota_subcommands
from bot.slack.read_access import ReadAccess
from bot.slack.read_tools import read_tools_of
from bot.slack.reading import ReadLimits, SlackReader
from bot.slack.shared_budget import shared_budgets
from bot.slack.stop import RunningTurns, StopControl, register_stop_controls
from bot.slack.summaries import Summaries, register_summaries
from bot.slack.usage_command import register_usage_command
from bot.storage.db import check_database, create_engine, describe, session_factory
from bot.storage.migrate import prepare_schema
from bot.storage.signals import SignalHub
from bot.storage.spool import Spool
from bot.tools.box import EnabledTools, StaticToolBox
from bot.tools.clock import CurrentTime
from bot.tools.fetch import FetchLimits, FetchUrl
from bot.usage.limits import DefaultLimits
from bot.web import WebServer

log = logging.getLogger(__name__)

# After the grace period: time for interrupted replies to post their note. The container's stop
# timeout (docker-compose.yml, README) covers the grace period plus this plus closing.
INTERRUPT_WAIT = 10.0


@dataclass
class Core:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    llm: AimlClient
    service: ConversationService
    ledger: Ledger
    quota: Quotas
    tools: EnabledTools  # every tool of a turn; `names()` for the channel settings form


def access_rules(settings: Settings) -> AccessRules:
    return AccessRules(
        allowed_channels=settings.allowed_channels,
        blocked_channels=settings.blocked_channels,
        allowed_users=settings.allowed_users,
        blocked_users=settings.blocked_users,
        allow_guests=settings.allow_guests,
        allow_external=settings.allow_external,
        dms_enabled=settings.dms_enabled,
    )


def admission_pipeline(
    settings: Settings,
    core: Core,
    metrics: Metrics | None = None,
    *,
    contact: str = "an admin",
    channels: ChannelSettingsSource | None = None,
    quota: QuotaStage | None = None,
    running: RunningReplies | None = None,
    order: Line | None = None,
) -> Turns:
    """The domain's path from an arrival to a reply, the same for Slack and the terminal.

    `contact` is who a refused person should ask, as the surface writes it; `channels` is where the
    channels' own settings come from (the defaults everywhere when None); `quota` reserves credits;
    `running` learns which replies stream now (what the stop controls can stop); `order` is the
    lines of turns (this process's own when None; replicas share theirs through PostgreSQL).
    """
    order = order or TurnOrder()
    admission = Admission(
        core.sessions,
        order,
        thread_followups=settings.thread_followups,
        channels=channels,
        stages=[Access(access_rules(settings), contact=contact)],
        quota=quota,
    )
    turns = Turns(
        admission, core.service, observer=metrics, notices=NoticeLog(core.sessions), running=running
    )
    if metrics is not None:
        # Read from the line itself at scrape time, so the gauges are right on every path.
        metrics.turns_waiting.set_function(lambda: order.waiting)
        metrics.turns_running.set_function(lambda: order.running)
        metrics.active_streams.set_function(lambda: turns.streaming)
    return turns


@asynccontextmanager
async def core_services(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    tool_boxes: Sequence[ToolBox] = (),
    approver: Approver | None = None,
) -> AsyncIterator[Core]:
    """Database (migrated, or checked when MIGRATE_ON_START is off), AI/ML API client, ledger and
    conversation service; closed on exit."""
    settings.require("aimlapi_key")
    assert settings.aimlapi_key is not None
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    await check_database(engine)
    await prepare_schema(settings.database_url, migrate=settings.migrate_on_start)
    llm = AimlClient(
        api_key=settings.aimlapi_key.get_secret_value(),
        base_url=settings.aimlapi_base_url,
        model=settings.aimlapi_model,
        connect_timeout=settings.llm_connect_timeout,
        read_timeout=settings.llm_read_timeout,
        total_timeout=settings.llm_total_timeout,
        max_retries=settings.llm_max_retries,
    )
    config = ServiceConfig(
        settings.system_prompt(),
        settings.llm_context_window,
        settings.llm_max_output_tokens,
        allowed_models=settings.models_allowed,
    )
    sessions = session_factory(engine)
    ledger = Ledger(sessions, Spool(settings.spool_dir, settings.usage_spool_max_rows), events=metrics)
    ledger.start()
    if metrics is not None:
        gauge = "slackbot_usage_spool_rows"
        metrics.read_at_scrape(gauge, "Writes waiting in the spool", lambda: [([], float(ledger.pending))])
    fetch = FetchUrl(
        FetchLimits(settings.fetch_max_bytes, settings.fetch_timeout, settings.fetch_allow_private)
    )
    # `tool_boxes` (Slack-reading tools, MCP servers) join the built-ins; TOOLS_ENABLED filters all.
    tools = EnabledTools(StaticToolBox([CurrentTime(), fetch]), *tool_boxes, enabled=settings.tools_enabled)
    limits = ToolLimits(settings.tools_max_rounds, settings.tools_call_timeout, settings.tools_turn_timeout)
    service = ConversationService(
        sessions,
        llm,
        config,
        ledger=ledger,
        tools=tools,
        tool_limits=limits,
        tool_events=metrics,
        approver=approver,
    )
    quota = quotas(settings, sessions)
    try:
        yield Core(engine, sessions, llm, service, ledger, quota, tools)
    finally:
        await ledger.aclose()
        await fetch.aclose()
        await llm.aclose()
        await engine.dispose()


def quota_gate(settings: Settings, core: Core) -> QuotaGate:
    """The admission pipeline's quota stage over the process's quotas."""
    return QuotaGate(core.quota, max_output_tokens=settings.llm_max_output_tokens)


def quotas(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Quotas:
    defaults = DefaultLimits(
        user_day=settings.quota_user_daily_credits,
        user_month=settings.quota_user_monthly_credits,
        channel_day=settings.quota_channel_daily_credits,
        workspace_month=settings.budget_workspace_monthly_credits,
    )
    ttl = timedelta(seconds=settings.quota_reservation_ttl_seconds)
    return Quotas(sessions, defaults, settings.digest_zone, reservation_ttl=ttl)


def slack_client(settings: Settings) -> AsyncWebClient:
    assert settings.slack_bot_token is not None
    return AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)


async def check_slack(client: AsyncWebClient) -> AsyncSlackResponse:
    """auth.test at start-up: a bad token or unreachable Slack is one clear line, not a traceback."""
    try:
        auth = await client.auth_test()
    except SlackApiError as exc:
        raise SettingsError(
            f"SLACK_BOT_TOKEN: Slack rejected the token ({exc.response.get('error')})"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise SettingsError(f"SLACK_API_URL: cannot reach Slack at {client.base_url}: {exc}") from None
    return auth


async def open_socket_url(client: AsyncWebClient, app_token: str) -> str:
    """apps.connections.open at start-up: a bad app token is one clear line, not an endless retry loop."""
    try:
        response = await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        raise SettingsError(
            f"SLACK_APP_TOKEN: Slack rejected the app-level token ({exc.response.get('error')}); "
            "it needs the connections:write scope and Socket Mode enabled for the app"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise SettingsError(f"SLACK_API_URL: cannot reach Slack at {client.base_url}: {exc}") from None
    return str(response["url"])


def build_bolt(settings: Settings, client: AsyncWebClient, auth: AsyncSlackResponse) -> AsyncApp:
    secret = settings.slack_signing_secret
    bolt = AsyncApp(
        client=client,
        signing_secret=secret.get_secret_value() if secret else "",
        # Signature checks are Bolt's; in Socket Mode there is no signature to check.
        request_verification_enabled=not settings.socket_mode,
        # Unmatched requests are answered 404 by Bolt; our catch-all listener acks unknown events.
        raise_error_for_unhandled_request=False,
    )
    # Bolt's single-workspace authorization calls auth.test on the first events until one answer is
    # cached: a cold replica's burst called it once per event, Slack answered some with 429, and Bolt
    # dropped those events with a 200 (never retried). It gets the start-up auth.test's answer; Bolt
    # has no public seam for it.
    for middleware in bolt._async_middleware_list:
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            middleware.auth_test_result = auth
    return bolt


class BotRuntime:
    """Everything `run` starts, with start/stop so tests and the benchmark drive the real thing."""

    def __init__(self, settings: Settings, *, channel_settings: ChannelSettingsSource | None = None) -> None:
        """`channel_settings`: where admission reads each channel's settings instead of the database
        (a fixed table in tests); the `/glm settings` store is the source when None."""
        settings.require("slack_bot_token", "aimlapi_key")
        if not settings.socket_mode:
            settings.require("slack_signing_secret")
        self.settings = settings
        self.prompts = load_prompts(settings.agent_prompts_file)  # a bad file stops start-up at once
        self._channel_source = channel_settings
        self.metrics = Metrics()
        self.client = slack_client(settings)
        self.port: int | None = None
        self._stack = AsyncExitStack()
        self._web: WebServer | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.alerts: AlertJob | None = None
        self.turns: Turns | None = None
        self.running: RunningTurns | None = None
        self.core: Core | None = None
        self.channel_settings: ChannelSettingsStore | None = None
        self.home: AppHome | None = None  # its `allowances` and `alerts` seams are set by the quotas
        self.glm: GlmCommand | None = None  # `/glm` subcommands: self.glm.add(word, Subcommand(...))
        self.reader: SlackReader | None = None  # Slack reading for a person: tools and summaries
        self.mcp: McpToolBox | None = None  # the MCP servers' tools (a ToolBox for the tool loop)
        self.approver: SlackApprover | None = None  # asks in the thread before a tool needing approval
        self.replicas: Replicas | None = None  # PostgreSQL: turn order and stop presses across replicas

    async def start(self) -> int:
        settings = self.settings
        # One connection pool for every Web API call (slack_sdk opens a session per call otherwise).
        session = self.client.session = aiohttp.ClientSession()
        self._stack.push_async_callback(session.close)
        auth = await check_slack(self.client)
        team = str(auth.get("team_id", ""))
        # MCP servers connect in the background (start-up never waits for one); a mistake in their
        # file stops start-up here with one line.
        self.mcp = await start_mcp(settings, self.metrics)
        self._stack.push_async_callback(self.mcp.aclose)
        self.approver = SlackApprover(self.client, settings.tool_approval_timeout, self.metrics)
        self._stack.push_async_callback(self.approver.aclose)
        people = UserDirectory(self.client)  # one users.info cache: turns, /usage, the digest, tools
        self.reader = SlackReader(
            self.client,
            people,
            ReadAccess(self.client),
            ReadLimits(settings.slack_read_max_messages, settings.slack_read_max_chars),
            metrics=self.metrics,
        )
        boxes = (StaticToolBox(read_tools_of(self.reader)), self.mcp)
        self.core = core = await self._stack.enter_async_context(
            core_services(settings, self.metrics, tool_boxes=boxes, approver=self.approver)
        )
        log.info("database ready at %s", describe(core.engine.url))
        # Answers through the database: a press decides whichever replica it reaches.
        self.approver.book = ApprovalBook(core.sessions, settings.tool_approval_timeout)
        bolt = build_bolt(settings, self.client, auth)
        # PostgreSQL: every replica draws on the same rows (bot.slack.shared_budget); SQLite: its own.
        shared = await self._stack.enter_async_context(shared_budgets(core.engine))
        budgets = EditBudgets(settings.slack_edits_per_minute, settings.slack_edit_burst, shared=shared)
        export_live_state(self.metrics, budgets, core.engine)
        self.channel_settings = channel_settings = ChannelSettingsStore(core.sessions)
        contact = admin_contact(settings.admin_user_ids)
        # What the stop controls can stop (bot.slack.stop); sessions go `processing` while answering.
        self.running = RunningTurns(self.client, AgentSessions(budgets))
        self.replicas = replicas(core.engine, core.sessions, settings.database_url)
        if self.replicas is not None:
            self._stack.push_async_callback(self.replicas.aclose)  # before the database closes
        self.turns = admission_pipeline(
            settings,
            core,
            self.metrics,
            contact=contact,
            channels=self._channel_source or channel_settings,
            quota=quota_gate(settings, core),
            running=self.running,
            order=self.replicas.order if self.replicas is not None else None,
        )
        agent_view = AgentView(core.sessions, self.prompts, self.metrics)
        edge = SlackEdge(
            self.turns,
            people=people,
            budgets=budgets,
            metrics=self.metrics,
            config=EdgeConfig(
                settings.stream_update_interval,
                settings.thread_backfill_limit,
                admins=settings.admin_user_ids,
                streaming=settings.slack_streaming,
                stream_message_chars=settings.slack_stream_message_chars,
            ),
            agent_view=agent_view,
            files=SlackFiles(self.client, file_limits(settings), metrics=self.metrics),
        )
        if self.replicas is not None:
            # Waiting turns of replicas that died or drain are answered here (bot.conversation.handoff).
            bot_user_id = str(auth.get("user_id") or "") or None
            self.replicas.order.adopt_with(lambda t, r: edge.adopt(t, r, self.client, bot_user_id))
        maintenance = Maintenance(
            core.sessions,
            self.client,
            model=settings.aimlapi_model,
            single_process=core.engine.dialect.name == "sqlite",
            ledger=core.ledger,
            budgets=budgets,
            metrics=self.metrics,
            legacy_after=timedelta(seconds=settings.llm_total_timeout + 120),
            presence=None if self.replicas is None else _listener_steady(self.replicas.signals),
        )
        await maintenance.at_start_up()  # logs and counts its own failures: start-up goes on
        self._maintenance = asyncio.create_task(maintenance.run_forever(), name="maintenance")
        access = AdminAccess(people, settings.admin_user_ids)
        self.home = AppHome(
            core.sessions,
            access,
            people,
            channel_settings,
            settings.digest_zone,
            allowances=QuotaAllowances(core.quota),
            alerts=SentAlerts(core.sessions, settings.digest_zone),
            chart=HomeChart(
                core.sessions,
                settings.digest_zone,
                monthly_budget=core.quota.defaults.workspace_month,
                events=self.metrics,
            ),
        )
        # Before register_listeners: Bolt runs the first listener that matches, and its catch-all
        # would take app_home_opened and agent_session_stopped otherwise.
        register_app_home(bolt, self.home)
        register_stop_controls(
            bolt,
            StopControl(
                self.running,
                people,
                settings.admin_user_ids,
                self.replicas.relay if self.replicas is not None else None,
            ),
        )
        register_agent_view(bolt, agent_view)
        register_feedback(bolt, core.sessions, self.metrics)
        register_approval(bolt, self.approver)
        register_listeners(bolt, edge)
        bounds = SettingsBounds(
            settings.aimlapi_model, settings.models_allowed, settings.llm_max_output_tokens
        )
        self.glm = GlmCommand(access, channel_settings, bounds, self.home, tool_names=core.tools.names)
        add_quota_subcommands(self.glm, QuotaCommands(core.sessions, core.quota))
        summaries = Summaries(
            self.reader,
            Summarizer(core.llm, core.ledger, observer=self.metrics),
            people,
            frozenset(settings.admin_user_ids),
            # Whoever the access rules keep from asking here gets no summary either.
            stages=(Access(access_rules(settings), contact=contact),),
            channels=channel_settings,
            quota=quota_gate(settings, core),
        )
        self.glm.add("summarize", summaries.subcommand())
        register_summaries(bolt, summaries)
        register_glm_command(bolt, self.glm)
        register_usage_command(bolt, core.sessions, settings.digest_zone, people=people, quota=core.quota)
        if settings.usage_digest_channel:
            job = DigestJob(
                sessions=core.sessions,
                client=self.client,
                channel=settings.usage_digest_channel,
                tz=settings.digest_zone,
                balance=core.llm,
                directory=people,
                limits=core.quota.defaults,
            )
            self._scheduler = build_scheduler(job, run_at=settings.digest_time, tz=settings.digest_zone)
        if settings.admin_alert_channel:
            self.alerts = AlertJob(
                core.sessions,
                self.client,
                settings.admin_alert_channel,
                core.quota,
                spike_minimum=settings.spike_alert_min_credits,
                people=people,
            )
            core.quota.on_settled = self.alerts.check_soon
            self._scheduler = self._scheduler or AsyncIOScheduler(timezone=settings.digest_zone)
            self.alerts.schedule(self._scheduler)
        if self._scheduler is not None:
            self._scheduler.start()
        self._web = WebServer(core.engine, self.metrics, None if settings.socket_mode else bolt)
        self.port = await self._web.start(settings.host, settings.port)
        if settings.socket_mode:
            assert settings.slack_app_token is not None
            app_token = settings.slack_app_token.get_secret_value()
            # slack_sdk retries a failed apps.connections.open every 10 s forever, logging a traceback:
            # open the first URL ourselves so a rejected token ends start-up with one clear line.
            wss_url = await open_socket_url(self.client, app_token)
            self._socket = AsyncSocketModeHandler(bolt, app_token)
            self._socket.client.wss_uri = wss_url  # connect() uses it instead of opening another
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
        # Start-up's objects (modules, Bolt, SQLAlchemy's caches) live for the whole process: keep them
        # out of the collector's full passes, whose pauses otherwise grow with them and stall every
        # request on the loop (measured in the benchmark's ack p99).
        gc.freeze()
        log.info(
            "bot running",
            extra={"team": team, "port": self.port, "socket_mode": settings.socket_mode, "loop": loop_name()},
        )
        return self.port

    async def stop(self) -> None:
        """Stop taking events, let replies finish within the grace period, then close everything."""
        if self._web is not None:
            self._web.accepting = False
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._maintenance is not None:
            self._maintenance.cancel()
            # A recovery cut short may leave rows `interrupted` without their Slack note: let it end.
            await asyncio.wait([self._maintenance], timeout=5)
        if self.replicas is not None:
            await self.replicas.order.hand_off_waiting()  # answered by the other replicas at once
        try:
            if self.turns is not None:
                await _drain(self.turns, self.settings.shutdown_grace_seconds)
            if self.alerts is not None:
                # Checks started by the last replies use the database, which closes next.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.alerts.idle(), timeout=INTERRUPT_WAIT)
            if self.running is not None:
                await self.running.aclose()
            if self._web is not None:
                await self._web.stop()
        finally:
            # Whatever went wrong above, the replicas' places, the budgets' pool and the database
            # are closed: a place left behind would hold its thread for a lease.
            await self._stack.aclose()


def file_limits(settings: Settings) -> FileLimits:
    caps = TextCaps(per_file=settings.file_text_max_chars, per_turn=settings.files_text_max_chars)
    return FileLimits(settings.file_max_bytes, settings.file_download_timeout, caps)


def export_live_state(metrics: Metrics, budgets: EditBudgets, engine: AsyncEngine) -> None:
    """Gauges read at scrape time: each workspace's edit budget and the database pool."""

    def tokens() -> list[tuple[list[str], float]]:
        return [([team], budget.available()) for team, budget in budgets.by_team().items()]

    def waiters() -> list[tuple[list[str], float]]:
        return [([team], float(budget.waiting)) for team, budget in budgets.by_team().items()]

    metrics.read_at_scrape(
        "slackbot_edit_budget_tokens", "chat.update edits a workspace may start now", tokens, ["team"]
    )
    metrics.read_at_scrape(
        "slackbot_edit_budget_waiters", "Replies waiting for a chat.update slot", waiters, ["team"]
    )

    def method_samples(read: Callable[[EditBudget], float]) -> Samples:
        return lambda: [([team, method], read(b)) for (team, method), b in budgets.by_method().items()]

    labels = ["team", "method"]
    metrics.read_at_scrape(
        "slackbot_slack_budget_tokens",
        "Calls of a Slack method a workspace may start now (every budgeted method)",
        method_samples(lambda b: b.available()),
        labels,
    )
    metrics.read_at_scrape(
        "slackbot_slack_budget_waiters",
        "Replies waiting for a call of a Slack method",
        method_samples(lambda b: float(b.waiting)),
        labels,
    )
    metrics.read_at_scrape(
        "slackbot_slack_budget_rate_per_minute",
        "Calls a minute a budget allows now (lowered after 429s, raised back slowly)",
        method_samples(lambda b: b.rate_per_minute),
        labels,
    )
    checked_out = getattr(engine.pool, "checkedout", None)  # queue pools only (both our dialects)
    if callable(checked_out):
        metrics.read_at_scrape(
            "slackbot_db_pool_connections_in_use",
            "Database connections checked out of the pool",
            lambda: [([], float(checked_out()))],
        )


async def run_bot(settings: Settings) -> int:
    runtime = BotRuntime(settings)
    try:
        await runtime.start()
        await _wait_for_signal()
        log.info("shutting down: finishing in-flight replies")
    finally:
        await runtime.stop()
    return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# After an outage every replica's listener was away: another's absence means it died only once this
# one has been back this long (each reconnects within about a second).
PRESENCE_STEADY_SECONDS = 10.0


def _listener_steady(signals: SignalHub) -> Callable[[], bool]:
    return lambda: signals.steady(PRESENCE_STEADY_SECONDS)


async def _drain(turns: Turns, grace: float) -> None:
    """Let replies finish for `grace` seconds; the rest end with an interrupted note."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Listeners of events acked just before shutdown register a moment later: let them.
    await asyncio.sleep(min(0.2, grace))
    while turns.active and loop.time() < deadline:
        await asyncio.wait(set(turns.active), timeout=deadline - loop.time())
    still_running = set(turns.active)
    for task in still_running:
        task.cancel()
    if still_running:
        await asyncio.wait(still_running, timeout=INTERRUPT_WAIT)
