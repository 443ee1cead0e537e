"""A SpendLogs an operator has partitioned: monthly RANGE partitions on "startTime",
primary key (request_id, "startTime"), filled from the migrated table."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg

from tests.factories import BASE, broken_stream, cst_of, insert_spend, insert_trace, ms, snapshot
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.settings import JobSettings

PARTITION_SQL = """
ALTER TABLE "LiteLLM_SpendLogs" RENAME TO "LiteLLM_SpendLogs_unpartitioned";
ALTER TABLE "LiteLLM_SpendLogs_unpartitioned" RENAME CONSTRAINT "LiteLLM_SpendLogs_pkey" TO "spend_logs_old_pkey";
CREATE TABLE "LiteLLM_SpendLogs" (LIKE "LiteLLM_SpendLogs_unpartitioned" INCLUDING DEFAULTS)
    PARTITION BY RANGE ("startTime");
ALTER TABLE "LiteLLM_SpendLogs" ADD CONSTRAINT "LiteLLM_SpendLogs_pkey" PRIMARY KEY (request_id, "startTime");
CREATE INDEX ON "LiteLLM_SpendLogs" ("startTime");
CREATE INDEX ON "LiteLLM_SpendLogs" ("startTime", request_id);
CREATE TABLE "LiteLLM_SpendLogs_2026_02" PARTITION OF "LiteLLM_SpendLogs"
    FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE "LiteLLM_SpendLogs_2026_03" PARTITION OF "LiteLLM_SpendLogs"
    FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
INSERT INTO "LiteLLM_SpendLogs" SELECT * FROM "LiteLLM_SpendLogs_unpartitioned";
DROP TABLE "LiteLLM_SpendLogs_unpartitioned";
"""


def test_partitioned_spend_logs_are_repaired_and_rolled_back(any_era_db_url: str) -> None:
    rows = []
    with psycopg.connect(any_era_db_url) as conn:
        for day in (datetime(2026, 2, 28, 23, 59, 59), BASE):
            row = broken_stream(day, request_id=str(uuid.uuid4()))
            rows.append(row)
            insert_spend(conn, [row])
            insert_trace(conn, row.request_id, request_start=day, first_chunk=day + ms(321))
        conn.execute(PARTITION_SQL)
        conn.commit()
        assert conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'LiteLLM_SpendLogs'").fetchone() == ("p",)
        before = snapshot(conn)
    settings = JobSettings(database=parse_database_url(any_era_db_url))
    done = job.backfill(settings, datetime(2026, 2, 1, tzinfo=timezone.utc), datetime(2026, 4, 1, tzinfo=timezone.utc))
    assert done.outcomes["repaired"] == 2
    with psycopg.connect(any_era_db_url) as conn:
        for row in rows:
            assert cst_of(conn, row.request_id) == row.start + ms(321)
        assert conn.execute("SELECT litellm_schema FROM ttft_reconcile.runs WHERE id = %s",
                            (done.run_id,)).fetchone()[0].endswith("partitioned")  # type: ignore[index]
    job.rollback(settings, run_id=done.run_id)
    with psycopg.connect(any_era_db_url) as conn:
        assert snapshot(conn) == before
