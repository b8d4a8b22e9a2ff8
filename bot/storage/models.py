"""SQLAlchemy 2 typed models: conversations, messages, the usage ledger, dedupe and digest locks,
per-channel settings and the admin audit log, agent context, feedback votes, refusal notices, tool calls,
tool-call approvals, the places of turns waiting or running in each thread and the Slack budgets shared
by replicas."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConversationKind(enum.StrEnum):
    CHANNEL = "channel"
    DM = "dm"
    TERMINAL = "terminal"


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(enum.StrEnum):
    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    INTERRUPTED = "interrupted"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored by value, as plain strings: no native PostgreSQL enum to migrate when a value is added.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class UTCDateTime(TypeDecorator[datetime]):
    """`timestamptz` on PostgreSQL. SQLite keeps no offset: store UTC there and read it back aware, so
    both databases return aware UTC datetimes and compare bound datetimes in the same time zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    # `dialect` is part of TypeDecorator's signature; the conversion is the same on every database.
    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        # A naive value is taken as UTC, as PostgreSQL's timestamptz does with a UTC session.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_TS = UTCDateTime()


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "thread_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str] = mapped_column(String(32))
    kind: Mapped[ConversationKind] = mapped_column(_enum(ConversationKind, "conversation_kind"))
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, onupdate=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_order", "conversation_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(_enum(Role, "message_role"))
    content: Mapped[str] = mapped_column(Text, default="")
    slack_ts: Mapped[str | None] = mapped_column(String(32), index=True)
    # All Slack message ts of a reply split over several messages, in order.
    slack_ts_all: Mapped[list[str] | None] = mapped_column(JSON)
    # Where each Slack message of the reply begins in `content`, and the limit the renderer used:
    # [{"ts": ..., "start": ..., "reopen": ..., "limit": ...}, ...]. Recovery edits the last one.
    slack_parts: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    user_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus, "message_status"), index=True)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    # The process streaming this reply renews the lease; recovery touches only replies whose lease
    # expired (the process died). NULL: written by code older than leases, taken as expired.
    lease_expires_at: Mapped[datetime | None] = mapped_column(_TS)
    # The upstream call's X-Client-Request-Id: ties the reply to its ledger row (written once).
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The tool rounds before this answer (bot.conversation.tool_history): the model's calls and the
    # results it was sent, replayed in later turns. NULL: the answer used no tools.
    tool_exchange: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)


class UsageRecord(Base):
    """One row per upstream completion; kept when message content is purged. Unknown is NULL, not 0."""

    __tablename__ = "usage_records"
    # One row per completion: the spool replays and recovery insert by this id without doubling.
    # The quota check sums one person's, one channel's or the workspace's spend in a day or month on
    # every turn: without the workspace's index that sum read the month's whole ledger.
    __table_args__ = (
        UniqueConstraint("client_request_id"),
        Index("ix_usage_records_user_created", "user_id", "created_at"),
        Index("ix_usage_records_channel_created", "channel_id", "created_at"),
        Index("ix_usage_records_team_created", "team_id", "created_at", "credits_used"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str | None] = mapped_column(String(32))
    channel_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    model_requested: Mapped[str] = mapped_column(String(128))
    model_returned: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    credits_used: Mapped[int | None] = mapped_column(BigInteger)
    usd_spent: Mapped[float | None] = mapped_column(Numeric(18, 9, asdecimal=False))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    client_request_id: Mapped[str | None] = mapped_column(String(128))
    inference_id: Mapped[str | None] = mapped_column(String(128))
    # True when the token counts are our estimate: the model reported none (a stopped stream).
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, index=True)


