"""The user directory: names and zones from users.info, cached within bounds, failures asked again."""

from __future__ import annotations

import asyncio

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.people import UserDirectory
from tests.fakes.slack_api import FakeSlackApi, FakeUser


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def directory(
    slack: FakeSlackApi, clock: Clock, *, ttl: float = 3_600, max_entries: int = 100
) -> UserDirectory:
    client = AsyncWebClient(base_url=slack.api_url, token="xoxb-test")
    return UserDirectory(client, clock=clock, ttl=ttl, max_entries=max_entries)


async def test_a_person_is_looked_up_once_while_fresh_and_again_after_the_ttl(slack: FakeSlackApi) -> None:
    slack.users["UADA"] = FakeUser(real_name="Ada Lovelace", display_name="ada", tz="Europe/London")
    clock = Clock()
    people = directory(slack, clock, ttl=60)

    first = await people.lookup("UADA")
    again = await people.lookup("UADA")
    clock.now += 61
    slack.users["UADA"] = FakeUser(real_name="Ada Lovelace", display_name="countess", tz="Europe/London")
    later = await people.lookup("UADA")

    assert first is not None and again == first
    assert (first.name, first.tz) == ("ada", "Europe/London")
    assert later is not None and later.name == "countess"
    assert len(slack.calls_to("users.info")) == 2


async def test_the_cache_keeps_only_the_most_recently_used_people(slack: FakeSlackApi) -> None:
    for user_id in ("U1", "U2", "U3"):
        slack.users[user_id] = FakeUser(real_name=f"Person {user_id}")
    people = directory(slack, Clock(), max_entries=2)

    await people.lookup("U1")
    await people.lookup("U2")
    await people.lookup("U1")  # U2 is now the least recently used
    await people.lookup("U3")
    await people.lookup("U1")
    await people.lookup("U2")

    assert people.size == 2
    assert [call.params["user"] for call in slack.calls_to("users.info")] == ["U1", "U2", "U3", "U2"]


async def test_a_failed_lookup_is_not_cached(slack: FakeSlackApi) -> None:
    people = directory(slack, Clock())

    assert await people.lookup("UNEW") is None
    slack.users["UNEW"] = FakeUser(real_name="New Hire")
    found = await people.lookup("UNEW")

    assert found is not None and found.name == "New Hire"
    assert len(slack.calls_to("users.info")) == 2


async def test_names_leaves_out_people_slack_cannot_resolve(slack: FakeSlackApi) -> None:
    slack.users["UADA"] = FakeUser(real_name="Ada Lovelace")
    people = directory(slack, Clock())

    assert await people.names(["UADA", "UGONE", "UADA"]) == {"UADA": "Ada Lovelace"}


async def test_many_messages_from_one_person_at_once_share_one_users_info_call(slack: FakeSlackApi) -> None:
    slack.users["UBUSY"] = FakeUser(real_name="Busy Person", is_admin=True)
    people = directory(slack, Clock())

    found = await asyncio.gather(*(people.lookup("UBUSY") for _ in range(30)))

    assert all(p is not None and p.name == "Busy Person" and p.is_workspace_admin for p in found)
    assert len(slack.calls_to("users.info")) == 1
    assert slack.count_429s == 0


async def test_a_guest_and_a_slack_connect_user_are_told_apart_from_members(slack: FakeSlackApi) -> None:
    slack.users["UGUEST"] = FakeUser(real_name="Guest", is_ultra_restricted=True)
    slack.users["UOTHER"] = FakeUser(real_name="Partner", team_id="TPARTNER")
    slack.users["UOWNER"] = FakeUser(real_name="Owner", is_owner=True)
    people = directory(slack, Clock())

    guest, other, owner = [await people.lookup(u) for u in ("UGUEST", "UOTHER", "UOWNER")]

    assert guest is not None and owner is not None and other is not None
    as_guest = guest.asker(admins=frozenset(), workspace="T1")
    as_other = other.asker(admins=frozenset(), workspace="T1")
    assert (as_guest.is_guest, as_guest.is_external, as_guest.is_admin) == (True, False, False)
    assert (as_other.is_guest, as_other.is_external) == (False, True)
    assert owner.asker(admins=frozenset(), workspace="T1").is_admin
    assert guest.asker(admins=frozenset({"UGUEST"}), workspace="T1").is_admin
