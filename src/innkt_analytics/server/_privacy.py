"""Data rights: delete and export a user's data, suppression, and the audit log.

``DELETE /v1/users/{userId}`` removes the user's events (aggregates are computed
from events, so they go with them) and suppresses the id: later events for it
are rejected per event with the reason ``suppressed``. ``GET
/v1/users/{userId}/export`` returns everything stored for the user. Both, and
every other privacy action, are written to an append-only audit log that
admins read with ``GET /v1/audit``.

Both follow the person (docs/identity.md): the delete covers, and suppresses,
every id the identity graph joins to the given one, and the export returns the
events of every id of the person — events carrying one of the ids as ``userId``
or as ``anonymousId`` (``EventFilter.any_id``), anonymous-only events included.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, delete, get
from litestar.response import Stream

from innkt_analytics.server._export import iter_rows, render_ndjson
from innkt_analytics.server._persons import GraphTooLarge, find_person, identity_of
from innkt_analytics.server._state import JSON, ApiError, ServerState, authenticate, state_of
from innkt_analytics.server._suppress import suppressions_of
from innkt_analytics.server.insights._cache import data_changed
from innkt_analytics.server.storage import AuditEntry, EventFilter

__all__ = [
    "delete_user",
    "export_user",
    "list_audit",
]

_encoder = msgspec.json.Encoder()


async def _audit(
    state: ServerState, project: str, actor: str, action: str, subject: str, **detail: Any
) -> None:
    await state.storage.append_audit(
        AuditEntry(
            project=project,
            at=time.time_ns() // 1_000_000,
            actor=actor,
            action=action,
            subject=subject,
            detail=detail,
        )
    )


def _user_id(value: str) -> str:
    if not 1 <= len(value) <= 128:
        raise ApiError(400, "invalid_parameter", "userId: 1 to 128 characters")
    return value


@delete(
    "/v1/users/{user_id:str}",
    status_code=200,
    summary="Delete a user's data and suppress the id (admin)",
    tags=["privacy"],
)
async def delete_user(request: Request[Any, Any, Any], user_id: str) -> Response[bytes]:
    state = state_of(request)
    admin = await authenticate(request, "admin")
    user = _user_id(user_id)
    ids = await _person_ids(state, admin.project, user)
    at = time.time_ns() // 1_000_000
    # idempotent, so a failed run is simply repeated; one pass for all the ids
    deleted = await state.storage.delete_users(admin.project, ids, at)
    data_changed(state, admin.project)
    identity = identity_of(state)
    if identity is not None:
        # last: until the events are gone, a repeated request must still find the person
        await identity.store.forget(admin.project, ids)
        identity.forget(admin.project, ids)
    suppressions_of(state).forget(admin.project)
    await _audit(
        state, admin.project, admin.key_id, "user.delete", user, deletedEvents=deleted, ids=ids
    )
    body = {"userId": user, "deletedEvents": deleted, "suppressed": True, "ids": ids}
    return Response(_encoder.encode(body), media_type=JSON)


async def _person_ids(state: ServerState, project: str, user: str) -> list[str]:
    """Every id of the person holding ``user``, ``user`` first (just it, without a person)."""
    identity = identity_of(state)
    try:
        person = None if identity is None else await find_person(identity, project, user)
    except GraphTooLarge as exc:
        raise ApiError(422, "graph_too_large", str(exc)) from None
    others = [] if person is None else [i for i in person.ids if i != user]
    return [user, *others]


@get(
    "/v1/users/{user_id:str}/export",
    summary="Everything stored for a user, as NDJSON (admin)",
    tags=["privacy"],
)
async def export_user(request: Request[Any, Any, Any], user_id: str) -> Stream:
    state = state_of(request)
    admin = await authenticate(request, "admin")
    user = _user_id(user_id)
    ids = await _person_ids(state, admin.project, user)
    await _audit(state, admin.project, admin.key_id, "user.export", user, ids=ids)
    storage = state.storage

    async def body() -> Any:
        for k, each in enumerate(ids):
            earlier = set(ids[:k])
            async for rows in iter_rows(storage, admin.project, EventFilter(any_id=each)):
                # an event carrying two of the ids is exported once, under the first;
                # the check on ``each`` also keeps a backend that ignored any_id safe
                mine = [
                    r
                    for r in rows
                    if each in (r.user_id, r.anonymous_id)
                    and r.user_id not in earlier
                    and r.anonymous_id not in earlier
                ]
                if mine:
                    yield render_ndjson(mine)

    return Stream(
        body(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="user-{len(user)}.ndjson"'},
    )


@get("/v1/audit", summary="The project's privacy audit log, newest first (admin)", tags=["privacy"])
async def list_audit(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Query: limit (1..1000, default 100), before (a seq from a previous page)."""
    state = state_of(request)
    admin = await authenticate(request, "admin")
    q = request.query_params
    raw_limit, raw_before = q.get("limit", "100"), q.get("before")
    # isdecimal, not isdigit: int() refuses digits such as "²" that isdigit accepts;
    # the lengths keep int() under its digit limit (a ValueError, so a 500, past it)
    if not (len(raw_limit) <= 4 and raw_limit.isdecimal() and 1 <= int(raw_limit) <= 1000):
        raise ApiError(400, "invalid_parameter", "limit: an integer in 1..1000")
    # storage integers are 64-bit; a bigger one cannot be bound (it was a 500)
    if raw_before is not None and not (
        len(raw_before) <= 19 and raw_before.isdecimal() and int(raw_before) < 2**63
    ):
        raise ApiError(400, "invalid_parameter", "before: a seq number")
    entries = await state.storage.list_audit(
        admin.project, int(raw_limit), None if raw_before is None else int(raw_before)
    )
    body = {
        "entries": [
            {
                "seq": e.seq,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "detail": e.detail,
            }
            for e in entries
        ]
    }
    return Response(_encoder.encode(body), media_type=JSON)