class ToolCallRecord(Base):
    """One tool call the model made: what ran, how long, how it ended; never its arguments or result."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )  # the assistant reply of the turn
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    round: Mapped[int] = mapped_column(Integer)  # 1 for the turn's first model call
    tool: Mapped[str] = mapped_column(String(128))
    arguments_sha256: Mapped[str] = mapped_column(String(64))  # of the arguments text as sent
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | error | timeout | denied | cancelled
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, index=True)


class ProcessedEvent(Base):
    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("channel_id", "message_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    channel_id: Mapped[str] = mapped_column(String(64))
    message_ts: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, index=True)


class DigestRun(Base):
    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("day", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    channel_id: Mapped[str] = mapped_column(String(64))
    # NULL until the post landed: a claimed-but-unposted row is retried by the next run.
    posted_at: Mapped[datetime | None] = mapped_column(_TS)
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)


class QuotaOverride(Base):
    """An admin's limit for one person, channel or the workspace, replacing the setting's default.

    `subject_id` is a user id (scope "user"), a channel id ("channel") or the team id ("workspace").
    `credits` NULL lifts the limit for this subject; 0 blocks it.
    """

    __tablename__ = "quota_overrides"
    __table_args__ = (UniqueConstraint("team_id", "scope", "subject_id", "period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(16))  # user | channel | workspace
    subject_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(8))  # day | month
    credits: Mapped[int | None] = mapped_column(BigInteger)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, onupdate=utcnow)


class QuotaReservation(Base):
    """Credits held for a model call in flight; deleted when the call's ledger row is written.

    A process that dies leaves its rows behind: they stop counting at `expires_at` and are purged.
    """

    __tablename__ = "quota_reservations"
    __table_args__ = (Index("ix_quota_reservations_team_expires", "team_id", "expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    credits: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(_TS)


class QuotaAlert(Base):
    """One alert per entity, threshold and period: the unique row is inserted before posting.

    `posted_at` NULL: claimed but not (yet) in Slack; a later check retries it once the claim is stale.
    """

    __tablename__ = "quota_alerts"
    # Named by hand: the convention's name would pass PostgreSQL's 63-character limit.
    __table_args__ = (
        UniqueConstraint(
            "team_id",
            "scope",
            "subject_id",
            "period",
            "period_start",
            "threshold",
            name="uq_quota_alerts_once",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(16))  # user | channel | workspace
    subject_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(8))  # day | month
    period_start: Mapped[date] = mapped_column(Date)  # local first day of the period
    threshold: Mapped[int] = mapped_column(Integer)  # 80, 95, 100 (percent of the limit); 300: a spike
    text: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    posted_at: Mapped[datetime | None] = mapped_column(_TS)


class ChannelSettingsRow(Base):
    """A channel's own settings (bot.conversation.channel_settings); a channel without a row has the
    defaults. NULL prompt, model, limit or tools: the bot's own."""

    __tablename__ = "channel_settings"
    __table_args__ = (UniqueConstraint("team_id", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))  # a ChannelMode value
    system_prompt: Mapped[str | None] = mapped_column(Text)
    replace_prompt: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str | None] = mapped_column(String(128))
    max_output_tokens: Mapped[int | None] = mapped_column(Integer)
    followups: Mapped[bool] = mapped_column(Boolean, default=True)
    # The tool names the model may call here (a JSON list); NULL: every tool TOOLS_ENABLED allows.
    # none_as_null: None is SQL NULL, not the JSON `null` that `IS NULL` would not find.
    tools: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    updated_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class AdminAudit(Base):
    """One change an admin made (channel settings, a quota, the budget): who, when, before and after."""

    __tablename__ = "admin_audit"
    __table_args__ = (Index("ix_admin_audit_team_order", "team_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(String(64))  # the Slack user who made the change
    target_kind: Mapped[str] = mapped_column(String(16))  # channel | user | workspace
    target_id: Mapped[str] = mapped_column(
        String(64)
    )  # the channel or user id; the team id for the workspace
    action: Mapped[str] = mapped_column(String(64))  # e.g. "channel_settings", "quota", "budget"
    before: Mapped[dict[str, object] | None] = mapped_column(JSON)  # None: nothing was set
    after: Mapped[dict[str, object] | None] = mapped_column(JSON)  # None: removed
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)


class AgentContext(Base):
    """What a person is viewing in Slack beside the bot's DM (app_context_changed), per DM channel.

    Slack sends the context for the DM, not for one of its threads: every thread of that DM answers
    with the latest. `viewing_channel_id` is NULL when Slack says the person views nothing in particular.
    """

    __tablename__ = "agent_contexts"
    __table_args__ = (UniqueConstraint("team_id", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(64))  # the DM with the bot
    user_id: Mapped[str | None] = mapped_column(String(64))
    viewing_channel_id: Mapped[str | None] = mapped_column(String(64))
    # When Slack saw the change (the event's time): a late, older event never overwrites a newer one.
    changed_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)


class FeedbackVote(Base):
    """A person's 👍/👎 on one answer (the Slack message carrying the buttons); a new press replaces it."""

    __tablename__ = "feedback_votes"
    __table_args__ = (UniqueConstraint("channel_id", "message_ts", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str | None] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(64))
    message_ts: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(8))  # "up" or "down"
    # When the answer was posted (its ts): the digest counts votes with the day of their answer.
    answered_at: Mapped[datetime] = mapped_column(_TS, index=True)
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_TS, default=utcnow, onupdate=utcnow)


