"""The identity graph's pure core: order-free, replay-safe, and the user-id guard."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from innkt_analytics.server._identity import Link, links_of_event, person_of, resolve
from innkt_analytics.server._persons import observe
from innkt_analytics.shared._protocol import Limits, ValidEvent, parse_batch

ANONS = [f"anon-{i}" for i in range(6)]
USERS = [f"u-{i}" for i in range(5)]

plain = st.builds(
    Link, st.sampled_from(ANONS), st.sampled_from(USERS), st.just(False), st.integers(0, 50)
)
alias = st.builds(
    Link,
    st.sampled_from(ANONS + USERS),
    st.sampled_from(USERS),
    st.just(True),
    st.integers(0, 50),
)
observations = st.lists(st.one_of(plain, plain, alias), max_size=25)


@settings(max_examples=300, deadline=None)
@given(observations, st.randoms(use_true_random=False), st.integers(1, 3))
def test_any_order_and_any_replay_give_the_same_persons(
    links: list[Link], rnd: random.Random, copies: int
) -> None:
    expected = resolve(links)
    replayed = links * copies
    rnd.shuffle(replayed)
    assert resolve(replayed) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(plain, max_size=25))
def test_plain_links_never_merge_two_user_ids(links: list[Link]) -> None:
    for person in resolve(links):
        assert len(person.user_ids) <= 1
        # every anonymous id sits with the user of its earliest link
        for anon in set(person.ids) - set(person.user_ids):
            first = min((link.at, link.b) for link in links if link.a == anon)
            assert person.user_ids == (first[1],)


@settings(max_examples=300, deadline=None)
@given(observations)
def test_a_raw_component_resolves_as_the_whole_graph_does(links: list[Link]) -> None:
    # The store resolves only the connected part of the graph a question touches.
    everyone = resolve(links)
    for person in everyone:
        reach, frontier = {person.ids[0]}, [person.ids[0]]
        while frontier:
            x = frontier.pop()
            for link in links:
                for y, z in ((link.a, link.b), (link.b, link.a)):
                    if y == x and z not in reach:
                        reach.add(z)
                        frontier.append(z)
        part = [link for link in links if link.a in reach]
        assert person_of(resolve(part), person.ids[0]) == person


@settings(max_examples=200, deadline=None)
@given(observations, st.sampled_from(ANONS), st.integers(0, 100))
def test_late_anonymous_events_never_rename_an_identified_person(
    links: list[Link], anon: str, at: int
) -> None:
    before = {p.person_id for p in resolve(links) if p.user_ids}
    # an anonymous event links nothing; a new anonymous id is a person of its own
    after = resolve(links, ids=[anon + "-new"])
    assert before <= {p.person_id for p in after}


def test_alias_merges_two_identified_persons_and_the_root_is_the_smaller_user_id() -> None:
    links = [
        Link("anon-1", "u-b", False, 10),
        Link("anon-2", "u-a", False, 20),
        Link("anon-1", "u-a", False, 30),  # guarded: anon-1 already is u-b's
    ]
    persons = resolve(links)
    assert [p.ids for p in persons if p.root == "u-b"] == [("anon-1", "u-b")]
    merged = resolve([*links, Link("u-b", "u-a", True, 40)])
    assert len(merged) == 1
    assert merged[0].root == "u-a"
    assert merged[0].ids == ("anon-1", "anon-2", "u-a", "u-b")


def test_a_late_earlier_identify_wins() -> None:
    links = [Link("anon-1", "u-2", False, 20)]
    assert person_of(resolve(links), "anon-1").root == "u-2"  # type: ignore[union-attr]
    late = [*links, Link("anon-1", "u-1", False, 10)]
    assert person_of(resolve(late), "anon-1").root == "u-1"  # type: ignore[union-attr]


def test_links_of_events() -> None:
    assert links_of_event("identify", "u", "a", {}, 5) == [Link("a", "u", False, 5)]
    assert links_of_event("page", None, "a", {}, 5) == []
    assert links_of_event("alias", "u", None, {"previousId": "old"}, 5) == [
        Link("old", "u", True, 5)
    ]
    assert links_of_event("track", "u", None, {"previousId": "old"}, 5) == []
    assert links_of_event("identify", "u", "u", {}, 5) == []


# -- observe: a batch's links and per-id facts ---------------------------------------------------


def _observe_each(
    valid: list[ValidEvent],
) -> tuple[dict[tuple[str, str, bool], int], dict[str, tuple[Any, ...]]]:
    """The oracle: every event on its own, the rule of ``observe`` spelt out."""
    links: dict[tuple[str, str, bool], int] = {}
    ids: dict[str, list[Any]] = {}

    def seen(ident: str, is_user: bool, at: int) -> list[Any]:
        info = ids.setdefault(ident, [is_user, at, at, None, None])
        info[0] |= is_user
        info[1], info[2] = min(info[1], at), max(info[2], at)
        return info

    for v in valid:
        e, at = v.event, v.corrected_ms
        if e.anonymous_id is not None:
            seen(e.anonymous_id, False, at)
        if e.user_id is not None:
            info = seen(e.user_id, True, at)
            if e.event_type == "identify":
                traits = msgspec.json.encode(e.properties)
                if info[4] is None or (at, traits) > (info[4], info[3] or b""):
                    info[3], info[4] = traits, at
        for k in links_of_event(e.event_type, e.user_id, e.anonymous_id, e.properties, at):
            key = (k.a, k.b, k.alias)
            links[key] = min(at, links.get(key, at))
            seen(k.a, False, at)
    return links, {i: tuple(v) for i, v in ids.items()}


_event = st.fixed_dictionaries(
    {
        "eventType": st.sampled_from(["page", "identify", "alias", "click"]),
        "timestamp": st.integers(0, 40).map(lambda s: f"2026-12-01T00:00:{s:02d}Z"),
    },
    optional={
        "userId": st.sampled_from(USERS),
        "anonymousId": st.sampled_from([*ANONS, "u-0"]),
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "previousId": st.sampled_from([*ANONS, *USERS, "", 7]),
                "plan": st.sampled_from(["a", "b"]),
            },
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, min_size=1, max_size=30))
def test_observe_equals_the_event_by_event_rule(events: list[dict[str, Any]]) -> None:
    received = dt.datetime(2026, 12, 1, 0, 1, tzinfo=dt.UTC)
    body = msgspec.json.encode(
        {"events": [dict(e, eventId=f"e-{i}") for i, e in enumerate(events)]}
    )
    parsed = parse_batch(body, Limits(), received)
    assert not parsed.rejected
    links, ids = observe(parsed.valid)
    expected_links, expected_ids = _observe_each(parsed.valid)
    assert len(links) == len({(k.a, k.b, k.alias) for k in links})  # each link once
    assert {(k.a, k.b, k.alias): k.at for k in links} == expected_links
    got = {i: (x.is_user, x.first_seen, x.last_seen, x.traits, x.traits_at) for i, x in ids.items()}
    assert got == expected_ids


def test_identify_with_traits_the_store_holds_writes_nothing(tmp_path: Path) -> None:
    """An app that calls identify with the same traits at every start: after the first
    time, its batches cost the identity store no transaction; later traits do."""
    from innkt_analytics.server._identity_store import IdInfo, SQLiteIdentity
    from innkt_analytics.server._persons import Identity

    class Counted(SQLiteIdentity):  # the real store, its writes counted
        writes = 0

        async def record(self, project: str, links: Sequence[Link], ids: dict[str, IdInfo]) -> None:
            Counted.writes += 1
            await super().record(project, links, ids)

    def batch(at: int, plan: str) -> list[ValidEvent]:
        event = {
            "eventId": f"e-{at}-{plan}",
            "eventType": "identify",
            "anonymousId": "a-1",
            "userId": "u-1",
            "timestamp": f"2026-12-01T00:00:{at:02d}Z",
            "properties": {"plan": plan},
        }
        received = dt.datetime(2026, 12, 1, 0, 1, tzinfo=dt.UTC)
        return parse_batch(msgspec.json.encode({"events": [event]}), Limits(), received).valid

    async def main() -> None:
        store = Counted(str(tmp_path / "id.db"))
        await store.open()
        identity = Identity(store)
        try:
            await identity.record("p", batch(1, "free"))
            assert Counted.writes == 1
            await identity.record("p", batch(1, "free"))  # a replay: nothing new
            assert Counted.writes == 1
            await identity.record("p", batch(0, "trial"))  # older: only the link moves
            assert (await store.infos("p", ["u-1"]))["u-1"].traits == b'{"plan":"free"}'
            await identity.record("p", batch(2, "pro"))
            assert (await store.infos("p", ["u-1"]))["u-1"].traits == b'{"plan":"pro"}'
        finally:
            await identity.flush()
            await store.close()

    asyncio.run(main())


#: a known user's plain events: what ``Identity._news`` may skip
_plain = st.fixed_dictionaries({"eventType": st.just("page"), "userId": st.sampled_from(USERS[:2])})
#: "u-0" sent as an anonymousId first: its plain events must still make it a user
_as_anonymous = st.fixed_dictionaries({"eventType": st.just("page"), "anonymousId": st.just("u-0")})
#: minutes and seconds: times within and beyond a minute's granularity of each other
_when = st.sampled_from(["00:00", "00:30", "01:05", "01:59", "03:00", "06:10", "09:59"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.one_of(_plain, _plain, _as_anonymous, _event), _when).map(
                lambda ew: ew[0] | {"timestamp": f"2026-12-01T00:{ew[1]}Z"}
            ),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_skipping_known_users_plain_events_stores_the_same(batches: list[Any]) -> None:
    """``Identity._news`` skips a known user's plain events inside its known first ..
    last seen (+ the granularity): the store ends up as if it had read them all
    (last seen to within ``LAST_SEEN_GRANULARITY``)."""
    import tempfile

    from innkt_analytics.server._identity_store import SQLiteIdentity
    from innkt_analytics.server._persons import LAST_SEEN_GRANULARITY, Identity

    class ReadsAll(Identity):
        def _news(self, project: str, valid: Sequence[ValidEvent]) -> Sequence[ValidEvent]:
            return valid

    received = dt.datetime(2026, 12, 1, 0, 15, tzinfo=dt.UTC)
    parsed = []
    for i, b in enumerate(batches):
        events = [dict(e, eventId=f"e-{i}-{j}") for j, e in enumerate(b)]
        batch = parse_batch(msgspec.json.encode({"events": events}), Limits(), received)
        assert not batch.rejected
        parsed.append(batch.valid)

    async def stored(kind: type[Identity], path: str) -> tuple[list[Any], dict[str, Any]]:
        store = SQLiteIdentity(path)
        await store.open()
        identity = kind(store)
        try:
            for valid in parsed:
                await identity.record("p", valid)
            await identity.flush()
        finally:
            await store.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            links = db.execute("SELECT * FROM identity_links ORDER BY a, b, alias").fetchall()
            ids = db.execute(
                "SELECT id, is_user, first_seen, last_seen, traits, traits_at FROM identity_ids"
            ).fetchall()
        return links, {row[0]: row[1:] for row in ids}

    with tempfile.TemporaryDirectory() as tmp:
        links, infos = asyncio.run(stored(Identity, f"{tmp}/skips.db"))
        all_links, all_infos = asyncio.run(stored(ReadsAll, f"{tmp}/all.db"))
    assert links == all_links
    assert infos.keys() == all_infos.keys()
    for ident, (is_user, first, last, traits, traits_at) in infos.items():
        full = all_infos[ident]
        assert (is_user, first, traits, traits_at) == (full[0], full[1], full[3], full[4])
        assert 0 <= full[2] - last <= LAST_SEEN_GRANULARITY
