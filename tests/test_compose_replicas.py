"""docker-compose.yml's `replicas` profile as an operator meets it (no Docker engine here: read, not run).

Three replicas behind Caddy, a one-shot migration they wait for, and the default (no profile) left as
the single bot with PostgreSQL. `make lint` checks the file against the Compose schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bot.settings import Settings
from tests.test_container import compose, healthcheck_command

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = ["bot-1", "bot-2", "bot-3"]


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def in_profile(profile: str | None) -> set[str]:
    return {
        name
        for name, service in services().items()
        if (profile in service.get("profiles", [])) or (profile is None and not service.get("profiles"))
    }


def caddyfile() -> str:
    volume: str = services()["lb"]["volumes"][0]
    source, target, _mode = volume.split(":")
    assert target == "/etc/caddy/Caddyfile"
    return (ROOT / source).read_text()


def test_without_a_profile_compose_starts_the_single_bot_and_postgresql_as_before():
    assert in_profile(None) == {"bot", "db"}
    assert "MIGRATE_ON_START" not in services()["bot"]["environment"]  # migrates at start, the default


def test_the_replicas_profile_runs_three_bots_a_load_balancer_and_a_one_shot_migration():
    assert in_profile("replicas") == {*REPLICAS, "lb", "migrate"}
    migrate = services()["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    # The lb depends on every replica, so `up lb` starts exactly the fleet (not the single `bot`).
    assert set(services()["lb"]["depends_on"]) == set(REPLICAS)


def test_every_replica_waits_for_the_migration_and_never_migrates_itself():
    for name in REPLICAS:
        replica = services()[name]
        assert replica["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert Settings(migrate_on_start=replica["environment"]["MIGRATE_ON_START"]).migrate_on_start is False
        assert replica["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert replica["environment"]["DATABASE_URL"] == services()["migrate"]["environment"]["DATABASE_URL"]
        assert replica["stop_grace_period"] == services()["bot"]["stop_grace_period"]
        assert "ports" not in replica  # reached only through the load balancer


def test_docker_probes_the_replicas_liveness_and_the_balancer_their_readiness():
    for name in REPLICAS:
        assert services()[name]["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    assert re.search(r"^\s*health_uri /readyz$", caddyfile(), flags=re.MULTILINE)
    assert services()["lb"]["healthcheck"]["test"][-1].endswith("/readyz")


def test_the_balancer_sends_to_each_replica_on_the_port_it_listens_on():
    [upstreams] = re.findall(r"^\s*reverse_proxy (.+) \{$", caddyfile(), flags=re.MULTILINE)
    [port] = {services()[name]["environment"]["PORT"] for name in REPLICAS}
    assert upstreams.split() == [f"{name}:{port}" for name in REPLICAS]
    listen = re.search(r"^:(\d+) \{$", caddyfile(), flags=re.MULTILINE)
    assert listen is not None
    assert services()["lb"]["ports"] == [f"${{PORT:-3000}}:{listen[1]}"]
    assert services()["lb"]["image"].startswith("caddy:")
