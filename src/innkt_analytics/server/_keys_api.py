"""Key management over HTTP (admin scope): create, list and revoke keys of the admin's project."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post

from innkt_analytics.server._auth import SCOPES, new_key_record, rotate_key
from innkt_analytics.server._ingest import read_json_body
from innkt_analytics.server._state import JSON, ApiError, authenticate, state_of
from innkt_analytics.server.storage import KeyRecord

__all__ = ["create_key", "list_keys", "revoke_key", "rotate_key_route"]

_encoder = msgspec.json.Encoder()


class NewKeyRequest(msgspec.Struct, kw_only=True):
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=3)]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


def _public(record: KeyRecord) -> dict[str, Any]:
    return {
        "keyId": record.key_id,
        "project": record.project,
        "name": record.name,
        "scopes": sorted(record.scopes),
        "createdAt": record.created_at,
        "revokedAt": record.revoked_at,
        "expiresAt": record.expires_at,
        "lastUsedAt": record.last_used_at,
    }


@post("/v1/keys", status_code=201, summary="Create a key in the admin's project", tags=["keys"])
async def create_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The answer holds the key itself (``key``) — the only time it is shown."""
    state = state_of(request)
    admin = await authenticate(request, "admin")
    body = await read_json_body(request, state)
    try:
        wanted = msgspec.json.decode(body, type=NewKeyRequest)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_key_request", str(exc)) from None
    scopes = frozenset(wanted.scopes)
    if scopes - SCOPES:
        raise ApiError(400, "invalid_key_request", f"scopes: each one of {sorted(SCOPES)}")
    key = new_key_record(admin.project, scopes, wanted.name)
    await state.storage.create_key(key.record)
    return Response(
        _encoder.encode({**_public(key.record), "key": key.secret}),
        status_code=201,
        media_type=JSON,
    )


class RotateRequest(msgspec.Struct, kw_only=True, rename="camel"):
    #: how long the old key keeps working (0: it expires at once)
    overlap_seconds: Annotated[int, msgspec.Meta(ge=0, le=365 * 86_400)] = 7 * 86_400


@post(
    "/v1/keys/{key_id:str}/rotate",
    status_code=201,
    summary="Replace a key: a successor now, the old key expires after the overlap",
    tags=["keys"],
)
async def rotate_key_route(request: Request[Any, Any, Any], key_id: str) -> Response[bytes]:
    """The answer holds the successor (``key``, shown once) and the old key's ``expiresAt``.

    The successor has the same scopes and name; 404 for a key of another project
    or one that is revoked or already expired."""
    state = state_of(request)
    admin = await authenticate(request, "admin")
    body = await read_json_body(request, state)
    try:
        wanted = msgspec.json.decode(body or b"{}", type=RotateRequest)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_rotate_request", str(exc)) from None
    done = await rotate_key(
        state.storage, key_id, wanted.overlap_seconds * 1000, project=admin.project
    )
    if done is None:
        raise ApiError(404, "not_found", f"no active key {key_id} in this project")
    state.keys.forget()  # the old key's expiry applies here at once
    answer = {
        **_public(done.new.record),
        "key": done.new.secret,
        "replaces": _public(done.old),
    }
    return Response(_encoder.encode(answer), status_code=201, media_type=JSON)


@get("/v1/keys", summary="List the project's keys (never the secrets)", tags=["keys"])
async def list_keys(request: Request[Any, Any, Any]) -> Response[bytes]:
    admin = await authenticate(request, "admin")
    records = await state_of(request).storage.list_keys(admin.project)
    return Response(_encoder.encode({"keys": [_public(r) for r in records]}), media_type=JSON)


@delete("/v1/keys/{key_id:str}", status_code=200, summary="Revoke a key", tags=["keys"])
async def revoke_key(request: Request[Any, Any, Any], key_id: str) -> Response[bytes]:
    state = state_of(request)
    admin = await authenticate(request, "admin")
    mine = {r.key_id for r in await state.storage.list_keys(admin.project)}
    if key_id not in mine:  # another project's key is as good as unknown
        raise ApiError(404, "not_found", f"no key {key_id} in this project")
    revoked = await state.storage.revoke_key(key_id, time.time_ns() // 1_000_000)
    if not revoked:
        raise ApiError(409, "already_revoked", f"{key_id} is already revoked")
    state.keys.forget()
    return Response(_encoder.encode({"keyId": key_id, "revoked": True}), media_type=JSON)
