"""The SQL the insights engine writes: ``Sql`` (text with bound parameters, filters,
property values, buckets, the events CTE) and the ranking of breakdown values.

Values from the caller reach SQL only as bound parameters; what is spliced into the
SQL text comes from closed sets checked by ``_model.validate`` (intervals, column
names, operators) or is a validated property key in a JSON path literal.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any, Final

import duckdb

from innkt_analytics.server.insights._model import Breakdown, EventSpec, PropertyFilter, Query
from innkt_analytics.server.insights._reference import OTHER
from innkt_analytics.server.storage._segments import ACTOR_HASH, PROPERTY_PREFIX, json_member

__all__ = ["LABEL", "SOURCE", "UNIQUE", "Source", "Sql", "grouped", "ranked_groups"]

_NUMERIC: Final = "('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')"
#: a bucket's label, as ``_events.label`` writes it
LABEL: Final = "'%Y-%m-%dT%H:%M:%S'"

#: set by ``_run``: whether ``src`` holds each event id once
UNIQUE: contextvars.ContextVar[bool] = contextvars.ContextVar("unique", default=False)
#: set by ``_run``: what the connection reads (``Source``)
SOURCE: contextvars.ContextVar[Source | None] = contextvars.ContextVar("source", default=None)
#: where a filter's or breakdown's ``source`` sits in an event's stored JSON
_STORED_KEY: Final = {"properties": "properties", "context": "context", "device": "deviceInfo"}


class Source:
    """What a connection reads: an Arrow table of ``arrow_schema()`` (``src``), or a
    storage's stored rows (``raw_events`` of ``connect_segments``: the JSON payload,
    ids not yet mapped to persons), and whether ids map to persons (``person_of``)."""

    def __init__(self, stored: bool, mapped: bool, props: frozenset[str] = frozenset()) -> None:
        #: ``props``: the ``properties`` keys ``raw_events`` has a ``p:<key>`` column of
        self.stored, self.mapped, self.props = stored, mapped, props

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection) -> Source:
        names = {
            name
            for (name,) in con.execute(
                "SELECT view_name FROM duckdb_views() "
                "WHERE view_name IN ('raw_events', 'person_of')"
            ).fetchall()
        }
        props = frozenset(
            name[len(PROPERTY_PREFIX) :]
            for (name,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'raw_events'"
                " AND starts_with(column_name, $prefix)",
                {"prefix": PROPERTY_PREFIX},
            ).fetchall()
        )
        return cls("raw_events" in names, "person_of" in names, props)


class Sql:
    """SQL text with its parameters.

    Property values are read as JSON values (``value``): from the stored payload
    directly on a storage's rows (one parse of the payload per key, not one to cut
    out ``properties`` and another to read the key from it), from the ``properties``,
    ``context`` or ``device`` column of an Arrow table otherwise.
    """

    def __init__(self) -> None:
        # named, so the order the SQL is built in need not be the order it reads in
        self.params: dict[str, Any] = {}
        self.unique = UNIQUE.get()
        self.source = SOURCE.get() or Source(stored=False, mapped=False)

    def p(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def used(self, text: str) -> dict[str, Any]:
        """The parameters ``text`` reads (a statement refuses any other)."""
        return {name: self.params[name] for name in set(re.findall(r"\$(p\d+)\b", text))}

    def _column(self, source: str, key: str) -> str | None:
        """The ``raw_events`` column holding the key's JSON text, if there is one."""
        if self.source.stored and source == "properties" and key in self.source.props:
            return f'"{PROPERTY_PREFIX}{key}"'
        return None

    def value(self, source: str, key: str) -> str:
        """The key's JSON value; NULL when missing or when ``source`` is no object."""
        column = self._column(source, key)
        if column is not None:
            return f"CAST({column} AS JSON)"
        member = json_member(key)
        if self.source.stored:
            return f"json_extract(payload, '$.{_STORED_KEY[source]}{member}')"
        return f"json_extract({source}, '${member}')"

    def eq(self, v: str, value: Any) -> str:
        if isinstance(value, bool):
            return (
                f"json_type({v}) = 'BOOLEAN' AND "
                f"json_extract_string({v}, '$') = {self.p(str(value).lower())}"
            )
        if isinstance(value, str):
            return f"json_type({v}) = 'VARCHAR' AND json_extract_string({v}, '$') = {self.p(value)}"
        return f"{self.number(v)} = {self.p(float(value))}"

    def number(self, v: str) -> str:
        """The JSON value ``v`` as a DOUBLE when it is a number, else NULL."""
        return (
            f"(CASE WHEN json_type({v}) IN {_NUMERIC} "
            f"THEN CAST(json_extract_string({v}, '$') AS DOUBLE) END)"
        )

    def filter(self, f: PropertyFilter) -> str:
        v = self.value(f.source, f.key)
        if f.op in ("is_set", "is_not_set"):
            cond = f"coalesce(json_type({v}) <> 'NULL', false)"
            return cond if f.op == "is_set" else f"NOT {cond}"
        if f.op == "eq":
            return f"coalesce({self.eq(v, f.value)}, false)"
        if f.op == "neq":
            return f"NOT coalesce({self.eq(v, f.value)}, false)"
        if f.op == "in":
            assert isinstance(f.value, list)
            return "(" + " OR ".join(f"coalesce({self.eq(v, x)}, false)" for x in f.value) + ")"
        if f.op == "contains":
            return (
                f"coalesce(json_type({v}) = 'VARCHAR' AND "
                f"contains(json_extract_string({v}, '$'), {self.p(f.value)}), false)"
            )
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
        return f"coalesce({self.number(v)} {sym} {self.p(float(f.value))}, false)"  # type: ignore[arg-type]  # a number: validated

    def filters(self, filters: list[PropertyFilter]) -> str:
        return " AND ".join(["true", *(f"({self.filter(f)})" for f in filters)])

    def spec(self, spec: EventSpec) -> str:
        cond = "true" if spec.event is None else f"event_type = {self.p(spec.event)}"
        return f"({cond} AND {self.filters(spec.filters)})"

    def breakdown_json(self, b: Breakdown) -> str:
        """The JSON text of the breakdown's value (NULL when missing): what
        ``breakdown_of`` makes the value of. Grouping by the text is cheaper than
        reading each event's value: a property column is the text already."""
        column = self._column(b.source, b.property)
        return column or f"CAST({self.value(b.source, b.property)} AS VARCHAR)"

    @staticmethod
    def breakdown_of(text: str) -> str:
        """``breakdown`` of a value given as its JSON text (``breakdown_json``)."""
        return f"json_extract_string(CAST({text} AS JSON), '$')"

    def breakdown(self, b: Breakdown) -> str:
        # a string's text, NULL for null or missing, any other value's JSON text
        return f"json_extract_string({self.value(b.source, b.property)}, '$')"

    def bucket(self, interval: str, zone: str) -> str:
        """The wall-clock start of the event's bucket as a naive TIMESTAMP."""
        assert interval in ("minute", "hour", "day", "week", "month")
        if zone == "UTC":  # epoch_ms is UTC's wall clock already: no ICU conversion
            return f"date_trunc('{interval}', epoch_ms(ts))"
        return (
            f"date_trunc('{interval}', timezone({self.p(zone)}, CAST(epoch_ms(ts) AS TIMESTAMPTZ)))"
        )

    def base(
        self, query: Query, project: str, *, persons: bool = True, id_hash: bool = False
    ) -> str:
        """The ``ev`` CTE: ``events``."""
        return f"ev AS ({self.events(query, project, persons=persons, id_hash=id_hash)})"

    def events(
        self, query: Query, project: str, *, persons: bool = True, id_hash: bool = False
    ) -> str:
        """The project's events, one per event id, past the query's filters, with
        ``id`` (user or else anonymous id) and ``actor`` (its person).

        On a storage's rows ``persons=False`` leaves ``actor`` the id: the join with
        the mapping then waits for the caller's fewer rows (``persons_of``)."""
        if self.source.stored:
            join = ""
            actor = "coalesce(e.user_id, e.anonymous_id)"
            if persons and self.source.mapped:
                join = f" LEFT JOIN person_of pm ON pm.id = {actor}"
                actor = f"coalesce(pm.person, {actor})"
            rows = "raw_events"
            if not self.unique:
                rows = (
                    "(SELECT * FROM raw_events QUALIFY row_number() OVER "
                    "(PARTITION BY project, event_id ORDER BY seq) = 1)"
                )
            props = "".join(f', e."{PROPERTY_PREFIX}{k}"' for k in sorted(self.source.props))
            return (
                f"SELECT e.event_id, e.seq, e.event_type, e.ts, e.session_id, e.payload{props}, "
                f"{f'e.{ACTOR_HASH} AS id_hash, ' if id_hash else ''}"
                f"coalesce(e.user_id, e.anonymous_id) AS id, {actor} AS actor FROM {rows} e"
                f"{join} WHERE e.project = {self.p(project)} AND {self.filters(query.filters)}"
            )
        if self.unique:  # a storage's events: one per (project, event id) already
            return (
                f"SELECT *, actor AS id FROM src WHERE project = {self.p(project)}"
                f" AND {self.filters(query.filters)}"
            )
        return (
            "SELECT *, actor AS id FROM (SELECT *, row_number() OVER "
            "(PARTITION BY event_id ORDER BY seq) AS dup FROM src "
            f"WHERE project = {self.p(project)}) WHERE dup = 1 AND {self.filters(query.filters)}"
        )

    def id_hash(self) -> str:
        """An ``events`` row's ``hash(id)`` (made with ``id_hash=True``): stored with a
        storage's rows (the segments' ``actor_hash``, made by this DuckDB, or computed),
        computed otherwise. Only a query that reads it asks for it: ``SELECT *`` over
        the events would read the 8-byte column too."""
        return "id_hash" if self.source.stored else "hash(id)"

    def persons_of(self, table: str, *, hashed: bool = False) -> str:
        """``table``'s rows with ``actor``: the person of their ``id`` (``base`` with
        ``persons=False``; an Arrow table's ids are persons already). ``hashed``:
        ``id`` is DuckDB's 64-bit ``hash()`` of the id, and ``actor`` is then the hash
        of the person (grouping millions of events by an integer instead of a string
        is ~25 % faster; a collision has a chance of about n^2 / 2^65)."""
        if self.source.stored and self.source.mapped:
            if hashed:
                return (
                    # not coalesce(): hash(NULL) is a number, not NULL
                    f"SELECT t.*, CASE WHEN pm.id IS NULL THEN t.id ELSE hash(pm.person) END"
                    f" AS actor FROM {table} t "
                    "LEFT JOIN person_of pm ON hash(pm.id) = t.id"
                )
            return (
                f"SELECT t.*, coalesce(pm.person, t.id) AS actor FROM {table} t "
                "LEFT JOIN person_of pm ON pm.id = t.id"
            )
        return f"SELECT *, id AS actor FROM {table}"


def ranked_groups(table: str, weight: str, limit: int, sql: Sql) -> str:
    """SQL for ``ranked``: ``table``'s breakdown values ``bv`` ranked as
    ``_reference._top`` ranks them, by the aggregate ``weight``."""
    order = "w DESC, bv IS NULL, coalesce(bv, '')"
    return (
        f"top AS (SELECT bv, {weight} AS w FROM {table} GROUP BY 1 "
        f"ORDER BY {order} LIMIT {sql.p(limit)}), "
        f"ranked AS (SELECT bv, row_number() OVER (ORDER BY {order}) AS r FROM top)"
    )


def grouped(table: str, sql: Sql) -> str:
    """``table``'s rows with their group: ``grp`` (the value, or ``$other`` past the
    top ones) and its rank ``r`` (``$other`` last)."""
    return (
        f"SELECT t.*, CASE WHEN ranked.r IS NULL THEN {sql.p(OTHER)} ELSE t.bv END AS grp, "
        f"coalesce(ranked.r, 1000) AS r FROM {table} t "
        "LEFT JOIN ranked ON t.bv IS NOT DISTINCT FROM ranked.bv"
    )
