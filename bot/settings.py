"""All configuration, read once from the environment and `.env`; nothing else reads os.environ."""

from __future__ import annotations

import os
import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEFAULT_PROMPT = Path(__file__).with_name("default_system_prompt.md")
_DEFAULT_AGENT_PROMPTS = Path(__file__).with_name("default_prompts.toml")
DEFAULT_MCP_CONFIG = Path("config/mcp.toml")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


_SLACK_ID = re.compile(r"[A-Z][A-Z0-9]+")
# AI/ML API model ids: `zhipu/glm-5`, `gpt-4o`, `claude-3-5-sonnet-20241022`, `meta-llama/Llama-3.3-70B`.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
# Tool names as the model sees them (OpenAI function names; MCP tools are `server__tool`).
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"

    aimlapi_key: SecretStr | None = None
    aimlapi_base_url: str = "https://api.aimlapi.com/v1"
    aimlapi_model: str = "zhipu/glm-5"
    llm_context_window: int = Field(200_000, gt=0)
    llm_max_output_tokens: int = Field(8_192, gt=0)
    llm_connect_timeout: float = Field(5.0, gt=0)
    llm_read_timeout: float = Field(60.0, gt=0)
    llm_total_timeout: float = Field(300.0, gt=0)
    llm_max_retries: int = Field(3, ge=0, le=10)

    database_url: str = "sqlite+aiosqlite:///data/bot.db"
    database_pool_size: int = Field(10, ge=1, le=500)
    # `run` applies migrations first. Fleets set false and run `python -m bot migrate` once per release:
    # then a replica whose code is newer than the database refuses to start (README: Rolling upgrades).
    migrate_on_start: bool = True
    # Where ledger writes wait while the database is away (default: next to the SQLite file, or ./data).
    usage_spool_dir: Path | None = None
    usage_spool_max_rows: int = Field(100_000, ge=1)

    host: str = "0.0.0.0"  # reachable from outside the container by design
    port: int = Field(3000, ge=0, le=65535)  # 0 picks a free port (tests, benchmarks)

    usage_digest_channel: str | None = None
    usage_digest_time: str = "09:00"
    usage_digest_tz: str = "UTC"

    stream_update_interval: float = Field(1.0, ge=0.05)
    slack_edits_per_minute: float = Field(45.0, gt=0)
    slack_edit_burst: int = Field(5, ge=1)
    # How answers stream: native (chat.startStream/appendStream/stopStream), by edits, or per reply.
    slack_streaming: Literal["auto", "native", "edits"] = "auto"
    # Characters of answer in one natively streamed message before it continues in the next
    # (Slack refuses a streamed message somewhere near 40,000: stay well below).
    slack_stream_message_chars: int = Field(24_000, ge=2_000, le=36_000)
    thread_followups: bool = True
    thread_backfill_limit: int = Field(50, ge=0, le=1000)
    system_prompt_file: Path = _DEFAULT_PROMPT
    # Suggested prompts of the Messages tab (TOML; read and checked at start-up, bot.slack.agent_view).
    agent_prompts_file: Path = _DEFAULT_AGENT_PROMPTS
    shutdown_grace_seconds: float = Field(20.0, ge=0)

    # Bot admins besides the workspace's admins and owners (comma-separated Slack user ids).
    admin_user_ids: Annotated[frozenset[str], NoDecode] = frozenset()
    # Models a channel may be set to (comma-separated AI/ML API model ids); AIMLAPI_MODEL always is.
    allowed_models: Annotated[tuple[str, ...], NoDecode] = ()
    # Who may use the bot where (bot.conversation.access): an empty allow list lets everyone in.
    allowed_channels: Annotated[frozenset[str], NoDecode] = frozenset()
    blocked_channels: Annotated[frozenset[str], NoDecode] = frozenset()
    allowed_users: Annotated[frozenset[str], NoDecode] = frozenset()
    blocked_users: Annotated[frozenset[str], NoDecode] = frozenset()
    allow_guests: bool = False  # single- and multi-channel guests
    allow_external: bool = False  # people of another organisation, in a Slack Connect channel
    dms_enabled: bool = True

    # Credit limits (unset: no limit); days and months are counted in USAGE_DIGEST_TZ.
    quota_user_daily_credits: int | None = Field(None, ge=0)
    quota_user_monthly_credits: int | None = Field(None, ge=0)
    quota_channel_daily_credits: int | None = Field(None, ge=0)
    budget_workspace_monthly_credits: int | None = Field(None, ge=0)
    # Where budget alerts go (a channel id); unset: alerts are only logged.
    admin_alert_channel: str | None = None
    # A crashed process's reservations stop counting after this long (longer than any reply).
    quota_reservation_ttl_seconds: float = Field(900.0, ge=60)
    # A spike alert needs today's spend over 3x the 7-day daily average AND at least this much.
    spike_alert_min_credits: int = Field(200_000, ge=0)
    # Files attached to a message: downloaded up to FILE_MAX_BYTES, their text cut per file and per message.
    file_max_bytes: int = Field(10_000_000, ge=1, le=100_000_000)
    file_download_timeout: float = Field(20.0, gt=0, le=120)
    file_text_max_chars: int = Field(40_000, ge=100)
    files_text_max_chars: int = Field(80_000, ge=100)
    # What the Slack-reading tools and summaries read at most: messages, and characters of their text.
    slack_read_max_messages: int = Field(200, ge=1, le=1000)
    slack_read_max_chars: int = Field(40_000, ge=500)
    # Tools the model may call (comma-separated names or MCP server names); unset: every tool, "" none.
    tools_enabled: Annotated[frozenset[str] | None, NoDecode] = None
    tools_max_rounds: int = Field(8, ge=1, le=50)  # model calls with tools in one turn
    tools_call_timeout: float = Field(30.0, gt=0)  # seconds one tool call may run
    tools_turn_timeout: float = Field(120.0, gt=0)  # seconds all the tool rounds of a turn may take
    fetch_allow_private: bool = False  # fetch_url may read private, loopback and link-local addresses
    fetch_max_bytes: int = Field(2_000_000, ge=1_000)  # bytes fetch_url downloads at most
    fetch_timeout: float = Field(15.0, gt=0)  # seconds one fetch_url call may take in all

    # MCP servers (a TOML file): unset reads config/mcp.toml if it exists; a path set here must exist.
    mcp_config_file: Path | None = None
    mcp_call_timeout: float = Field(60.0, gt=0, le=3600)
    mcp_connect_timeout: float = Field(15.0, gt=0, le=600)
    mcp_health_interval: float = Field(30.0, gt=0)
    mcp_retry_min_seconds: float = Field(1.0, gt=0)
    mcp_retry_max_seconds: float = Field(60.0, gt=0)
    # How long the asker has to press Approve before a tool call that needs approval counts as denied.
    tool_approval_timeout: float = Field(300.0, gt=0, le=3600)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator(
        "admin_user_ids",
        "allowed_channels",
        "blocked_channels",
        "allowed_users",
        "blocked_users",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """Lists of Slack ids are written comma-separated in the environment: `U1,U2, U3`."""
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
            bad = [item for item in items if not _SLACK_ID.fullmatch(item)]
            if bad:
                raise ValueError(
                    f"not Slack ids: {', '.join(bad[:3])} "
                    "(expected ids such as U012AB3CD or C012AB3CD, comma-separated)"
                )
            return frozenset(items)
        return value

    @field_validator("tools_enabled", mode="before")
    @classmethod
    def _tool_list(cls, value: object) -> object:
        """`current_time, fetch_url`: tool names as the model sees them."""
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
            bad = [item for item in items if not _TOOL_NAME.fullmatch(item)]
            if bad:
                raise ValueError(
                    f"not tool names: {', '.join(bad[:3])} (expected e.g. current_time,fetch_url)"
                )
            return frozenset(items)
        return value

    @field_validator(
        "quota_user_daily_credits",
        "quota_user_monthly_credits",
        "quota_channel_daily_credits",
        "budget_workspace_monthly_credits",
        "admin_alert_channel",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`QUOTA_USER_DAILY_CREDITS=` in a .env file means no limit, as leaving it out does."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_alert_channel")
    @classmethod
    def _check_alert_channel(cls, value: str | None) -> str | None:
        if value is not None and not _SLACK_ID.fullmatch(value.strip()):
            raise ValueError("must be a channel id such as C012AB3CD (not a #name)")
        return value.strip() if value is not None else None

    @field_validator("slack_streaming", mode="before")
    @classmethod
    def _lower_streaming(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _model_list(cls, value: object) -> object:
        """`zhipu/glm-5, openai/gpt-4o`: kept in the written order (the settings modal lists them so)."""
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
            bad = [item for item in items if not _MODEL_ID.fullmatch(item)]
            if bad:
                raise ValueError(
                    f"not model ids: {', '.join(bad[:3])} (expected e.g. zhipu/glm-5, comma-separated)"
                )
            return tuple(dict.fromkeys(items))
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("usage_digest_time")
    @classmethod
    def _check_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be HH:MM in 24-hour time, e.g. 09:00")
        return value

    @field_validator("usage_digest_tz")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}, e.g. Europe/Berlin") from None
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _slash_api_url(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("aimlapi_base_url")
    @classmethod
    def _strip_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (the bot uses async drivers)"
            )
        return value

    @field_validator("usage_spool_dir")
    @classmethod
    def _check_spool_dir(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @model_validator(mode="after")
    def _check_budget(self) -> Settings:
        if self.llm_max_output_tokens >= self.llm_context_window:
            raise ValueError("LLM_MAX_OUTPUT_TOKENS must be smaller than LLM_CONTEXT_WINDOW")
        return self

    @model_validator(mode="after")
    def _check_mcp_retry(self) -> Settings:
        if self.mcp_retry_min_seconds > self.mcp_retry_max_seconds:
            raise ValueError("MCP_RETRY_MIN_SECONDS must not exceed MCP_RETRY_MAX_SECONDS")
        return self

    @property
    def digest_time(self) -> time:
        hour, minute = self.usage_digest_time.split(":")
        return time(int(hour), int(minute))

    @property
    def digest_zone(self) -> ZoneInfo:
        return ZoneInfo(self.usage_digest_tz)

    @property
    def spool_dir(self) -> Path:
        if self.usage_spool_dir is not None:
            return self.usage_spool_dir
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            database = self.database_url[len(prefix) :].split("?", 1)[0]
            if database and database != ":memory:":
                return Path(database).parent
        return Path("data")

    @property
    def models_allowed(self) -> tuple[str, ...]:
        """The models a channel may use: AIMLAPI_MODEL first, then ALLOWED_MODELS in their order."""
        return tuple(dict.fromkeys((self.aimlapi_model, *self.allowed_models)))

    @property
    def mcp_config_path(self) -> Path:
        return self.mcp_config_file if self.mcp_config_file is not None else DEFAULT_MCP_CONFIG

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    def system_prompt(self) -> str:
        try:
            return self.system_prompt_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"SYSTEM_PROMPT_FILE: cannot read {self.system_prompt_file}: {exc}") from exc

    def require(self, *names: str) -> None:
        """Raise SettingsError naming the first of `names` (field names) that is unset."""
        for name in names:
            value = getattr(self, name)
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise SettingsError(f"{name.upper()} is required but not set (see config/.env.example)")
        token = self.slack_bot_token
        if "slack_bot_token" in names and token and not token.get_secret_value().startswith("xoxb-"):
            raise SettingsError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        app_token = self.slack_app_token
        if app_token and not app_token.get_secret_value().startswith("xapp-"):
            raise SettingsError("SLACK_APP_TOKEN must be an app-level token starting with xapp-")


def process_environment(env_file: str | None = ".env") -> dict[str, str]:
    """The environment over the `.env` file, for config files that name variables (MCP headers)."""
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
    return values | dict(os.environ)


def load_settings(env_file: str | None = ".env") -> Settings:
    """Build Settings, turning pydantic's report into one line that names the variable."""
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "_".join(str(part) for part in first["loc"]).upper() or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{name}: {message}") from None
