"""A staging table between deciding a batch and writing it.

A backfill decides its next batch on one connection while the last one is written on another
(`ttft_reconcile.pipeline`). The deciding statement puts the batch's repaired rows here, under a
stage id it draws from `batch_stage_id`, and commits; the writing transaction deletes them by
that id and applies them (guarded UPDATE of SpendLogs, audit rows) in the same statement.

The table holds nothing that is not derived again on the next run: it is UNLOGGED (no WAL, and
emptied by a crash), and rows a stopped command left behind are deleted by the next one after
`STALE_STAGE` (see `pipeline.py`). A `run`, which decides and writes in one transaction, stages
and consumes its rows there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE SEQUENCE ttft_reconcile.batch_stage_id;
CREATE UNLOGGED TABLE ttft_reconcile.batch_stage (
    stage_id bigint NOT NULL,
    staged_at timestamptz NOT NULL DEFAULT now(),
    row_ctid tid NOT NULL,
    row_xmin xid NOT NULL,
    row_rel oid,
    request_id text NOT NULL,
    start_time timestamp NOT NULL,
    old_cst timestamp,
    new_cst timestamp NOT NULL,
    call_type text,
    model_group text,
    j_req text,
    j_col text,
    j_resp text,
    litellm_call_id text,
    stream_seq integer,
    streams bigint,
    trace_outcome text,
    chunk_count integer,
    request_start_at timestamp,
    api_call_start_at timestamp,
    first_chunk_at timestamp,
    first_event_at timestamp,
    first_output_at timestamp,
    first_visible_at timestamp
);
CREATE INDEX batch_stage_stage_id ON ttft_reconcile.batch_stage (stage_id);
-- owned by the column: the sequence follows the table's owner (deploy/sql/roles.sql)
ALTER SEQUENCE ttft_reconcile.batch_stage_id OWNED BY ttft_reconcile.batch_stage.stage_id;
COMMENT ON TABLE ttft_reconcile.batch_stage IS
    'Repaired rows of a decided batch waiting for its write (unlogged scratch space; see migration 0004).';
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS ttft_reconcile.batch_stage;  -- and its sequence
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
