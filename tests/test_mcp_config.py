"""The MCP servers file: what it may say, and one clear line for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.mcp.config import HttpTarget, McpConfigError, StdioTarget, load_mcp_config
from bot.settings import Settings, SettingsError, load_settings

ENV = {"GITHUB_MCP_AUTHORIZATION": "Bearer ghp_secret", "FILES_TOKEN": "t0k3n"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, environ: dict[str, str] | None = None, *, required: bool = True):
    return load_mcp_config(path, ENV if environ is None else environ, required=required)


def test_the_shipped_example_file_configures_no_server():
    assert load(Path("config/mcp.toml")) == ()


def test_a_missing_default_file_means_no_servers_but_a_missing_named_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.toml"
    assert load(missing, required=False) == ()
    with pytest.raises(McpConfigError, match=rf"MCP_CONFIG_FILE: {missing}: no such file"):
        load(missing, required=True)


def test_an_explicitly_set_file_is_required_and_the_default_is_not():
    assert Settings(_env_file=None).mcp_config_file is None
    assert str(Settings(_env_file=None).mcp_config_path) == "config/mcp.toml"
    assert Settings(_env_file=None, mcp_config_file="x.toml").mcp_config_file == Path("x.toml")


def test_an_http_server_takes_its_headers_from_the_environment_by_name(tmp_path):
    path = write(
        tmp_path,
        """
        [servers.github]
        url = "https://mcp.example.com/mcp"
        headers_from_env = { Authorization = "GITHUB_MCP_AUTHORIZATION" }
        approval = true
        allow_tools = ["search", "create_issue"]
        timeout = 20

        [servers.github.tools.search]
        approval = false
        """,
    )
    (server,) = load(path)
    assert server.target == HttpTarget("https://mcp.example.com/mcp", {"Authorization": "Bearer ghp_secret"})
    assert "ghp_secret" not in repr(server)
    assert server.needs_approval("create_issue") and not server.needs_approval("search")
    assert server.allows("search") and not server.allows("delete_repo")
    assert server.timeout == 20


def test_a_stdio_server_gets_plain_variables_and_secret_ones_from_the_environment(tmp_path):
    path = write(
        tmp_path,
        """
        [servers.files]
        command = "npx"
        args = ["-y", "server-filesystem", "/srv"]
        env = { LOG_LEVEL = "debug" }
        env_from_env = { TOKEN = "FILES_TOKEN" }

        [servers.off]
        command = "never-started"
        enabled = false
        """,
    )
    (server,) = load(path)
    assert server.name == "files"
    assert server.target == StdioTarget(
        "npx", ("-y", "server-filesystem", "/srv"), {"LOG_LEVEL": "debug", "TOKEN": "t0k3n"}
    )
    assert not server.needs_approval("anything") and server.allows("anything")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[servers.a\nurl = 1", r"not valid TOML"),
        (
            '[servers.a]\nurl = "https://x"\naproval = true',
            r"servers\.a\.aproval: Extra inputs are not permitted",
        ),
        (
            "[servers.a]\napproval = true",
            r"servers\.a: .*either url \(streamable HTTP\) or command \(stdio\)",
        ),
        ('[servers.a]\nurl = "https://x"\ncommand = "y"', r"servers\.a: .*not both or neither"),
        ('[servers.a]\nurl = "ftp://x"', r"servers\.a\.url: .*must start with http:// or https://"),
        (
            '[servers.a]\ncommand = "y"\nheaders_from_env = { A = "B" }',
            r"headers_from_env is for HTTP servers",
        ),
        ('[servers.a]\nurl = "https://x"\nargs = ["y"]', r"args, env, env_from_env and cwd are for stdio"),
        ('[servers.a]\nurl = "https://x"\ntimeout = 0', r"servers\.a\.timeout: .*greater than 0"),
        ('[servers."bad name"]\nurl = "https://x"', r"servers\.bad name: a server name is 1 to 32 letters"),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.tools.t]\napproval = "yes please"',
            r"tools\.t\.approval",
        ),
        ("[other]\nx = 1", r"other: Extra inputs are not permitted"),
    ],
)
def test_each_mistake_in_the_file_is_one_line_naming_the_file_and_the_place(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(McpConfigError, match=rf"^MCP_CONFIG_FILE: {path}: .*{message}") as caught:
        load(path)
    assert "\n" not in str(caught.value)


def test_a_header_variable_that_is_not_set_stops_start_up_naming_it(tmp_path):
    path = write(
        tmp_path,
        '[servers.gh]\nurl = "https://x"\nheaders_from_env = { Authorization = "GH_AUTH" }\n',
    )
    with pytest.raises(
        McpConfigError,
        match=r"servers\.gh\.headers_from_env\.Authorization: environment variable GH_AUTH is not set",
    ):
        load(path, {})


def test_a_secret_pasted_where_a_variable_name_belongs_is_refused_without_being_repeated(tmp_path):
    path = write(
        tmp_path,
        '[servers.gh]\nurl = "https://x"\nheaders_from_env = { Authorization = "Bearer ghp_abc123" }\n',
    )
    with pytest.raises(McpConfigError, match="name environment variables") as caught:
        load(path)
    assert "ghp_abc123" not in str(caught.value)


def test_the_config_error_is_a_settings_error_so_start_up_prints_one_line(tmp_path):
    with pytest.raises(SettingsError):
        load(tmp_path / "missing.toml")


def test_mcp_timing_settings_are_checked_and_named(monkeypatch):
    monkeypatch.setenv("MCP_RETRY_MIN_SECONDS", "90")
    with pytest.raises(SettingsError, match="MCP_RETRY_MIN_SECONDS must not exceed MCP_RETRY_MAX_SECONDS"):
        load_settings(env_file=None)
    monkeypatch.setenv("MCP_RETRY_MIN_SECONDS", "1")
    monkeypatch.setenv("TOOL_APPROVAL_TIMEOUT", "0")
    with pytest.raises(SettingsError, match=r"^TOOL_APPROVAL_TIMEOUT: "):
        load_settings(env_file=None)


def test_a_bot_without_mcp_servers_never_loads_the_sdk():
    # The SDK takes seconds to import on a busy machine; start-up without servers does not pay for it.
    probe = (
        "import asyncio, sys\n"
        "import bot.app\n"
        "from bot.settings import Settings\n"
        "from bot.mcp.toolbox import start_mcp\n"
        "box = asyncio.run(start_mcp(Settings(_env_file=None), None, environ={}))\n"
        "print('mcp' in sys.modules, len(box.links))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "0"]
