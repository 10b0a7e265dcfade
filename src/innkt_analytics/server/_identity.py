"""The identity graph, free of I/O: which ids of a project are one person.

Input is a set of link observations; output is a partition of the ids into
persons, each with a stable id. The storage layer (``_identity_store``) keeps
the observations durably and calls ``resolve`` on the part of the graph a
question touches; nothing here reads a database or a clock.

**Observations.** Each is ``Link(a, b, alias, at)``:

* an event carrying both an ``anonymousId`` and a ``userId`` (an ``identify``
  call, or any event) gives ``Link(anonymousId, userId, alias=False, at)``;
* an ``alias`` call gives ``Link(previousId, userId, alias=True, at)``.

``at`` is the event's corrected time in ms. Only the earliest ``at`` of each
(a, b, alias) triple matters, so replays and duplicates change nothing.

**The rule** (``resolve``), a function of the *set* of observations:

1. *User ids* are the ids that appear as the ``userId`` (the ``b`` side) of any
   link, plus those the caller knows were sent as a ``userId`` elsewhere.
2. Plain links never merge two user ids (the guard against a shared device,
   or a bug, folding two signed-up people into one). An id that is not a user
   id joins the person of the user id of its *earliest* plain link (smallest
   ``at``, ties by the smaller user id); its other plain links are kept but
   merge nothing.
3. Alias links then merge the whole persons of their two ids, whatever they
   are: an alias is the app saying explicitly that two ids are one person.

**Stable person id.** A person's *root* is its smallest user id (by code
point), or its only id when it has no user id; ``personId`` is ``"p_"`` and
the first 24 hex digits of SHA-256 of the root. It does not depend on time, so
late or replayed anonymous events never rename an identified person. A person's
id changes only when it gains its first user id (identify) or an alias merges it
with a person whose root sorts first; any of its ids still finds it.

Because the result depends only on the set of (a, b, alias, earliest at), the
same observations in any order, replayed any number of times, give the same
persons and ids (tests/test_identity_core.py checks this with hypothesis). A
late plain link older than an id's earliest one can move that anonymous id to
another user's person: the earliest identification wins, whenever it arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Link", "Person", "links_of_event", "person_id_of", "person_of", "resolve"]


@dataclass(frozen=True, slots=True, order=True)
class Link:
    """One observation that ``a`` and ``b`` may be the same person (``b`` is a user id)."""

    a: str
    b: str
    alias: bool
    at: int


@dataclass(frozen=True, slots=True)
class Person:
    person_id: str
    root: str
    ids: tuple[str, ...]  # sorted
    user_ids: tuple[str, ...]  # sorted


def person_id_of(root: str) -> str:
    return "p_" + hashlib.sha256(root.encode()).hexdigest()[:24]


def links_of_event(
    event_type: str,
    user_id: str | None,
    anonymous_id: str | None,
    properties: Mapping[str, object],
    at: int,
) -> list[Link]:
    """The links one stored event gives (see the module docstring)."""
    links: list[Link] = []
    if user_id is None:
        return links
    if anonymous_id is not None and anonymous_id != user_id:
        links.append(Link(anonymous_id, user_id, False, at))
    previous = properties.get("previousId")
    if event_type == "alias" and isinstance(previous, str) and previous and previous != user_id:
        links.append(Link(previous, user_id, True, at))
    return links


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, x: str, y: str) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            # the smaller representative wins, so the structure is order-free too
            lo, hi = (rx, ry) if rx < ry else (ry, rx)
            self.parent[hi] = lo


def resolve(
    links: Iterable[Link], ids: Iterable[str] = (), known_user_ids: Iterable[str] = ()
) -> list[Person]:
    """Partition every id of ``links`` and ``ids`` into persons, by the module's rule.

    Returns the persons sorted by ``person_id``.
    """
    earliest: dict[tuple[str, str, bool], int] = {}
    for link in links:
        if link.a == link.b:
            continue
        key = (link.a, link.b, link.alias)
        if key not in earliest or link.at < earliest[key]:
            earliest[key] = link.at
    users = set(known_user_ids)
    everyone = set(ids)
    for a, b, _ in earliest:
        users.add(b)
        everyone.update((a, b))

    uf = _UnionFind()
    for x in everyone:
        uf.find(x)
    # 2. each non-user id joins the user id of its earliest plain link
    best: dict[str, tuple[int, str]] = {}
    for (a, b, alias), at in earliest.items():
        if alias or a in users:
            continue
        if a not in best or (at, b) < best[a]:
            best[a] = (at, b)
    for a, (_, b) in best.items():
        uf.union(a, b)
    # 3. aliases merge whole persons
    for a, b, alias in earliest:
        if alias:
            uf.union(a, b)

    groups: dict[str, list[str]] = {}
    for x in everyone:
        groups.setdefault(uf.find(x), []).append(x)
    persons = []
    for members in groups.values():
        members.sort()
        user_ids = tuple(m for m in members if m in users)
        root = user_ids[0] if user_ids else members[0]
        persons.append(Person(person_id_of(root), root, tuple(members), user_ids))
    persons.sort(key=lambda p: p.person_id)
    return persons


def person_of(persons: Sequence[Person], some_id: str) -> Person | None:
    """The person holding ``some_id`` (an id or a person id), or None."""
    for person in persons:
        if some_id == person.person_id or some_id in person.ids:
            return person
    return None
