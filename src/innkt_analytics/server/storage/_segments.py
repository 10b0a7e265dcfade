"""Parquet segments: the cold, columnar part of the SQLite storage engine.

A segment holds compacted events in arrival (``seq``) order, zstd-compressed, with
row groups of ``ROW_GROUP`` rows whose statistics (min/max of ``seq`` and
``corrected``) let DuckDB skip what a query cannot need. Segments are immutable:
a merge or a deletion writes a new file (``*.tmp``, fsync, rename, fsync of the
directory) and the writer process swaps the lists in one transaction
(``_sqlite_writer.op_swap``).

The ``payload`` column is the event's JSON exactly as it was stored in the hot
log, as UTF-8 text; the other columns are the ones every query filters or groups on.

**Property columns.** A segment also holds, as columns of their own, the values of
the top-level ``properties`` keys found in at least ``PROPERTY_SHARE`` of its rows
(at most ``PROPERTY_COLUMNS`` keys): column ``p:<key>`` is exactly
``CAST(json_extract(payload, '$.properties."<key>"') AS VARCHAR)`` — the value's
JSON text, NULL where the key is missing. Insights read a property from it instead
of parsing every event's JSON (a breakdown over 10M events: 1.15 -> 0.2 s); a
segment without the column (older, or whose rows lacked the key) is read from the
JSON as before. A merge keeps the columns every one of its sources has.

**Actor hashes.** ``actor_hash`` is ``ACTOR_HASH_SQL`` of each row, made by the DuckDB
version named in the file's metadata; a reader of another version computes it
instead (``segment_hashed``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from innkt_analytics.shared._backup import fsync_dir

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = [
    "ACTOR_HASH",
    "ACTOR_HASH_SQL",
    "HOT_COLUMNS",
    "PROPERTY_PREFIX",
    "ROW_GROUP",
    "SegmentMeta",
    "distinct_columns",
    "drop_matching",
    "hot_columns",
    "hot_rows",
    "json_member",
    "merge_window",
    "property_json",
    "rewrite",
    "schema",
    "segment_hashed",
    "segment_properties",
    "usable_key",
    "write_segment",
]

log = logging.getLogger("innkt_analytics.server.storage")

#: rows per Parquet row group: the unit a query skips or reads
ROW_GROUP: Final = 65_536
#: a segment's column of ``ACTOR_HASH_SQL``, and the file metadata naming its maker
ACTOR_HASH: Final = "actor_hash"
_HASH_KEY: Final = b"innkt.actor_hash"
#: a property column's name: this prefix and the key
PROPERTY_PREFIX: Final = "p:"
#: at most this many property columns a segment
PROPERTY_COLUMNS: Final = 8
#: a key gets a column when at least this share of the sampled rows hold it
PROPERTY_SHARE: Final = 0.1
#: rows sampled (the first ones) to choose the keys
_PROPERTY_SAMPLE: Final = 2_000
#: the events columns, in the order of ``schema()``
HOT_COLUMNS: Final = (
    "seq",
    "project",
    "event_id",
    "event_type",
    "session_id",
    "user_id",
    "anonymous_id",
    "ts",
    "sent_at",
    "received_at",
    "corrected",
    "future",
    "payload",
)


def hot_columns(payload: bool) -> tuple[str, ...]:
    """``HOT_COLUMNS``, without the JSON ``payload`` unless asked for (what an insights
    query reads of the hot rows)."""
    return HOT_COLUMNS if payload else tuple(c for c in HOT_COLUMNS if c != "payload")


def schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("seq", pa.int64()),
            ("project", pa.string()),
            ("event_id", pa.string()),
            ("event_type", pa.string()),
            ("session_id", pa.string()),
            ("user_id", pa.string()),
            ("anonymous_id", pa.string()),
            ("ts", pa.int64()),
            ("sent_at", pa.int64()),
            ("received_at", pa.int64()),
            ("corrected", pa.int64()),
            ("future", pa.bool_()),
            ("payload", pa.string()),
        ]
    )


def hot_rows(
    conn: sqlite3.Connection,
    where: str = "1",
    params: tuple[Any, ...] | list[Any] = (),
    columns: tuple[str, ...] = HOT_COLUMNS,
    limit: int | None = None,
) -> pa.Table:
    """Rows of the hot log (the first ``limit``, if given) as an Arrow table of
    ``schema()``'s ``columns``."""
    import pyarrow as pa

    full = schema()
    # NOT INDEXED: a scan in seq (rowid) order, at most the hot log's few tens of
    # thousands of rows, beats the (project, event_id) index's walk plus a sort by
    # seq: 0.20 -> 0.11 s for 18,500 rows of one project
    sql = f"SELECT {', '.join(columns)} FROM events NOT INDEXED WHERE {where} ORDER BY seq"
    if limit is not None:
        sql, params = sql + " LIMIT ?", [*params, limit]
    rows = conn.execute(sql, params).fetchall()
    arrays = []
    by_column = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    for name, values in zip(columns, by_column, strict=True):
        kind = full.field(name).type
        if name == "payload":
            # stored only after msgspec parsed it, so valid UTF-8: a view, not a
            # validating cast (2.4 -> 0.7 us per event)
            arrays.append(pa.array(values, pa.binary()).view(pa.string()))
        elif name == "future":
            arrays.append(pa.array([bool(v) for v in values], kind))
        else:
            arrays.append(pa.array(values, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema([full.field(c) for c in columns]))


def json_member(key: str) -> str:
    """A JSON path step to member ``key``, as text inside an SQL string literal. Keys
    never hold '"' or '\\' (``usable_key``; insights validate theirs), so this is
    always a plain member path; a literal, not a parameter: DuckDB then compiles the
    path once and sees the same subexpression twice when an expression reads it again."""
    return '."' + key.replace("'", "''") + '"'


def property_json(key: str) -> str:
    """SQL: the JSON text of ``properties.<key>`` in ``payload`` (NULL when missing),
    what a segment's column of the key holds."""
    return f"CAST(json_extract(payload, '$.properties{json_member(key)}') AS VARCHAR)"


def usable_key(key: object) -> bool:
    """Whether a properties key may be a column (else it is read from the JSON)."""
    return (
        isinstance(key, str)
        and 0 < len(key) <= 128
        and not any(c in key for c in '"\\')
        and key.isprintable()
    )


def _derived_columns(table: pa.Table) -> tuple[dict[str, pa.Array], pa.Array | None]:
    """The property columns and the actor hashes of a segment of ``table``'s rows."""
    import duckdb

    if table.num_rows == 0 or "payload" not in table.column_names:
        return {}, None
    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("ids", table.select(["user_id", "anonymous_id"]))
        hashes = con.sql(f"SELECT {ACTOR_HASH_SQL} FROM ids").to_arrow_table().column(0)
        try:
            props = _extract_properties(con, table)
        except duckdb.Error as exc:
            # JSON DuckDB refuses (a raw control character in a string, which the
            # ingest parser lets through): no columns, so every read of this
            # segment's properties is what it was without them
            log.warning("segment written without property columns: %s", exc)
            props = {}
        return props, hashes.combine_chunks()
    finally:
        con.close()


def _extract_properties(con: duckdb.DuckDBPyConnection, table: pa.Table) -> dict[str, pa.Array]:
    con.register("sample", table.select(["payload"]).slice(0, _PROPERTY_SAMPLE))
    found = con.execute(
        "SELECT k, count(*) AS n FROM (SELECT unnest(json_keys(payload, '$.properties'))"
        " AS k FROM sample WHERE json_type(payload, '$.properties') = 'OBJECT')"
        " GROUP BY k ORDER BY n DESC, k"
    ).fetchall()
    least = PROPERTY_SHARE * min(table.num_rows, _PROPERTY_SAMPLE)
    keys = distinct_columns([k for k, n in found if n >= least and usable_key(k)])
    keys = keys[:PROPERTY_COLUMNS]
    if not keys:
        return {}
    con.register("rows", table.select(["payload"]))
    # one json_extract with a list of paths parses each document once for all keys
    # (~30 % less than a call per key); each element's text is ``property_json``'s
    paths = ", ".join(f"'$.properties{json_member(k)}'" for k in keys)
    columns = ", ".join(f"CAST(v[{i + 1}] AS VARCHAR) AS c{i}" for i in range(len(keys)))
    values = con.sql(
        f"SELECT {columns} FROM (SELECT json_extract(payload, [{paths}]) AS v FROM rows)"
    ).to_arrow_table()
    return {k: values.column(i).combine_chunks() for i, k in enumerate(keys)}


def distinct_columns(keys: Sequence[str]) -> list[str]:
    """``keys`` but those equal to another one but for case: SQL names are not
    case-sensitive in DuckDB, so "Plan" and "plan" cannot both be columns (both are
    then read from the JSON)."""
    folded: dict[str, int] = {}
    for key in keys:
        folded[key.casefold()] = folded.get(key.casefold(), 0) + 1
    return [k for k in keys if folded[k.casefold()] == 1]


@functools.lru_cache(maxsize=65_536)
def _columns_of(path: str) -> tuple[frozenset[str], bool]:
    import pyarrow.parquet as pq

    found = pq.read_schema(path)
    props = frozenset(
        n[len(PROPERTY_PREFIX) :] for n in found.names if n.startswith(PROPERTY_PREFIX)
    )
    tag = (found.metadata or {}).get(_HASH_KEY)
    return props, ACTOR_HASH in found.names and tag == hash_tag().encode()


def segment_properties(path: str) -> frozenset[str]:
    """The keys of the property columns of the segment at ``path`` (segment files are
    never changed, and a new one has a new name: cached by path)."""
    return _columns_of(path)[0]


def segment_hashed(path: str) -> bool:
    """Whether the segment at ``path`` has an ``actor_hash`` column made by this
    DuckDB version (another version's ``hash()`` may differ: then it is unused)."""
    return _columns_of(path)[1]


def hash_tag() -> str:
    """What a segment's ``actor_hash`` was made with: DuckDB's ``hash()`` of this version."""
    import duckdb

    return f"duckdb {duckdb.__version__}"


#: SQL: the 64-bit hash of an event's actor id (userId, else anonymousId), NULL without
#: one (``hash(NULL)`` is a number): what a segment's ``actor_hash`` holds
ACTOR_HASH_SQL: Final = (
    "CASE WHEN coalesce(user_id, anonymous_id) IS NULL THEN NULL"
    " ELSE hash(coalesce(user_id, anonymous_id)) END"
)


@dataclass(slots=True)
class SegmentMeta:
    """A segment's row in the ``segments`` table."""

    file: str
    rows: int
    bytes: int
    min_seq: int
    max_seq: int
    min_corrected: int
    max_corrected: int
    tier: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Writer:
    """A segment being written: row groups in, ``SegmentMeta`` out."""

    def __init__(
        self,
        directory: str,
        name: str,
        tier: int,
        props: Sequence[str] = (),
        hashed: bool = False,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = os.path.join(directory, name)
        self.name, self.tier = name, tier
        self.tmp = self.path + ".tmp"
        full = schema()
        for key in props:
            full = full.append(pa.field(PROPERTY_PREFIX + key, pa.string()))
        if hashed:
            full = full.append(pa.field(ACTOR_HASH, pa.uint64()))
            full = full.with_metadata({_HASH_KEY: hash_tag().encode()})
        self.columns = full.names
        self._writer = pq.ParquetWriter(
            self.tmp,
            full,
            compression="zstd",
            # level 1: faster than 3 and, on these columns, no bigger (a 163k-row
            # merged segment: 1.3 vs 1.6 us/event to write, 67.9 vs 72.0 B/event)
            compression_level=1,
            use_dictionary=[
                "project",
                "event_type",
                "user_id",
                "session_id",
                "anonymous_id",
                *(PROPERTY_PREFIX + key for key in props),
            ],
            write_statistics=["seq", "corrected", "project", "event_type"],
        )
        self.rows = 0
        self.bounds: list[int] | None = None  # min seq, max seq, min corrected, max corrected

    def write(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        self._writer.write_table(table.select(self.columns), row_group_size=ROW_GROUP)
        self.rows += table.num_rows
        seq = pc.min_max(table["seq"])
        cor = pc.min_max(table["corrected"])
        now = [seq["min"].as_py(), seq["max"].as_py(), cor["min"].as_py(), cor["max"].as_py()]
        if self.bounds is None:
            self.bounds = now
        else:
            b = self.bounds
            self.bounds = [
                min(b[0], now[0]),
                max(b[1], now[1]),
                min(b[2], now[2]),
                max(b[3], now[3]),
            ]

    def finish(self) -> SegmentMeta | None:
        """Close, fsync and rename; None (and no file) when no row was written."""
        self._writer.close()
        if self.bounds is None:
            os.unlink(self.tmp)
            return None
        digest = hashlib.sha256()
        with open(self.tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(Path(self.path).parent)
        return SegmentMeta(
            file=self.name,
            rows=self.rows,
            bytes=os.path.getsize(self.path),
            min_seq=self.bounds[0],
            max_seq=self.bounds[1],
            min_corrected=self.bounds[2],
            max_corrected=self.bounds[3],
            tier=self.tier,
            sha256=digest.hexdigest(),
        )

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def write_segment(directory: str, name: str, table: pa.Table, tier: int = 0) -> SegmentMeta | None:
    """Write ``table`` (rows in seq order, ``schema()``'s columns) as one segment, with
    the property columns its rows call for."""
    props, hashes = _derived_columns(table)
    for key, values in props.items():
        table = table.append_column(PROPERTY_PREFIX + key, values)
    if hashes is not None:
        table = table.append_column(ACTOR_HASH, hashes)
    writer = _Writer(directory, name, tier, list(props), hashed=hashes is not None)
    try:
        writer.write(table)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def _batches(paths: list[str], columns: list[str]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    for path in paths:
        f = pq.ParquetFile(path)
        for i in range(f.num_row_groups):
            yield f.read_row_group(i, columns=columns)


def rewrite(
    directory: str,
    name: str,
    sources: list[str],
    tier: int,
    keep: Callable[[pa.Table], Any] | None = None,
) -> SegmentMeta | None:
    """One new segment from the row groups of ``sources`` (in seq order), streaming:
    memory stays at a row group. ``keep`` (table -> boolean mask) drops rows."""
    import pyarrow as pa

    # the property columns every source has (a column is the whole segment's or none)
    held = [segment_properties(path) for path in sources]
    props = sorted(held[0].intersection(*held[1:])) if held else []
    hashed = bool(sources) and all(segment_hashed(path) for path in sources)
    writer = _Writer(directory, name, tier, props, hashed=hashed)
    try:
        # Whole row groups of ROW_GROUP rows: the sources' groups are smaller (a
        # compaction's rows), and a merged file would keep them small otherwise.
        pending: list[pa.Table] = []
        buffered = 0
        for table in _batches(sources, writer.columns):
            kept = table if keep is None else table.filter(keep(table))
            pending.append(kept)
            buffered += kept.num_rows
            if buffered >= ROW_GROUP:
                joined = pa.concat_tables(pending)
                whole = buffered - buffered % ROW_GROUP
                writer.write(joined.slice(0, whole))
                pending, buffered = [joined.slice(whole)], buffered - whole
        if buffered:
            writer.write(pa.concat_tables(pending))
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def merge_window(
    segments: Sequence[tuple[int, int]], fanin: int, max_rows: int
) -> tuple[int, int] | None:
    """The next merge among ``segments`` ((rows, tier) each, in seq order):
    ``(start, tier)`` of the first ``fanin`` consecutive segments of one tier whose
    rows together stay within ``max_rows``; None when there is none."""
    for start in range(len(segments) - fanin + 1):
        window = segments[start : start + fanin]
        tier = window[0][1]
        if any(t != tier for _, t in window):
            continue
        if sum(n for n, _ in window) > max_rows:
            continue
        return start, tier
    return None


def drop_matching(
    directory: str,
    name: str,
    new_name: str,
    tier: int,
    rows: int,
    project: str | None,
    ids: Sequence[str] | None,
    before: int | None,
) -> tuple[int, list[tuple[str, str]], SegmentMeta | None]:
    """Segment ``name`` (of ``rows`` rows) without its events of ``project`` (None:
    every project) whose user or anonymous id is one of ``ids``, or whose corrected
    time is before ``before``: ``(rows dropped, their (project, event id)s, the new
    segment new_name)``. Nothing is written when no row matches; the new segment is
    None when every row does."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    id_set = pa.array(list(ids or []), pa.string())

    def doomed(t: pa.Table) -> Any:
        mask = pa.array([True] * t.num_rows, pa.bool_())
        if project is not None:
            mask = pc.equal(t["project"], project)
        if ids is not None:
            who = pc.or_kleene(pc.is_in(t["user_id"], id_set), pc.is_in(t["anonymous_id"], id_set))
            mask = pc.and_kleene(mask, pc.fill_null(who, False))
        if before is not None:
            mask = pc.and_kleene(mask, pc.less(t["corrected"], before))
        return pc.fill_null(mask, False)

    path = os.path.join(directory, name)
    probe = pq.read_table(
        path, columns=["project", "event_id", "user_id", "anonymous_id", "corrected"]
    )
    mask = doomed(probe)
    gone = pc.sum(mask).as_py() or 0
    if gone == 0:
        return 0, [], None
    hit = probe.filter(mask)
    keys = list(zip(hit["project"].to_pylist(), hit["event_id"].to_pylist(), strict=True))
    meta = None
    if gone < rows:
        meta = rewrite(directory, new_name, [path], tier, keep=lambda t: pc.invert(doomed(t)))
    return gone, keys, meta
