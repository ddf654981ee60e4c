"""The `usage_logs` table and the `schema_meta` table, as peewee models, and the converters
from UsageRecord values to column values.

The columns are derived from UsageRecord's type hints, so the record stays the one place
that lists the fields: a new record field is a new column (and a migration in
`agent/store/database.py`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import peewee

from agent.durations import as_utc
from agent.records import FIELD_NAMES, field_types

# 1: the first layout. 2: ids never reused (SQLite AUTOINCREMENT; the rows and ids of version 1 kept).
# 3: rollups per 5 minutes and per hour (`usage_rollups`, `usage_rolled_periods`), made from the
#    stored records.
# 4: `instance` (the sidecar of a fleet that metered the record) and `cost` on every record; the
#    rollups keyed by instance as well and carrying the cost sum (their tables are made anew).
SCHEMA_VERSION: Final = 4

ADDED_COLUMNS: Final[dict[str, int]] = {"instance": 4, "cost": 4}
ROLLUPS_REMADE: Final = 4
"""The version whose migration drops the rollup tables and makes them in its layout (the writer
rolls the stored records up again)."""
"""Record fields that arrived after the first layout, with the schema version that added them:
the migration adds them to an older table as nullable columns (the old rows read None)."""


def ts_to_db(ts: datetime) -> str:
    # Naive UTC text with fixed microseconds: compares correctly as text in SQLite, reads like
    # SQLite's own datetime('now') in ad-hoc queries, and PostgreSQL casts it to TIMESTAMP.
    return as_utc(ts).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class UTCDateTimeField(peewee.DateTimeField):
    """A timestamp stored as naive UTC and read back as an aware UTC datetime."""

    def db_value(self, value: Any) -> Any:
        if isinstance(value, str):
            value = self.adapt(value)  # "2026-01-31 12:00" in a query: same text form as stored
        return ts_to_db(value) if isinstance(value, datetime) else value

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        return as_utc(value) if isinstance(value, datetime) else value


class NeverReusedIdField(peewee.BigAutoField):
    """An auto-increment id that no later row gets again, even after the newest rows are
    deleted (by `db prune`, `db reset`): PostgreSQL's BIGSERIAL already works that way; SQLite
    hands out max(id) + 1 unless the column says AUTOINCREMENT."""

    def ddl(self, ctx: Any) -> peewee.NodeList:
        node = super().ddl(ctx)
        # Only SQLite maps peewee's auto id to a bare INTEGER (the rowid alias).
        if ctx.state.field_types.get(self.field_type) == "INTEGER":
            return peewee.NodeList((node, peewee.SQL("AUTOINCREMENT")))
        return node


# -- the columns, from UsageRecord --------------------------------------------------------------

_INDEXED: Final = frozenset({"ts", "request_id", "user", "model", "team", "instance"})
_FIELD_CLASSES: Final[dict[type, type[peewee.Field]]] = {
    str: peewee.TextField,  # not VARCHAR(255): errors, prompts and paths have no fixed length
    int: peewee.BigIntegerField,
    float: peewee.DoubleField,  # DOUBLE PRECISION on PostgreSQL; FloatField would be REAL
    bool: peewee.BooleanField,
    datetime: UTCDateTimeField,
}


_INT64: Final = range(-(2**63), 2**63)


def _int(value: Any) -> int:
    n = int(value)
    if n not in _INT64:  # sqlite3 raises OverflowError, PostgreSQL "bigint out of range"
        raise ValueError(f"{n} does not fit a 64-bit integer")
    return n


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. a client's JSON "\ud800"
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    str: _text,
    int: _int,
    float: float,
    bool: bool,
    datetime: ts_to_db,
}


def _to_db(name: str, base: type, nullable: bool) -> Callable[[Any], Any]:
    """A strict converter for the writer: a value the column cannot hold raises here, for
    one record, instead of failing its whole batch in the database again and again (and
    then every re-ingest of the spill file that batch went to)."""
    convert = _CONVERTERS[base]

    def to_db(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValueError(f"{name} must not be None")
        return convert(value)

    return to_db


# -- the models ---------------------------------------------------------------------------------


class UsageLog(peewee.Model):
    """A stored UsageRecord: auto `id` + one column per record field (added below).

    Not bound to a database: bind each query to the one `open_database` returned
    (`UsageLog.select().bind(db)`), or use the functions in `agent/store/queries.py`."""

    id = NeverReusedIdField()

    class Meta:
        table_name = "usage_logs"


_TYPES: Final = field_types()
# Added after the class body so the columns follow `id` in FIELD_NAMES order.
for _name, (_base, _nullable) in _TYPES.items():
    UsageLog._meta.add_field(_name, _FIELD_CLASSES[_base](null=_nullable, index=_name in _INDEXED))


class SchemaMeta(peewee.Model):
    """One row per schema version applied to this database."""

    version = peewee.IntegerField(primary_key=True)

    class Meta:
        table_name = "schema_meta"


class UsageRollup(peewee.Model):
    """The records of one period (`span_s` seconds from `period`: 300 or 3600) of one sidecar
    (`instance`, "" for records without one) for one grouping (`dims`, e.g. "team,model") and
    one value of each of its dimensions (`k1`, `k2`; "" for none): exact counts and sums (the
    cost in billionths, `cost_e9`, of the `costed` records that had one), and how many values
    of latency, TTFT and tokens/s fell in each log-spaced bucket (a JSON list, see
    `agent/store/rollups.py`). Written by that module once the period is over."""

    span_s = peewee.IntegerField()
    dims = peewee.TextField()
    period = UTCDateTimeField()
    instance = peewee.TextField()
    k1 = peewee.TextField()
    k2 = peewee.TextField()
    requests = peewee.BigIntegerField()
    errors = peewee.BigIntegerField()
    tokens_in = peewee.BigIntegerField()
    tokens_out = peewee.BigIntegerField()
    cached_tokens = peewee.BigIntegerField()
    reasoning_tokens = peewee.BigIntegerField()
    estimated = peewee.BigIntegerField()
    costed = peewee.BigIntegerField()
    cost_e9 = peewee.BigIntegerField()
    latency_ms = peewee.TextField()
    ttft_ms = peewee.TextField()
    tokens_per_second = peewee.TextField()

    class Meta:
        table_name = "usage_rollups"
        # The reads ask for one span, grouping and period range, of one instance or all.
        primary_key = peewee.CompositeKey("span_s", "dims", "period", "instance", "k1", "k2")


class UsageRolledPeriod(peewee.Model):
    """One row per period whose records are in the rollups (records written later for it are
    added as they are written)."""

    span_s = peewee.IntegerField()
    period = UTCDateTimeField()

    class Meta:
        table_name = "usage_rolled_periods"
        primary_key = peewee.CompositeKey("span_s", "period")


class QuotaUsage(peewee.Model):
    """The usage one quota scope has in one window, summed over every sidecar sharing the store
    (PostgreSQL): each adds what its finished requests used (`agent/store/counters.py`) and
    reads the totals back. What admission needs, not the accounts: the records are those.
    Rows of windows long over are deleted by the sidecars' sync."""

    rule = peewee.TextField()  # user:alice, team:ml, everyone
    scope = peewee.TextField()  # whose usage: user:alice or team:ml
    period = peewee.TextField()  # minute, day, month
    window_start = peewee.BigIntegerField()  # epoch seconds
    window_end = peewee.BigIntegerField(index=True)
    requests = peewee.BigIntegerField(default=0)
    input_tokens = peewee.BigIntegerField(default=0)
    output_tokens = peewee.BigIntegerField(default=0)
    tokens = peewee.BigIntegerField(default=0)
    cost = peewee.DoubleField(default=0.0)  # in the price table's currency: admission, not accounts

    class Meta:
        table_name = "quota_usage"
        primary_key = peewee.CompositeKey("rule", "scope", "period", "window_start")


