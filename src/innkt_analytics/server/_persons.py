"""Persons: the identity graph wired into ingest, data rights and the HTTP API.

``record_identity`` runs for every accepted batch after its events are
committed and *before* the answer is sent, so a link is durable once the batch
is acknowledged; when it fails the client gets a 503 and resends the batch,
whose events are then duplicates but whose links are written again (links
come from every valid event of a batch, not only the newly stored ones).

Routes (read scope): ``GET /v1/persons/{id}`` and ``GET /v1/persons?id=``.
See docs/identity.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, get

from innkt_analytics.server._identity import Link, Person, links_of_event, person_of, resolve
from innkt_analytics.server._identity_store import (
    GraphTooLarge,
    IdentityStore,
    IdInfo,
    make_identity,
)
from innkt_analytics.server._state import JSON, ApiError, ServerState, authenticate, state_of
from innkt_analytics.shared._exceptions import StorageError
from innkt_analytics.shared._protocol import ValidEvent

__all__ = [
    "PERSON_HANDLERS",
    "GraphTooLarge",
    "PersonView",
    "find_person",
    "identity_of",
    "install_identity",
    "observe",
    "record_identity",
]

#: an id's last seen is written again only when it moves by more than this
#: (ms); a busy id would otherwise cost a write per batch
LAST_SEEN_GRANULARITY: Final = 60_000
#: how long first/last seen times wait in memory before they are written
DEFER_SECONDS: Final = 5.0
_CACHE_LIMIT: Final = 100_000
#: the event types whose links or traits are read from the event itself
_CALLS: Final = frozenset({"identify", "alias"})
log = logging.getLogger("innkt_analytics.server.identity")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def observe(valid: Sequence[ValidEvent]) -> tuple[list[Link], dict[str, IdInfo]]:
    """The links and per-id facts of a batch (pure).

    Each link appears once, with the earliest time of the batch's events that give
    it (what the store keeps of a link). Most events of a batch repeat a few
    (anonymousId, userId) pairs, so the events are first reduced to their pairs'
    first and last times; only identify and alias calls are looked at one by one.
    """
    spans: dict[tuple[str | None, str | None], list[int]] = {}
    calls: list[ValidEvent] = []
    for v in valid:
        event, at = v.event, v.corrected_ms
        key = (event.anonymous_id, event.user_id)
        span = spans.get(key)
        if span is None:
            spans[key] = [at, at]
        elif at < span[0]:
            span[0] = at
        elif at > span[1]:
            span[1] = at
        if event.event_type in _CALLS:
            calls.append(v)

    ids: dict[str, IdInfo] = {}
    firsts: dict[tuple[str, str, bool], int] = {}

    def seen(ident: str, is_user: bool, first: int, last: int) -> IdInfo:
        info = ids.get(ident)
        if info is None:
            info = ids[ident] = IdInfo(is_user, first, last)
        else:
            info.is_user |= is_user
            info.first_seen = min(info.first_seen, first)
            info.last_seen = max(info.last_seen, last)
        return info

    def link(a: str, b: str, alias: bool, at: int) -> None:
        key = (a, b, alias)
        firsts[key] = min(at, firsts.get(key, at))

    for (anonymous_id, user_id), (first, last) in spans.items():
        if anonymous_id is not None:
            seen(anonymous_id, False, first, last)
        if user_id is not None:
            seen(user_id, True, first, last)
            if anonymous_id is not None and anonymous_id != user_id:
                link(anonymous_id, user_id, False, first)
    for v in calls:
        event, at = v.event, v.corrected_ms
        if event.user_id is None:
            continue
        if event.event_type == "identify":
            info = ids[event.user_id]
            traits = _encoder.encode(event.properties)
            if info.traits_at is None or (at, traits) > (info.traits_at, info.traits or b""):
                info.traits, info.traits_at = traits, at
        for k in links_of_event(
            event.event_type, event.user_id, event.anonymous_id, event.properties, at
        ):
            if k.alias:
                link(k.a, k.b, True, at)
                seen(k.a, False, at, at)
    links = [Link(a, b, alias, at) for (a, b, alias), at in firsts.items()]
    return links, ids


class Identity:
    """The store plus a per-instance memory of what it already holds about each id.

    What changes persons is written before the batch is acknowledged: links, traits,
    an id first seen as a userId, the ids of a new link. What only moves an id's
    first or last seen (and ids seen alone) is merged in memory and written every
    ``DEFER_SECONDS`` (and at shutdown): those writes cost ingest a transaction per
    batch, and nothing depends on them being durable with the batch.
    """

    def __init__(self, store: IdentityStore) -> None:
        self.store = store
        self._known: dict[tuple[str, str], tuple[int, int, bool]] = {}
        #: (project, a, b, alias) -> the earliest time already stored
        self._links: dict[tuple[str, str, str, bool], int] = {}
        #: (project, id) -> the (time, traits) of the latest identify already stored
        self._traits: dict[tuple[str, str], tuple[int, bytes]] = {}
        #: project -> id -> seen times not written yet
        self._deferred: dict[str, dict[str, IdInfo]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, project: str, valid: Sequence[ValidEvent]) -> None:
        valid = self._news(project, valid)
        if not valid:
            return
        observed, ids = observe(valid)
        links = [
            k for k in observed if self._links.get((project, k.a, k.b, k.alias), k.at + 1) > k.at
        ]
        linked = {k.a for k in links} | {k.b for k in links}
        urgent: dict[str, IdInfo] = {}
        for ident, info in ids.items():
            known = self._known.get((project, ident))
            if info.traits is not None and info.traits_at is not None:
                stored = self._traits.get((project, ident))
                if stored is not None and (info.traits_at, info.traits) <= stored:
                    # the store holds these traits or later ones (an app that calls
                    # identify at every start): nothing to write
                    info.traits = info.traits_at = None
            if (
                info.traits is not None
                or (info.is_user and (known is None or not known[2]))
                or (known is None and ident in linked)
            ):
                urgent[ident] = info
            elif (
                known is None
                or info.first_seen < known[0]
                or info.last_seen > known[1] + LAST_SEEN_GRANULARITY
            ):
                self._defer(project, ident, info)
        if links or urgent:
            await self.store.record(project, sorted(links), urgent)
            for k in links:
                key = (project, k.a, k.b, k.alias)
                self._links[key] = min(k.at, self._links.get(key, k.at))
            for ident, info in urgent.items():
                self._remember(project, ident, info)
                if info.traits is not None and info.traits_at is not None:
                    latest = (info.traits_at, info.traits)
                    stored = self._traits.get((project, ident), latest)
                    self._traits[(project, ident)] = max(latest, stored)
        if len(self._known) > _CACHE_LIMIT:
            self._known.clear()
        if len(self._traits) > _CACHE_LIMIT:
            self._traits.clear()
        if len(self._links) > _CACHE_LIMIT:
            self._links.clear()

    def _news(self, project: str, valid: Sequence[ValidEvent]) -> Sequence[ValidEvent]:
        """The events that may tell the store something: all but the plain events
        (no anonymousId, no identify or alias) of a user already known as one, at a
        time inside its known first seen .. last seen + ``LAST_SEEN_GRANULARITY``.
        Those are most of a busy project's events, and ``record`` would find nothing
        to write or defer for them: skipping them first saves building their ids'
        facts (~1 us per event of ingest's CPU)."""
        known = self._known
        out: list[ValidEvent] = []
        for v in valid:
            event = v.event
            user = event.user_id
            if user is not None and event.anonymous_id is None and event.event_type not in _CALLS:
                facts = known.get((project, user))
                if (
                    facts is not None
                    and facts[2]
                    and facts[0] <= v.corrected_ms <= facts[1] + LAST_SEEN_GRANULARITY
                ):
                    continue
            out.append(v)
        return out

    def _remember(self, project: str, ident: str, info: IdInfo) -> None:
        old = self._known.get((project, ident))
        if old is None:
            old = (info.first_seen, info.last_seen, info.is_user)
        self._known[(project, ident)] = (
            min(old[0], info.first_seen),
            max(old[1], info.last_seen),
            old[2] or info.is_user,
        )

    def _defer(self, project: str, ident: str, info: IdInfo) -> None:
        pending = self._deferred.setdefault(project, {})
        old = pending.get(ident)
        if old is None:
            pending[ident] = IdInfo(info.is_user, info.first_seen, info.last_seen)
        else:
            old.is_user |= info.is_user
            old.first_seen = min(old.first_seen, info.first_seen)
            old.last_seen = max(old.last_seen, info.last_seen)
        self._remember(project, ident, info)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(DEFER_SECONDS)
        await self.flush()

    async def flush(self, project: str | None = None) -> None:
        """Write the deferred seen times now (of one project, or all); kept for the
        next try on an error. Reads of persons flush first: read-your-writes here."""
        if project is None:
            pending, self._deferred = self._deferred, {}
        elif project in self._deferred:
            pending = {project: self._deferred.pop(project)}
        else:
            return
        for project, infos in pending.items():
            try:
                await self.store.record(project, [], infos)
            except StorageError as exc:
                log.warning("identity: first/last seen not written yet: %s", exc)
                for ident, info in infos.items():
                    self._defer(project, ident, info)

    def forget(self, project: str, ids: Sequence[str]) -> None:
        for ident in ids:
            self._known.pop((project, ident), None)
            self._traits.pop((project, ident), None)
            self._deferred.get(project, {}).pop(ident, None)
        gone = set(ids)
        for key in [k for k in self._links if k[0] == project and (k[1] in gone or k[2] in gone)]:
            del self._links[key]


def identity_of(state: ServerState) -> Identity | None:
    found = state.extensions.get("identity")
    return found if isinstance(found, Identity) else None


async def record_identity(state: ServerState, project: str, valid: Sequence[ValidEvent]) -> None:
    """Write the batch's links; raises ``StorageError``. A no-op without the subsystem."""
    identity = identity_of(state)
    if identity is not None and valid:
        await identity.record(project, valid)


class PersonView(msgspec.Struct, rename="camel", kw_only=True):
    person_id: str
    ids: list[str]
    user_ids: list[str]
    anonymous_ids: list[str]
    first_seen: str | None
    last_seen: str | None
    traits: dict[str, Any]


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


async def _person_around(identity: Identity, project: str, start: str) -> Person | None:
    await identity.flush(project)
    store = identity.store
    links, ids = await store.component(project, start)
    infos = await store.infos(project, sorted(ids))
    if start not in infos and not links:
        return None
    persons = resolve(links, ids, [i for i, info in infos.items() if info.is_user])
    return person_of(persons, start)


async def find_person(identity: Identity, project: str, some_id: str) -> Person | None:
    """The person holding ``some_id`` (any of its ids, or its current person id)."""
    found = await _person_around(identity, project, some_id)
    if found is None and some_id.startswith("p_"):
        root = await identity.store.id_for_hash(project, some_id)
        if root is not None:
            found = await _person_around(identity, project, root)
            if found is not None and found.person_id != some_id:
                return None  # merged into a person with another root since
    return found


async def _view(identity: Identity, project: str, person: Person) -> PersonView:
    infos = await identity.store.infos(project, person.ids)
    firsts = [i.first_seen for i in infos.values()]
    lasts = [i.last_seen for i in infos.values()]
    # the person's latest identify call (ties: the greater bytes, as the store does)
    dated = [(i.traits_at, i.traits) for i in infos.values() if i.traits_at is not None]
    latest = max(dated, default=None)
    traits: dict[str, Any] = (
        {} if latest is None or latest[1] is None else _decoder.decode(latest[1])
    )
    users = set(person.user_ids)
    return PersonView(
        person_id=person.person_id,
        ids=list(person.ids),
        user_ids=list(person.user_ids),
        anonymous_ids=[i for i in person.ids if i not in users],
        first_seen=_iso(min(firsts) if firsts else None),
        last_seen=_iso(max(lasts) if lasts else None),
        traits=traits,
    )


def _required(state: ServerState) -> Identity:
    identity = identity_of(state)
    if identity is None:
        raise ApiError(404, "not_found", "persons are not enabled on this server")
    return identity


def _check_id(value: str) -> str:
    if not 1 <= len(value) <= 128:
        raise ApiError(400, "invalid_parameter", "id: 1 to 128 characters")
    return value


async def _lookup(request: Request[Any, Any, Any], some_id: str) -> PersonView | None:
    state = state_of(request)
    key = await authenticate(request, "read")
    identity = _required(state)
    try:
        person = await find_person(identity, key.project, _check_id(some_id))
    except GraphTooLarge as exc:
        raise ApiError(422, "graph_too_large", str(exc)) from None
    except StorageError as exc:
        raise ApiError(
            503, "storage_unavailable", str(exc), retry_after=state.settings.unavailable_retry_after
        ) from None
    return None if person is None else await _view(identity, key.project, person)


@get("/v1/persons/{person_or_id:str}", summary="A person, by any of its ids", tags=["persons"])
async def get_person(request: Request[Any, Any, Any], person_or_id: str) -> Response[bytes]:
    """The person holding the id (a userId, an anonymousId or a personId); 404 if none."""
    view = await _lookup(request, person_or_id)
    if view is None:
        raise ApiError(404, "not_found", "no person has this id")
    return Response(_encoder.encode(view), media_type=JSON)


@get("/v1/persons", summary="Search persons by one of their ids", tags=["persons"])
async def search_persons(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Query: id (required). ``{"persons": [...]}`` with zero or one person."""
    some_id = request.query_params.get("id")
    if some_id is None:
        raise ApiError(400, "invalid_parameter", "id: required")
    view = await _lookup(request, some_id)
    return Response(_encoder.encode({"persons": [] if view is None else [view]}), media_type=JSON)


PERSON_HANDLERS: Final = (get_person, search_persons)


def install_identity(state: ServerState, app: Litestar) -> None:
    """``create_app`` ``on_state`` hook: the store opens after the events storage."""
    if not state.settings.identity:
        return
    store = make_identity(state.settings.db)
    identity = state.extensions["identity"] = Identity(store)
    app.on_startup.append(store.open)

    async def flush_all() -> None:  # no argument: Litestar would pass hooks the app
        await identity.flush()

    app.on_shutdown.append(flush_all)
    app.on_shutdown.append(store.close)
