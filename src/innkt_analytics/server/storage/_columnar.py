"""The SQLite storage engine's read path: DuckDB over Parquet segments + the hot tail.

Every read takes a *snapshot* in one SQLite read transaction: the list of segments
and the matching rows of the hot log. The writer commits a compaction (rows leave
the hot log, the segment is listed) in one transaction, so a snapshot sees every
event exactly once. The hot rows become an Arrow table and DuckDB queries the
segments and that table together, in-process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from innkt_analytics.server.storage import _segments
from innkt_analytics.server.storage._base import EventFilter, EventRow, event_row, person_pairs

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = [
    "DISTINCT_ACTORS",
    "DISTINCT_SESSIONS",
    "MERGED_ACTORS",
    "Reader",
    "Snapshot",
    "page_merged",
    "parquet_list",
    "person_table",
    "scan_snapshot",
    "where",
]

#: the columns query_events returns, in ``_base.event_row``'s order
ROW_COLUMNS: Final = tuple(c for c in _segments.HOT_COLUMNS if c != "project")


# Distinct sessions and actors are counted by their 64-bit DuckDB ``hash()``: a hash
# table of integers instead of strings, ~1.5-2x faster at millions of sessions. Two
# different ids count as one only on a collision: with n distinct ids, a chance of
# about n^2 / 2^65 (1e-7 at two million). Hashes live only inside one query.
#: the distinct sessions of the relation ``ev``
DISTINCT_SESSIONS: Final = (
    "SELECT COUNT(DISTINCT hash(session_id)) FROM ev WHERE session_id IS NOT NULL"
)
#: the distinct actors (``userId``, else ``anonymousId``) of the relation ``ev``, hashed
DISTINCT_ACTORS: Final = (
    "SELECT DISTINCT hash(coalesce(user_id, anonymous_id)) AS actor FROM ev"
    " WHERE coalesce(user_id, anonymous_id) IS NOT NULL"
)
#: how many of the actors ``a`` are one person with another of them (``person_of``,
#: ``person_table``): distinct persons = distinct actors - this
MERGED_ACTORS: Final = (
    "SELECT COUNT(*) - COUNT(DISTINCT m.root) FROM a JOIN person_of m ON hash(m.id) = a.actor"
)


def person_table(roots: Mapping[str, str], person: str = "root") -> pa.Table:
    """``person_pairs(roots)`` as a table ``(id, <person>)``: each id and its person,
    each person itself included (the stats and the insights engine's ``person_of``)."""
    import pyarrow as pa

    ids, own = person_pairs(roots)
    return pa.table({"id": pa.array(ids, pa.string()), person: pa.array(own, pa.string())})


def where(project: str | None, flt: EventFilter) -> tuple[str, list[object]]:
    """A WHERE clause valid in both SQLite and DuckDB, with ``?`` parameters."""
    clauses: list[str] = []
    params: list[object] = []
    if project is not None:
        clauses.append("project = ?")
        params.append(project)
    for column, value in (
        ("event_type", flt.event_type),
        ("session_id", flt.session_id),
        ("user_id", flt.user_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if flt.any_id is not None:
        clauses.append("(user_id = ? OR anonymous_id = ?)")
        params += (flt.any_id, flt.any_id)
    if flt.since is not None:
        clauses.append("corrected >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append("corrected < ?")
        params.append(flt.until)
    return " AND ".join(clauses) or "true", params


@dataclass(frozen=True, slots=True)
class Segment:
    path: str
    min_seq: int
    max_seq: int
    min_corrected: int
    max_corrected: int


@dataclass(slots=True)
class Snapshot:
    segments: list[Segment]
    hot: pa.Table
    #: every segment listed when the snapshot was taken (``segments``: those that
    #: can hold matching events)
    listed: tuple[str, ...] = ()

    def source(self, columns: Sequence[str]) -> str:
        """SQL for a relation of ``columns`` over every segment and the hot rows
        (registered as ``hot``)."""
        cols = ", ".join(columns)
        parts = [f"SELECT {cols} FROM hot"]
        if self.segments:
            parts.insert(0, f"SELECT {cols} FROM {parquet_list([s.path for s in self.segments])}")
        return " UNION ALL ".join(parts)


def parquet_list(paths: Sequence[str]) -> str:
    """``read_parquet`` of the files ``paths``, as SQL."""
    return f"read_parquet([{', '.join(_quote(p) for p in paths)}])"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Reader:
    """Snapshots and DuckDB queries; one DuckDB connection per thread."""

    def __init__(self, db_path: str | None = None, *, directory: str | None = None) -> None:
        self.dir = directory if directory is not None else f"{db_path}.segments"
        self._local = threading.local()

    def duck(self) -> duckdb.DuckDBPyConnection:
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "duck", None)
        if con is None:
            import duckdb

            con = duckdb.connect(config={"threads": 2})
            self._local.duck = con
        return con

    def snapshot(
        self,
        conn: sqlite3.Connection,
        project: str | None,
        flt: EventFilter,
        columns: Sequence[str],
        after_seq: int | None = None,
        hot_limit: int | None = None,
    ) -> Snapshot:
        """The segments that can hold matching events and the matching hot rows (the
        first ``hot_limit`` of them, if given)."""
        sql, params = where(project, flt)
        if after_seq is not None:
            sql += " AND seq > ?"
            params.append(after_seq)
        conn.execute("BEGIN")
        try:
            listed = conn.execute(
                "SELECT file, min_seq, max_seq, min_corrected, max_corrected FROM segments"
                " ORDER BY min_seq"
            ).fetchall()
            hot = _segments.hot_rows(conn, sql, params, tuple(columns), hot_limit)
        finally:
            conn.execute("COMMIT")
        segments = [
            Segment(f"{self.dir}/{name}", *bounds)
            for name, *bounds in listed
            if (flt.since is None or bounds[3] >= flt.since)
            and (flt.until is None or bounds[2] < flt.until)
            and (after_seq is None or bounds[1] > after_seq)
        ]
        return Snapshot(segments, hot, tuple(f"{self.dir}/{name}" for name, *_ in listed))

    def query(
        self,
        snap: Snapshot,
        sql: str,
        params: Sequence[object],
        tables: Mapping[str, pa.Table] | None = None,
    ) -> list[tuple[Any, ...]]:
        """``sql`` with the snapshot's hot rows as ``hot`` and ``tables`` by their names."""
        con = self.duck()
        named = {"hot": snap.hot, **(tables or {})}
        for name, table in named.items():
            con.register(name, table)
        try:
            return con.execute(sql, list(params)).fetchall()
        finally:
            for name in named:
                con.unregister(name)

    def page(
        self,
        conn: sqlite3.Connection,
        project: str,
        flt: EventFilter,
        cursor: int | None,
        limit: int,
    ) -> list[EventRow]:
        """Up to ``limit`` matching rows with ``seq > cursor``, in seq order.

        Segments hold disjoint seq ranges, older than every hot row: they are read one
        at a time in order, and the hot rows last, until ``limit`` rows are found.
        """
        # a page never needs more hot rows than its size: not the whole hot log's
        snap = self.snapshot(conn, project, flt, ROW_COLUMNS, after_seq=cursor, hot_limit=limit)
        cond, params = where(project, flt)
        if cursor is not None:
            cond += " AND seq > ?"
            params.append(cursor)
        out: list[EventRow] = []
        con = self.duck()
        for seg in snap.segments:
            need = limit - len(out)
            if need <= 0:
                break
            rows = con.execute(
                f"SELECT {', '.join(ROW_COLUMNS)} FROM read_parquet({_quote(seg.path)})"
                f" WHERE {cond} ORDER BY seq LIMIT {need}",
                params,
            ).fetchall()
            out += [_row(r) for r in rows]
        if len(out) < limit and snap.hot.num_rows:
            hot = snap.hot.slice(0, limit - len(out)).to_pylist()
            out += [_row(tuple(r[c] for c in ROW_COLUMNS)) for r in hot]
        return out

    def scan(
        self,
        conn: sqlite3.Connection,
        project: str,
        flt: EventFilter,
        select: str,
        rows: int = 32_768,
    ) -> Iterator[pa.RecordBatch]:
        """``SELECT {select}`` over the matching events of one snapshot, in seq order,
        streamed in record batches (memory stays at a batch, whatever the total)."""
        snap = self.snapshot(conn, project, flt, _segments.HOT_COLUMNS)
        yield from scan_snapshot(snap, project, flt, select, rows)


def scan_snapshot(
    snap: Snapshot, project: str, flt: EventFilter, select: str, rows: int = 32_768
) -> Iterator[pa.RecordBatch]:
    """``SELECT {select}`` over the matching events of ``snap`` (taken with every
    column of ``_segments.HOT_COLUMNS``), a segment at a time in the list's order and
    the hot rows last, each in seq order, as record batches."""
    import duckdb

    cond, params = where(project, flt)
    con = duckdb.connect(config={"threads": 2})
    try:
        con.register("hot", snap.hot)
        sources = [f"read_parquet({_quote(s.path)})" for s in snap.segments] + ["hot"]
        for source in sources:  # one at a time: each scan keeps its file's order
            relation = con.sql(f"SELECT {select} FROM {source} WHERE {cond}", params=params)
            yield from relation.to_arrow_reader(rows)
    finally:
        con.close()


def page_merged(
    reader: Reader,
    snap: Snapshot,
    project: str,
    flt: EventFilter,
    cursor: int | None,
    limit: int,
) -> list[EventRow]:
    """Up to ``limit`` matching rows of ``snap`` (taken with every column of
    ``_segments.HOT_COLUMNS``) with ``seq > cursor``, in seq order,
    when segments and hot rows may interleave in seq (PostgreSQL's: a transaction
    commits its seqs after others' later ones)."""
    cond, params = where(project, flt)
    if cursor is not None:
        cond += " AND seq > ?"
        params.append(cursor)
    sql = (
        f"SELECT {', '.join(ROW_COLUMNS)} FROM ({snap.source(_segments.HOT_COLUMNS)})"
        f" WHERE {cond} ORDER BY seq LIMIT {int(limit)}"
    )
    return [_row(r) for r in reader.query(snap, sql, params)]


def _row(r: Sequence[Any]) -> EventRow:
    payload = r[11]  # text from a segment, bytes from the hot log
    return event_row((*r[:11], payload.encode() if isinstance(payload, str) else payload))
