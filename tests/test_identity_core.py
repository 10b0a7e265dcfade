"""The identity graph's pure core: order-free, replay-safe, and the user-id guard."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from innkt_analytics.server._identity import Link, links_of_event, person_of, resolve

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
