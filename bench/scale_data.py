"""Data for the scale benchmark: scratch databases with LiteLLM's 1.82.3-era schema, seeding,
and restoring the rows between measurements (so every measurement starts from the same data)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.litellm_schema import apply_litellm_schema
from ttft_reconcile.migrate import upgrade
from ttft_reconcile.synth import SynthResult, SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parent.parent
OLD_EXTRAS = "0.4.56"  # the litellm-proxy-extras of LiteLLM 1.82.3's era: request ids are call ids
CALL_TYPES = ("anthropic_messages", "aresponses", "pass_through_endpoint")
JOB_TABLES = ("corrections", "runs", "checkpoints", "backfills", "backfill_slices", "leases", "ttft_daily",
              "batch_stage")


def shares(broken: float, untraced: float) -> dict[str, float]:
    """The benchmark's mix: `broken` traced fallback streams, `untraced` ones without a trace."""
    rest = max(0.0, 1.0 - broken - untraced)
    return {
        "broken_stream": broken,
        "broken_untraced": untraced,
        "healthy_stream": rest * 0.17,
        "non_streaming": rest * 0.14,
        "other_call_type": rest * 0.65,
        "no_first_output": rest * 0.01,
        "out_of_bounds": rest * 0.005,
        "retried_stream": rest * 0.01,
        "ambiguous": rest * 0.0025,
        "confirmed": rest * 0.0025,
    }


def extras_wheel(version: str = OLD_EXTRAS) -> Path:
    """The litellm-proxy-extras wheel of `version` from the wheel cache, fetched once with pip."""
    cache = REPO / ".cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"litellm_proxy_extras-{version}-*.whl"
    if not sorted(cache.glob(pattern)):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache),
             f"litellm-proxy-extras=={version}"],
            check=True, timeout=600,
        )
    return sorted(cache.glob(pattern))[0]


def with_database(admin_url: str, name: str) -> str:
    """`admin_url` pointed at database `name` (URL or `?host=` socket form)."""
    head, sep, query = admin_url.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}{sep}{query}"


def create_database(admin_url: str, name: str, wheel: Path) -> str:
    """A fresh database with LiteLLM's schema from `wheel` and our migrations; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    apply_litellm_schema(url, wheel)
    engine = make_engine(parse_database_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Seeded:
    url: str
    rows: int
    since: datetime
    until: datetime
    synth: SynthResult
    table_bytes: int  # heap + TOAST of SpendLogs (no indexes)
    index_bytes: int
    trace_bytes: int  # stream_traces, all partitions, with indexes


def seed(url: str, *, rows: int, since: datetime, until: datetime, metadata_bytes: int,
         mix: dict[str, float], seed_value: int) -> Seeded:
    """Write the rows and traces, snapshot the candidate rows, VACUUM ANALYZE, CHECKPOINT."""
    spec = SynthSpec(rows=rows, since=since, until=until, seed=seed_value, era="old", shares=mix,
                     metadata_bytes=metadata_bytes, keep_truth=False)
    with psycopg.connect(url) as conn:
        result = write_synthetic(conn, spec)
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute(
            'CREATE TABLE bench.snapshot AS SELECT request_id, "startTime" AS start_time,'
            ' "completionStartTime" AS cst FROM "LiteLLM_SpendLogs" WHERE call_type = ANY(%s)'
            ' AND ("completionStartTime" IS NULL'
            '      OR abs(extract(epoch FROM "endTime" - "completionStartTime")) <= 0.005)',
            (list(CALL_TYPES),),
        )
        conn.commit()
    settle(url)
    with psycopg.connect(url) as conn:
        sizes = conn.execute(
            "SELECT pg_table_size('\"LiteLLM_SpendLogs\"'), pg_indexes_size('\"LiteLLM_SpendLogs\"'),"
            " (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            "  JOIN pg_inherits i ON i.inhrelid = c.oid"
            "  WHERE i.inhparent = 'ttft_reconcile.stream_traces'::regclass)"
        ).fetchone()
    assert sizes is not None
    return Seeded(url, rows, since, until, result, int(sizes[0]), int(sizes[1]), int(sizes[2]))


def settle(url: str) -> None:
    """VACUUM ANALYZE SpendLogs and the traces, then CHECKPOINT: every measurement starts level."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('VACUUM (ANALYZE) "LiteLLM_SpendLogs"')
        conn.execute("VACUUM (ANALYZE) ttft_reconcile.stream_traces")
        conn.execute("CHECKPOINT")


def restore(url: str, *, settle_after: bool = True, since: datetime | None = None) -> int:
    """Put back every snapshotted completionStartTime (of rows from `since` on, naive or aware UTC,
    when given) and empty the job's own tables; returns rows reset. Then VACUUM ANALYZE and
    CHECKPOINT (`settle`) unless `settle_after` is False: between samples of a one-hour `run` that
    pass would read the whole table through the caches, so the next sample would measure how big
    the table is, not what `run` does. For the same reason a `since` restore reaches its rows
    through the startTime index instead of joining the whole snapshot to the whole table."""
    recent = ""
    params: dict[str, datetime] = {}
    if since is not None:
        recent = ' AND s."startTime" >= %(since)s AND b.start_time >= %(since)s'
        params["since"] = since.astimezone(timezone.utc).replace(tzinfo=None) if since.tzinfo else since
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            'UPDATE "LiteLLM_SpendLogs" s SET "completionStartTime" = b.cst FROM bench.snapshot b'
            ' WHERE s.request_id = b.request_id AND s."startTime" = b.start_time'
            ' AND s."completionStartTime" IS DISTINCT FROM b.cst' + recent,
            params,
        )
        reset = cur.rowcount
        conn.execute("TRUNCATE " + ", ".join(f"ttft_reconcile.{t}" for t in JOB_TABLES) + " CASCADE")
        conn.commit()
    if settle_after:
        settle(url)
    return reset


BASELINE_SQL = (
    'UPDATE "LiteLLM_SpendLogs" s SET "completionStartTime" = t.first_chunk_at'
    " FROM ttft_reconcile.stream_traces t WHERE s.request_id = t.litellm_call_id"
    " AND s.call_type IN ('anthropic_messages', 'aresponses', 'pass_through_endpoint')"
    ' AND abs(extract(epoch FROM s."endTime" - s."completionStartTime")) <= 0.005'
    ' AND t.first_chunk_at BETWEEN s."startTime" AND s."endTime"'
)


def disk_estimate(rows: int, metadata_bytes: int, big_rows: int, big_metadata_bytes: int,
                  traced_share: float) -> int:
    """Bytes the benchmark needs: both tables with indexes and traces, plus dead rows and WAL."""
    per_row = 900  # heap tuple, five SpendLogs indexes, snapshot share
    per_trace = 1300  # a trace with its evidence arrays and two indexes
    small = rows * (metadata_bytes + per_row + traced_share * per_trace)
    big = big_rows * (big_metadata_bytes + per_row + traced_share * per_trace)
    return int((small + big) * 1.3 + 2 * 1024**3)  # dead tuples of the restores, 1-2 GB of WAL


def time_range(until: datetime, rows: int, rows_per_day: float) -> tuple[datetime, datetime]:
    """[since, until) holding `rows` at `rows_per_day` (at least one hour and ten minutes)."""
    span = max(timedelta(days=rows / rows_per_day), timedelta(minutes=70))
    return until - span, until
