"""The identity graph as insights read it: each id of a project mapped to its person.

Insights that count persons (``countBy: "person"``, the default) take an id -> person
mapping: every id of a person with more than one id maps to the person's *root* (its
smallest user id, or its only id; see ``_identity``); any other id is its own person
and is left out of the mapping. Roots, not person ids, so what a funnel's ``dropped``
page lists is an id the persons routes accept and a person with one id keeps its id.

The mapping is built from the whole project's graph (``IdentityStore.graph``) and kept
per project until the graph's version changes, so a query against an unchanged graph
reads one row. A cache of answers must key them on that version too
(``PersonsMap.version``, or ``graph_version`` without building the mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from innkt_analytics.server._identity import resolve
from innkt_analytics.server._persons import identity_of
from innkt_analytics.server._state import ServerState
from innkt_analytics.server.insights._model import Query, counts_persons

__all__ = ["PersonsMap", "graph_version", "persons_for", "project_persons"]

#: projects whose mapping is kept in memory (each holds its graph's linked ids)
_CACHED_PROJECTS: Final = 64


@dataclass(frozen=True, slots=True)
class PersonsMap:
    """``roots``: id -> its person's root, for the ids of persons with several ids."""

    version: int
    roots: Mapping[str, str]


def _cache(state: ServerState) -> dict[str, PersonsMap]:
    found = state.extensions.get("insights_persons")
    if not isinstance(found, dict):
        found = state.extensions["insights_persons"] = {}
    return found


async def graph_version(state: ServerState, project: str) -> int | None:
    """The project's identity graph version; None when the server links no ids.

    Raises ``StorageError``.
    """
    identity = identity_of(state)
    return None if identity is None else await identity.store.version(project)


async def persons_for(state: ServerState, project: str, query: Query) -> PersonsMap | None:
    """The mapping ``query`` counts with: None when it counts raw ids (``countBy: "id"``
    or sessions) or the server links no ids (``INNKT_IDENTITY=false``).

    Raises ``StorageError``; ``GraphTooLarge`` never (the whole graph is read).
    """
    if not counts_persons(query):
        return None
    return await project_persons(state, project)


async def project_persons(state: ServerState, project: str) -> PersonsMap | None:
    """The project's id -> person mapping; None when the server links no ids.

    Raises ``StorageError``.
    """
    identity = identity_of(state)
    if identity is None:
        return None
    cache = _cache(state)
    store = identity.store
    cached = cache.get(project)
    if cached is not None and cached.version == await store.version(project):
        return cached
    version, links, users = await store.graph(project)
    roots: dict[str, str] = {}
    for person in resolve(links, (), users):
        for ident in person.ids:
            if ident != person.root:
                roots[ident] = person.root
    found = PersonsMap(version, roots)
    if len(cache) >= _CACHED_PROJECTS and project not in cache:
        cache.pop(next(iter(cache)))
    cache[project] = found
    return found
