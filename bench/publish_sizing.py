"""Storage of stream_traces and corrections per million streams (for the README's sizing table).

Creates a throwaway database next to the one in the URL, migrates it, inserts N realistic trace
rows (day-partitioned, capped offset arrays) and N corrections with the job's typed evidence,
and prints pg_total_relation_size per row and per million rows. Sizes, not timings.

    python bench/publish_sizing.py postgresql://postgres@127.0.0.1:5432/postgres [--rows 100000]
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.migrate import upgrade

TRACES = """
INSERT INTO ttft_reconcile.stream_traces (litellm_call_id, stream_seq, response_id, route, call_type, provider, model,
    litellm_version, capture_version, request_start_at, api_call_start_at, first_chunk_at, first_event_at,
    first_output_at, first_visible_at, last_chunk_at, chunk_count, event_count, bytes_total, outcome,
    chunk_offsets_us, event_offsets_us, event_kinds, truncated)
SELECT gen_random_uuid()::text, 0, 'msg_01' || substr(md5(i::text), 1, 22), '/v1/messages', 'anthropic_messages',
       'anthropic', 'claude-sonnet-4-5-20250929', '1.82.3', '0.1.0',
       t0, t0 + interval '4 ms', t0 + interval '300 ms', t0 + interval '300 ms', t0 + interval '610 ms',
       t0 + interval '610 ms', t0 + (n * 50 + 600) * interval '1 ms', n, n + 4, n * 180, 'completed',
       ARRAY(SELECT (k * 50000)::bigint FROM generate_series(0, least(n, 64) - 1) k),
       ARRAY(SELECT (k * 50000)::bigint FROM generate_series(0, least(n + 4, 64) - 1) k),
       ARRAY(SELECT (ARRAY['framing', 'ping', 'framing', 'visible'])[least(k + 1, 4)]
             FROM generate_series(0, least(n + 4, 64) - 1) k),
       n + 4 > 64
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT timestamptz '2026-11-01 00:00+00' + (i::double precision / %(rows)s) * interval '7 days' AS t0,
                     5 + (i * 7919) %% 120 AS n) x
"""

CORRECTIONS = """
INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy, old_completion_start_time,
    new_completion_start_time, ttft_ms, litellm_call_id, stream_seq, call_type, model_group, joined_by, streams,
    trace_outcome, chunk_count, request_start_at, api_call_start_at, first_chunk_at, first_event_at,
    first_output_at, first_visible_at)
SELECT cid, st, %(run)s, 'first_chunk', st + interval '2400 ms', st + interval '310 ms', 310, cid, 0,
       'anthropic_messages', 'claude-sonnet', ARRAY['request_id=litellm_call_id'], 1, 'completed', 42,
       st - interval '200 ms', st - interval '196 ms', st + interval '310.512 ms', st + interval '311.02 ms',
       st + interval '612.3 ms', st + interval '612.3 ms'
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT gen_random_uuid()::text AS cid,
                     CAST(timestamp '2026-11-01' + (i::double precision / %(rows)s) * interval '7 days' AS timestamp(3))
                         AS st) x
"""

TRACE_SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'ttft_reconcile.stream_traces'::regclass
"""
CORRECTION_SIZE = "SELECT pg_total_relation_size('ttft_reconcile.corrections')"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _line(what: str, total: int, rows: int) -> str:
    per_row = total / rows
    return f"{what:<38} {total / 2**20:8.1f} MiB  {per_row:7.0f} B/row  {per_row * 1e6 / 2**30:6.2f} GiB per million"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("admin_url")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    name = "ttft_sizing_bench"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(args.admin_url, name)
    try:
        engine = make_engine(parse_database_url(url))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT ttft_reconcile.ensure_trace_partitions(DATE '2026-11-01', DATE '2026-11-08')")
            conn.execute(TRACES, {"rows": args.rows})
            run = conn.execute("INSERT INTO ttft_reconcile.runs (mode) VALUES ('backfill') RETURNING id").fetchone()
            assert run is not None
            conn.execute(CORRECTIONS, {"rows": args.rows, "run": run[0]})
            conn.execute("VACUUM ANALYZE")
            traces = conn.execute(TRACE_SIZE).fetchone()
            corrections = conn.execute(CORRECTION_SIZE).fetchone()
        assert traces is not None and corrections is not None
        print(f"{args.rows} rows each")
        print(_line("stream_traces (partitions + indexes)", int(traces[0]), args.rows))
        print(_line("corrections (with evidence)", int(corrections[0]), args.rows))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