class RefusalNotice(Base):
    """When a refused person was last told why: at most one note an hour each, across replicas."""

    __tablename__ = "refusal_notices"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    notified_at: Mapped[datetime] = mapped_column(_TS)


class ToolApprovalRow(Base):
    """A question asked before a tool call (bot.conversation.approvals): the asker's press on any
    replica decides it, once; a question nobody answers in time is expired by the process that asked."""

    __tablename__ = "tool_approvals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the buttons' value
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str] = mapped_column(String(32))
    asker_id: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | denied | expired
    decided_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(_TS, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(_TS)


class TurnPlace(Base):
    """A turn's place in its thread's line across replicas (bot.conversation.shared_order): taken in
    the claim's transaction under the conversation's lock, so ids of one conversation follow
    admission order; deleted when the turn ends. The holder's replica renews `expires_at` while the
    turn waits or runs: a place whose lease ran out belongs to a dead replica and blocks nobody."""

    __tablename__ = "turn_places"
    __table_args__ = (Index("ix_turn_places_line", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(64), index=True)  # the replica (one id per process)
    expires_at: Mapped[datetime] = mapped_column(_TS)
    # What another replica needs to run the turn if this one dies or drains before it starts
    # (bot.conversation.handoff); NULL from code older than 0012: never adopted.
    arrival: Mapped[dict[str, object] | None] = mapped_column(JSON(none_as_null=True))
    # The turn began (no earlier place is left; a turn first in line is marked when it stores its
    # reply); adopted still until its reply is stored, when the record above is cleared (records
    # written by older code: never once started).
    started_at: Mapped[datetime | None] = mapped_column(_TS)


class SlackBudgetRow(Base):
    """One workspace's budget for one Slack method, shared by every replica (bot.slack.shared_budget).

    Times are seconds since the epoch on the database's clock, so replicas' clocks never disagree.
    """

    __tablename__ = "slack_budgets"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    method: Mapped[str] = mapped_column(String(64), primary_key=True)
    tat: Mapped[float] = mapped_column(Double)  # GCRA's theoretical arrival time of the next call
    blocked_until: Mapped[float] = mapped_column(Double)  # a 429's Retry-After, for every replica
    rate_per_minute: Mapped[float] = mapped_column(Double)  # the adapted rate, shared
    last_penalty: Mapped[float] = mapped_column(Double)


class SlackBudgetReplica(Base):
    """A process drawing on the shared Slack budgets, and when it last did: N for the local share
    each takes while the database is unreachable."""

    __tablename__ = "slack_budget_replicas"

    replica_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Double)  # epoch seconds, the database's clock
