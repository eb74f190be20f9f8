"""Dagster's PostgreSQL storages, keeping their connection open for the life of the process.

Outside the webserver, dagster-postgres opens a new connection for every storage call. One run
of a window writes every event and, for each asset check result, reads back the checked
partition's materialisation: hundreds of connections per run (docs/performance.md).
These classes give every process the pooled engine the webserver already gets
(``optimize_for_webserver``): one held connection per storage, more only under concurrent use,
and no statement timeout (a run's writes must not be cut off). ``dagster.yaml`` names them.
Their sessions run in UTC, as every connection of the project does (``storage.database``): Dagster
keeps instants in ``timestamp`` columns, some filled by ``CURRENT_TIMESTAMP``, and reads them as UTC.
"""

from __future__ import annotations

from forecasting_pipeline.heap import imports_without_collection

# Every process that opens this instance (runs, the daemon, the webserver) has just imported
# Dagster, SQLAlchemy and alembic to get here, and keeps them (heap.py says why this saves time).
with imports_without_collection():
    from dagster import DagsterEventType
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
    from dagster._core.storage.event_log import SqlEventLogStorageTable
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
    from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
    from dagster_shared.serdes import serialize_value
    from sqlalchemy import event

# Connections beyond the held one while threads (the daemon's, the webserver's) overlap.
MAX_OVERFLOW = 10
POOL_RECYCLE_S = 3600
NO_STATEMENT_TIMEOUT = 0


def _pooled(storage):
    storage.optimize_for_webserver(
        statement_timeout=NO_STATEMENT_TIMEOUT, pool_recycle=POOL_RECYCLE_S, max_overflow=MAX_OVERFLOW
    )
    event.listen(storage._engine, "connect", lambda connection, _: _set_utc(connection))
    return storage


def _set_utc(dbapi_connection) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET TIME ZONE 'UTC'")
    finally:
        cursor.close()


# dagster-postgres' from_config_value builds its own class by name: wrap it rather than subclass
# the constructor. inst_data still names these classes, so every process (run workers, the daemon)
# builds the pooled storage from the instance's config.
class PooledPostgresRunStorage(PostgresRunStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return _pooled(super().from_config_value(inst_data, config_value))


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """Also remembers which tables exist.

    Storing each asset event asks whether the asset-event tags table exists while its own
    transaction holds the one pooled connection, so every asset event opened (and closed) an
    extra connection. Tables are created by migrations, never dropped while a process runs, so a
    table seen once is known from then on.
    """

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        storage = cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
        return _pooled(storage)

    def has_table(self, table_name: str) -> bool:
        known = self.__dict__.setdefault("_tables_known", set())
        if table_name not in known and super().has_table(table_name):
            known.add(table_name)
        return table_name in known

    def store_event_batch(self, events) -> None:
        """Planned materialisations in one insert, as dagster-postgres already stores materialisations.

        A backfill run plans one materialisation per window of each asset before it starts, and
        dagster-postgres stores a batch of them (mixed with the run's planned checks) one event at
        a time. The rows are the same; the asset table records each asset's last planned event, as
        storing them singly would leave it. Other events of the batch go the usual way.
        """
        planned = [e for e in events if e.get_dagster_event().event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
        others = [e for e in events if e.get_dagster_event().event_type != DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
        if planned:
            self._store_planned_batch(planned)
        if others:
            super().store_event_batch(others)

    def _store_planned_batch(self, events) -> None:
        with self._connect() as conn:
            inserted = conn.execute(self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id))
            event_ids = [int(row[0]) for row in inserted.fetchall()]
        last_of_asset = {event.get_dagster_event().asset_key: (event, event_id) for event, event_id in zip(events, event_ids)}
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in last_of_asset.values():
                self._store_asset_event(conn, event, event_id)

    def _store_asset_check_evaluation_planned(self, event, event_id) -> None:
        """One row per planned partition of a check, as dagster-postgres writes them, built once.

        A backfill run plans each check for every window of the run, and dagster-postgres
        serialises the whole planned event (which lists the run's windows) again for each window's
        row and compiles one statement with every row's values inlined. The rows are the same.
        """
        planned = event.get_dagster_event().event_specific_data
        partition_keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        shared = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": serialize_value(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**shared, "partition": key} for key in partition_keys])


class PooledPostgresScheduleStorage(PostgresScheduleStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return _pooled(super().from_config_value(inst_data, config_value))
