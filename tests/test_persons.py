"""Persons on the real server, SQLite and PostgreSQL: linking at ingest, lookup, data rights."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import httpx

from tests._server import ServerProcess
from tests.conftest import ServerFactory
from tests.test_server_ops import _cli


def _event(
    event_type: str = "page_view",
    *,
    user: str | None = None,
    anon: str | None = None,
    at: str = "2026-11-27T10:00:00Z",
    **extra: object,
) -> dict[str, object]:
    event: dict[str, object] = {
        "eventId": str(uuid.uuid4()),
        "eventType": event_type,
        "timestamp": at,
    }
    if user is not None:
        event["userId"] = user
    if anon is not None:
        event["anonymousId"] = anon
    return {**event, **extra}


def _post(server: ServerProcess, events: list[dict[str, object]]) -> dict[str, object]:
    r = httpx.post(
        server.url + "/v1/events/batch",
        headers=server.headers("write"),
        json={"events": events},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _person(server: ServerProcess, some_id: str, scope: str = "read") -> httpx.Response:
    return httpx.get(
        server.url + f"/v1/persons/{some_id}", headers=server.headers(scope), timeout=30
    )


def test_anonymous_then_identified_on_two_devices_is_one_person(
    backend_server: ServerProcess,
) -> None:
    server = backend_server
    _post(server, [_event(anon="anon-1", at="2026-11-27T09:00:00Z")])
    _post(
        server,
        [
            _event("identify", user="u-42", anon="anon-1", properties={"plan": "free", "a": 1}),
            _event(user="u-42", at="2026-11-27T11:00:00Z"),
        ],
    )
    # a second device: anonymous again, then the same sign-in, with newer traits
    _post(
        server,
        [
            _event(anon="anon-2", at="2026-11-27T12:00:00Z"),
            _event(
                "identify",
                user="u-42",
                anon="anon-2",
                at="2026-11-27T12:01:00Z",
                properties={"plan": "pro"},
            ),
        ],
    )
    r = _person(server, "anon-1")
    assert r.status_code == 200, r.text
    person = r.json()
    assert person["ids"] == ["anon-1", "anon-2", "u-42"]
    assert person["userIds"] == ["u-42"]
    assert person["anonymousIds"] == ["anon-1", "anon-2"]
    assert person["traits"] == {"plan": "pro"}  # the latest identify's
    assert person["firstSeen"] == "2026-11-27T09:00:00.000+00:00"
    assert person["lastSeen"] == "2026-11-27T12:01:00.000+00:00"
    assert person["personId"].startswith("p_")
    for other in ("u-42", "anon-2", person["personId"]):
        assert _person(server, other).json() == person
    found = httpx.get(
        server.url + "/v1/persons", params={"id": "anon-2"}, headers=server.headers("read")
    ).json()
    assert found == {"persons": [person]}
    # a replayed batch changes nothing
    _post(server, [_event("identify", user="u-42", anon="anon-1", properties={"plan": "free"})])
    assert _person(server, "anon-1").json()["ids"] == person["ids"]

    missing = _person(server, "nobody")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert httpx.get(server.url + "/v1/persons", headers=server.headers("read")).status_code == 400
    assert _person(server, "anon-1", scope="write").status_code == 403


def test_two_user_ids_merge_only_through_an_alias(backend_server: ServerProcess) -> None:
    server = backend_server
    # a shared device signs in as two people without a reset in between
    _post(server, [_event("identify", user="u-1", anon="shared", at="2026-11-27T10:00:00Z")])
    _post(server, [_event("identify", user="u-2", anon="shared", at="2026-11-27T10:05:00Z")])
    assert _person(server, "u-1").json()["ids"] == ["shared", "u-1"]
    assert _person(server, "u-2").json()["ids"] == ["u-2"]
    # the app says explicitly that u-1 became u-2
    _post(server, [_event("alias", user="u-2", properties={"previousId": "u-1"})])
    assert _person(server, "u-2").json()["ids"] == ["shared", "u-1", "u-2"]


def test_segment_identify_and_alias_link_ids(backend_server: ServerProcess) -> None:
    server = backend_server
    auth = (server.write_key, "")
    r = httpx.post(
        server.url + "/v1/identify",
        auth=auth,
        json={"anonymousId": "seg-anon", "userId": "seg-user", "traits": {"email": "a@b.c"}},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        server.url + "/v1/alias", auth=auth, json={"previousId": "old-id", "userId": "seg-user"}
    )
    assert r.status_code == 200, r.text
    person = _person(server, "old-id").json()
    assert person["ids"] == ["old-id", "seg-anon", "seg-user"]
    assert person["traits"] == {"email": "a@b.c"}


def test_delete_and_export_follow_the_person(
    server_factory: ServerFactory, storage_url: str
) -> None:
    # key cache 0: the suppression list is re-read on every request
    server = server_factory(db=storage_url, env={"INNKT_KEY_CACHE_SECONDS": "0"})
    _post(
        server,
        [
            _event("identify", user="u-7", anon="a-7"),
            _event(user="u-7", properties={"n": 1}),
            _event("alias", user="u-8", properties={"previousId": "u-7"}),
            _event(user="u-8", properties={"n": 2}),
            _event(user="bystander"),
        ],
    )
    r = httpx.get(server.url + "/v1/users/u-8/export", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    exported = [json.loads(line) for line in r.text.splitlines()]
    assert sorted(e["userId"] for e in exported) == ["u-7", "u-7", "u-8", "u-8"]

    r = httpx.delete(server.url + "/v1/users/u-8", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ids"] == ["u-8", "a-7", "u-7"]
    assert body["deletedEvents"] == 4
    assert _person(server, "a-7").status_code == 404
    # every id of the person is suppressed, the anonymous one included
    after = _post(server, [_event(anon="a-7"), _event(user="u-7"), _event(user="bystander")])
    assert after["accepted"] == 1
    assert [x["error"] for x in after["rejected"]] == ["suppressed", "suppressed"]  # type: ignore[union-attr]


def test_delete_and_export_cover_anonymous_only_events(
    server_factory: ServerFactory, storage_url: str
) -> None:
    server = server_factory(db=storage_url, env={"INNKT_KEY_CACHE_SECONDS": "0"})
    _post(
        server,
        [
            _event(anon="a-1", properties={"n": 1}),  # before the identify: anonymous only
            _event(anon="a-2", properties={"n": 2}),  # a second device
            _event("identify", user="u-1", anon="a-1"),
            _event("identify", user="u-1", anon="a-2"),
            _event(user="u-1", anon="a-2", properties={"n": 3}),
            _event(anon="a-other", properties={"n": 4}),
        ],
    )
    r = httpx.get(server.url + "/v1/users/a-2/export", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    exported = [json.loads(line) for line in r.text.splitlines()]
    # every event of the person once (two of them carry two of its ids), none of a-other
    assert len(exported) == 5
    assert len({e["eventId"] for e in exported}) == 5
    assert sorted(e.get("properties", {}).get("n", 0) for e in exported) == [0, 0, 1, 2, 3]

    r = httpx.delete(server.url + "/v1/users/u-1", headers=server.headers("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ["u-1", "a-1", "a-2"]
    assert r.json()["deletedEvents"] == 5
    r = httpx.get(server.url + "/v1/events", params={"limit": 100}, headers=server.headers("read"))
    assert [e["anonymousId"] for e in r.json()["events"]] == ["a-other"]
    # suppressed: the anonymous ids as anonymousId, and as an alias's previousId
    after = _post(
        server,
        [
            _event(anon="a-1"),
            _event("alias", user="u-new", properties={"previousId": "a-2"}),
            _event(anon="a-other"),
        ],
    )
    assert after["accepted"] == 1
    assert [x["error"] for x in after["rejected"]] == ["suppressed", "suppressed"]  # type: ignore[union-attr]


def test_linking_can_be_turned_off(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_IDENTITY": "false"})
    _post(server, [_event("identify", user="u-off", anon="a-off")])
    r = _person(server, "u-off")
    assert r.status_code == 404
    assert r.json()["message"] == "persons are not enabled on this server"
    assert not Path(server.db_path + ".identity.db").exists()


def test_the_same_links_in_another_order_give_the_same_persons(
    backend_server: ServerProcess,
) -> None:
    # Two projects of one server get the same journeys, one in the order they
    # happened, the other reversed and replayed (offline queues, late events).
    server = backend_server
    journeys = [
        _event("identify", user="u-1", anon="a-1", at="2026-11-27T10:00:00Z"),
        _event("identify", user="u-2", anon="a-1", at="2026-11-27T10:01:00Z"),  # guarded
        _event("identify", user="u-2", anon="a-2", at="2026-11-27T10:02:00Z"),
        _event(user="u-3", anon="a-3", at="2026-11-27T10:03:00Z"),
        _event("alias", user="u-4", at="2026-11-27T10:04:00Z", properties={"previousId": "u-3"}),
        _event(anon="a-5", at="2026-11-27T10:05:00Z"),
        # a late copy of a-2's identify from a device's offline queue, older than a
        # competing link: the earliest time of each link decides
        _event("identify", user="u-9", anon="a-2", at="2026-11-27T09:30:00Z"),
        _event("identify", user="u-2", anon="a-2", at="2026-11-27T09:00:00Z"),
    ]
    ids = ["a-1", "a-2", "a-3", "a-5", "u-1", "u-2", "u-3", "u-4", "u-9"]
    answers = []
    for project, order in (("in-order", journeys), ("reversed", journeys[::-1] * 2)):
        write = server.create_key("write", project)
        read = server.create_key("read", project)
        for event in order:  # one batch each: every one is a separate commit
            r = httpx.post(
                server.url + "/v1/events/batch",
                headers={"Authorization": f"Bearer {write}"},
                json={"events": [{**event, "eventId": str(uuid.uuid4())}]},
            )
            assert r.status_code == 200, r.text
        answers.append(
            {
                i: httpx.get(
                    server.url + f"/v1/persons/{i}", headers={"Authorization": f"Bearer {read}"}
                ).json()
                for i in ids
            }
        )
    # lastSeen is written again only when it moves by more than a minute
    for i in ids:
        times = [dt.datetime.fromisoformat(a[i].pop("lastSeen")) for a in answers]
        assert abs(times[0] - times[1]) <= dt.timedelta(minutes=1)
    assert answers[0] == answers[1]
    persons = {tuple(p["ids"]) for p in answers[0].values()}
    assert persons == {("a-1", "u-1"), ("a-2", "u-2"), ("a-3", "u-3", "u-4"), ("a-5",), ("u-9",)}


def test_search_without_a_person_and_a_hub_too_big_to_walk(server: ServerProcess) -> None:
    found = httpx.get(
        server.url + "/v1/persons", params={"id": "nobody"}, headers=server.headers("read")
    )
    assert found.json() == {"persons": []}
    # a constant anonymousId sent by every device links 10,001 user ids
    events = [_event(user=f"u-{i}", anon="unknown") for i in range(10_001)]
    for start in range(0, len(events), 2500):
        _post(server, events[start : start + 2500])
    r = _person(server, "u-1")
    assert r.status_code == 422
    assert r.json()["error"] == "graph_too_large"
    r = httpx.delete(server.url + "/v1/users/u-1", headers=server.headers("admin"))
    assert r.status_code == 422  # nothing deleted: which ids are the person's is unknown


def test_backups_hold_the_identity_graph(server: ServerProcess) -> None:
    _post(server, [_event("identify", user="u-b", anon="a-b")])
    created = _cli(server, "backup", "create").stdout
    backup_id = created.split()[1].rstrip(":")
    assert "identity graph: 1 links" in created
    assert (
        "identity graph: 1 links, sha256 verified"
        in _cli(server, "backup", "verify", backup_id).stdout
    )
    # after the backup: a deletion takes the person (and its links) away
    assert httpx.delete(server.url + "/v1/users/u-b", headers=server.headers("admin")).is_success
    assert _person(server, "a-b").status_code == 404
    server.stop()
    restored = _cli(server, "backup", "restore", backup_id).stdout
    assert "identity graph: 1 links" in restored
    server.start()
    r = _person(server, "a-b")
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ["a-b", "u-b"]
