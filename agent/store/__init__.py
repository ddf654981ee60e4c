"""The usage store: UsageRecords into the `usage_logs` table (SQLite by default, PostgreSQL
for fleets), one row per request that reached the sidecar.

- `schema.py`: the tables as peewee models, the columns derived from UsageRecord's fields.
- `database.py`: opening a database URL (`StoreError` with one line on failure), migrating.
- `writer.py`: `UsageStore`, the bounded queue and writer thread the proxy submits to;
  `insert.py`: its multi-row INSERT.
- `spill.py`: the files records go to when the database cannot take them, and re-ingesting.
- `queries.py`: reading, exporting, counting and deleting stored records.

The ops API's aggregate queries (`/ops/stats`: counts, error rates, latency percentiles per
group, in SQL for SQLite and for PostgreSQL) go in `stats.py` next to `queries.py`.

Code in this repository imports each name from the module that defines it; the names below
are re-exported for code written against the single-module store.
"""

from agent.store.database import StoreError, migrate, open_database, redact_url
from agent.store.queries import get_record, iter_records
from agent.store.writer import UsageStore

__all__ = ["StoreError", "UsageStore", "get_record", "iter_records", "migrate", "open_database", "redact_url"]