class SidecarInstance(peewee.Model):
    """One sidecar of the fleet writing to this store (agent/store/registry.py): upserted at its
    start, `last_seen` renewed by its heartbeat, `stopped` set by its clean shutdown. `run_id`
    tells two processes that claim the same `instance` apart; `upstream_status` is its prober's
    last answer as JSON, so any sidecar can show every sidecar's upstream."""

    instance = peewee.TextField(primary_key=True)
    run_id = peewee.TextField()
    host = peewee.TextField()
    pid = peewee.BigIntegerField()
    version = peewee.TextField()
    upstream = peewee.TextField()
    upstream_status = peewee.TextField()
    auth = peewee.TextField()
    listen = peewee.TextField()
    ops_listen = peewee.TextField()
    pod = peewee.TextField(null=True)
    namespace = peewee.TextField(null=True)
    node = peewee.TextField(null=True)
    heartbeat_s = peewee.DoubleField()
    started = UTCDateTimeField()
    last_seen = UTCDateTimeField()
    stopped = UTCDateTimeField(null=True)

    class Meta:
        table_name = "sidemeter_instances"


# create_all(safe=True) in `migrate` makes a table missing from an older database: the registry
# and the quota counters arrived within schema 4, so neither needs a version of its own.
MODELS: Final = (UsageLog, SchemaMeta, UsageRollup, UsageRolledPeriod, SidecarInstance, QuotaUsage)
ROLLUP_TABLE: Final = UsageRollup._meta.table_name
ROLLED_TABLE: Final = UsageRolledPeriod._meta.table_name
USAGE_TABLE: Final = UsageLog._meta.table_name
COLUMNS: Final[dict[str, peewee.Field]] = UsageLog._meta.fields
RECORD_COLUMNS: Final = tuple(COLUMNS[name] for name in FIELD_NAMES)
CONVERTERS_TO_DB: Final = tuple(_to_db(name, *_TYPES[name]) for name in FIELD_NAMES)
record_values: Final = operator.attrgetter(*FIELD_NAMES)
