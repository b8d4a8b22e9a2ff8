"""The MCP servers file (MCP_CONFIG_FILE, TOML): which servers, how to reach them, which calls need approval.

Secrets never sit in the file: HTTP headers and a stdio server's secret variables name environment
variables (`headers_from_env`, `env_from_env`), read once at start-up. Every mistake is one
`McpConfigError` naming the file, the place in it and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.settings import SettingsError

# A server's name starts every tool name it gives the model (`server__tool`, at most 64 characters).
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


@dataclass(frozen=True)
class LinkTiming:
    """Seconds: connect and list (per attempt), the gap between health checks, the backoff's bounds."""

    connect: float = 15.0
    health_interval: float = 30.0
    retry_min: float = 1.0
    retry_max: float = 60.0


class McpConfigError(SettingsError):
    """The MCP servers file is missing, unreadable or wrong; the message names the file and the place."""


@dataclass(frozen=True)
class HttpTarget:
    """A streamable HTTP server; `headers` hold values read from the environment (secrets)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        return self.url.split("?", 1)[0]


@dataclass(frozen=True)
class StdioTarget:
    """A server the bot starts as a subprocess and talks to over stdin/stdout."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None

    def describe(self) -> str:
        return f"stdio:{Path(self.command).name}"


@dataclass(frozen=True)
class McpServer:
    """One configured server, its environment references resolved."""

    name: str
    target: HttpTarget | StdioTarget
    approval: bool = False  # every call of every tool asks the person first
    tool_approval: Mapping[str, bool] = field(default_factory=dict)  # per tool, over `approval`
    allow_tools: frozenset[str] | None = None  # None: every tool the server lists
    timeout: float | None = None  # seconds per call; None: MCP_CALL_TIMEOUT

    def allows(self, tool: str) -> bool:
        return self.allow_tools is None or tool in self.allow_tools

    def needs_approval(self, tool: str) -> bool:
        return self.tool_approval.get(tool, self.approval)


class _Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    approval: bool | None = None


class _Server(BaseModel):
    """One `[servers.NAME]` table as written; exactly one of `url` and `command`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    env_from_env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    approval: bool = False
    allow_tools: list[str] | None = None
    timeout: float | None = Field(None, gt=0, le=3600)
    enabled: bool = True
    tools: dict[str, _Tool] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("headers_from_env")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for header, variable in value.items():
            if not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"{header!r} is not an HTTP header name")
            _check_variable_name(variable)
        return value

    @field_validator("env_from_env")
    @classmethod
    def _env_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, variable in value.items():
            _check_variable_name(name)
            _check_variable_name(variable)
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> _Server:
        if (self.url is None) == (self.command is None):
            raise ValueError("give either url (streamable HTTP) or command (stdio), not both or neither")
        if self.url is not None and (self.args or self.env or self.env_from_env or self.cwd):
            raise ValueError("args, env, env_from_env and cwd are for stdio servers (command), not url")
        if self.command is not None and self.headers_from_env:
            raise ValueError("headers_from_env is for HTTP servers (url), not command")
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: dict[str, _Server] = Field(default_factory=dict)


def _check_variable_name(name: str) -> None:
    if not _ENV_NAME.fullmatch(name):
        # Not echoed: a value that is no variable name may be a secret pasted by mistake.
        raise ValueError("values name environment variables (e.g. GITHUB_MCP_TOKEN), not the secret itself")


def load_mcp_config(path: Path, environ: Mapping[str, str], *, required: bool) -> tuple[McpServer, ...]:
    """The enabled servers of the file at `path`; a missing file is no servers unless `required`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise McpConfigError(f"MCP_CONFIG_FILE: {path}: no such file") from None
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise McpConfigError(f"MCP_CONFIG_FILE: {path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise McpConfigError(f"MCP_CONFIG_FILE: {path}: not valid TOML: {exc}") from None
    return parse_mcp_config(raw, environ, source=str(path))


def parse_mcp_config(
    raw: Mapping[str, Any], environ: Mapping[str, str], *, source: str
) -> tuple[McpServer, ...]:
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise McpConfigError(f"MCP_CONFIG_FILE: {source}: {where}: {message}") from None
    servers = []
    for name, server in parsed.servers.items():
        if not SERVER_NAME.fullmatch(name):
            raise McpConfigError(
                f"MCP_CONFIG_FILE: {source}: servers.{name}: a server name is 1 to 32 letters, digits, "
                "_ or - (it prefixes the names of its tools)"
            )
        if server.enabled:
            servers.append(_resolve(name, server, environ, source))
    return tuple(servers)


def _resolve(name: str, server: _Server, environ: Mapping[str, str], source: str) -> McpServer:
    def read(variable: str, where: str) -> str:
        value = environ.get(variable)
        if not value:
            raise McpConfigError(
                f"MCP_CONFIG_FILE: {source}: servers.{name}.{where}: "
                f"environment variable {variable} is not set"
            )
        return value

    target: HttpTarget | StdioTarget
    if server.url is not None:
        headers = {h: read(v, f"headers_from_env.{h}") for h, v in server.headers_from_env.items()}
        target = HttpTarget(server.url, headers)
    else:
        assert server.command is not None
        env = dict(server.env) | {k: read(v, f"env_from_env.{k}") for k, v in server.env_from_env.items()}
        target = StdioTarget(server.command, tuple(server.args), env, server.cwd)
    return McpServer(
        name=name,
        target=target,
        approval=server.approval,
        tool_approval={tool: o.approval for tool, o in server.tools.items() if o.approval is not None},
        allow_tools=None if server.allow_tools is None else frozenset(server.allow_tools),
        timeout=server.timeout,
    )
