"""The image and compose file as an operator meets them: ports, stop timeouts, pinned bytes, data.

No Docker engine runs here: these read the Dockerfile, docker-compose.yml, the README and the lock
and check they agree with the code (hadolint and the compose schema run in `make lint`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ruamel.yaml import YAML

from bot.app import INTERRUPT_WAIT
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CLOSE_MARGIN = 10  # seconds to close the web server, the database pool and Slack's session


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(ROOT / "docker-compose.yml")
    return loaded


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def readme() -> str:
    return (ROOT / "README.md").read_text()


def env_example() -> dict[str, str]:
    """The settings `config/.env.example` sets (commented-out lines set nothing)."""
    values = {}
    for line in (ROOT / "config" / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"expected a duration like 40s, got {duration!r}"
    return float(match[1])


def test_the_containers_stop_timeout_covers_the_whole_drain_in_compose_and_the_readme():
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert float(env_example()["SHUTDOWN_GRACE_SECONDS"]) == grace
    needed = grace + INTERRUPT_WAIT + CLOSE_MARGIN

    assert seconds(compose()["services"]["bot"]["stop_grace_period"]) == needed
    docker_runs = [line for line in (readme() + dockerfile()).splitlines() if "docker run --" in line]
    assert docker_runs, "the README shows no docker run command"
    for line in docker_runs:
        match = re.search(r"--stop-timeout (\d+)", line)
        assert match, f"a docker run command without --stop-timeout: {line}"
        assert float(match[1]) == needed
    assert f"stop_grace_period: {needed:g}s" in readme()
    assert f"pass `--stop-timeout {needed:g}`" in readme()


def test_compose_publishes_the_port_the_bot_listens_on_inside_the_container():
    [mapping] = compose()["services"]["bot"]["ports"]
    match = re.fullmatch(r"(\$\{[^}]*\}|\d+):(\$\{[^}]*\}|\d+)", mapping)
    assert match, f"unexpected ports entry {mapping!r}"
    host, container = match.groups()
    # The container's PORT comes from .env (env_file), as does the host side's ${PORT}.
    assert host == container == "${PORT:-3000}"
    port_default = Settings.model_fields["port"].default
    assert f"EXPOSE {port_default}" in dockerfile()
    assert env_example()["PORT"] == str(port_default)


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD, in JSON (exec) form."""
    text = dockerfile().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


def test_docker_and_compose_health_checks_probe_liveness_not_readiness():
    image_check = healthcheck_command()
    compose_check = compose()["services"]["bot"]["healthcheck"]["test"]
    assert compose_check == ["CMD", *image_check]
    assert "/livez" in image_check[-1]
    assert "/readyz" not in image_check[-1] and "/healthz" not in image_check[-1]


def test_the_base_image_is_one_exact_python_release_in_both_stages():
    bases = re.findall(r"^FROM (\S+)", dockerfile(), flags=re.MULTILINE)
    assert len(bases) == 2 and bases[0] == bases[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0]), bases[0]
    assert f"`{bases[0]}`" in readme()


def lock_pins() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        name, _, version = first.split(" ", 1)[0].partition("==")
        assert version, f"requirements.lock: {first} is not pinned"
        assert "--hash=sha256:" in block, f"requirements.lock: {name} has no hash"
        pins[canonicalize_name(name)] = version
    return pins


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_images_lock_has_hashes_and_exactly_the_versions_in_constraints():
    lock, constraints = lock_pins(), constraint_pins()
    disagree = {name: (v, constraints.get(name)) for name, v in lock.items() if constraints.get(name) != v}
    assert disagree == {}, "requirements.lock vs constraints.txt (regenerate with make lock)"
    # Everything the bot needs to run and to be built is in the lock.
    pyproject = (ROOT / "pyproject.toml").read_text()
    requirements = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    build = re.search(r"^requires = \[(.*?)\]", pyproject, re.MULTILINE)
    assert requirements and build
    for spec in re.findall(r'"([^"]+)"', requirements[1] + build[1]):
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is missing from requirements.lock (make lock)"
        assert requirement.specifier.contains(lock[name]), f"{name}=={lock[name]} breaks {spec}"


def test_the_image_installs_only_from_the_lock_with_hashes():
    text = dockerfile()
    assert "pip install --require-hashes --no-deps -r requirements.lock" in text
    # The bot itself is built offline, by the locked setuptools, without fetching anything else.
    assert "pip install --no-deps --no-build-isolation --no-index ." in text
    assert "-c constraints.txt" not in text


def test_the_example_env_file_leaves_the_images_database_on_its_volume():
    assert "DATABASE_URL" not in env_example()
    assert "ENV PATH=/opt/venv/bin:$PATH" in dockerfile()
    assert re.search(r"DATABASE_URL=sqlite\+aiosqlite:////data/bot\.db", dockerfile())
    assert 'VOLUME ["/data"]' in dockerfile()
