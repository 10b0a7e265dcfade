"""A small asyncpg pool for a server part that keeps its own tables in PostgreSQL.

The key-value store and the identity store each open one; asyncpg is an optional
dependency, imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from innkt_analytics.shared._exceptions import ConfigError, StorageError

__all__ = ["asyncpg_module", "open_pool_with_schema"]


def asyncpg_module() -> Any:
    """The asyncpg module; raises ``ConfigError`` naming the missing dependency."""
    try:
        import asyncpg
    except ImportError as exc:
        raise ConfigError("db", f"PostgreSQL support needs asyncpg: {exc}") from exc
    return asyncpg


async def open_pool_with_schema(
    url: str, *, what: str, lock: str, statements: Sequence[str], max_size: int
) -> Any:
    """Open a pool and run ``statements`` (idempotent DDL) once, under an advisory lock.

    Several servers may start at once; CREATE ... IF NOT EXISTS alone can still race on
    the catalog, so the statements run serialised by ``lock``. Raises ``StorageError``
    (prefixed with ``what``) when the database cannot be reached or refuses the DDL.
    """
    asyncpg = asyncpg_module()
    pool: Any = None
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock)
            for statement in statements:
                await conn.execute(statement)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if pool is not None:
            await pool.close()
        raise StorageError(f"{what}: {exc}") from exc
    return pool
