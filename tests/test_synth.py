"""The synthetic traffic generator: LiteLLM's row shapes per era, trace consistency, determinism,
and its ground truth checked against the real job on a real database."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import psycopg
import pytest

from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.policies import EVENT_KINDS
from ttft_reconcile.settings import JobSettings
from ttft_reconcile.synth import KINDS, SynthResult, SynthSpec, write_synthetic
from ttft_reconcile.synth_streams import EVIDENCE_CAP

SINCE = datetime(2026, 11, 20, tzinfo=timezone.utc)
UNTIL = SINCE + timedelta(hours=6)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _write(url: str, rows: int = 3000, seed: int = 5, **kw: Any) -> SynthResult:
    spec = SynthSpec(rows=rows, since=SINCE, until=UNTIL, seed=seed, **kw)
    with psycopg.connect(url) as conn:
        result = write_synthetic(conn, spec)
        conn.commit()
    return result


def _fetch(url: str, sql: str) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql)
        assert cur.description is not None
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def _spend(url: str) -> pd.DataFrame:
    return _fetch(
        url,
        'SELECT request_id, call_type, custom_llm_provider AS provider, api_base, "startTime" AS start,'
        ' "endTime" AS end, "completionStartTime" AS cst FROM "LiteLLM_SpendLogs"',
    )


def _traces(url: str) -> pd.DataFrame:
    return _fetch(url, "SELECT * FROM ttft_reconcile.stream_traces")


def test_every_kind_is_written_and_counts_add_up(any_era_db_url: str) -> None:
    result = _write(any_era_db_url)
    assert sum(result.kinds.values()) == result.rows == 3000
    assert all(result.kinds[kind] > 0 for kind in KINDS), result.kinds
    counted = _fetch(any_era_db_url, 'SELECT count(*) AS n FROM "LiteLLM_SpendLogs"')["n"][0]
    traces = _fetch(any_era_db_url, "SELECT count(*) AS n FROM ttft_reconcile.stream_traces")["n"][0]
    assert counted == 3000 and traces == result.traces
    assert result.truth is not None and len(result.truth) == 3000
    # every trace landed in a day partition, none in the default one
    stray = _fetch(any_era_db_url, "SELECT count(*) AS n FROM ttft_reconcile.stream_traces_default")["n"][0]
    assert stray == 0


def test_old_era_rows_look_like_litellm_1_82_3(old_db_url: str) -> None:
    result = _write(old_db_url)
    assert result.era == "old" and result.truth is not None
    rows = _spend(old_db_url).merge(result.truth[["request_id", "kind"]], on="request_id")
    traces = _traces(old_db_url)
    native = rows[rows.call_type == "anthropic_messages"]
    streams = native[native.kind.isin(["broken_stream", "broken_untraced", "out_of_bounds"])]
    assert streams.request_id.str.match(UUID4.pattern).all()
    non_stream = native[native.kind == "non_streaming"]
    assert non_stream.request_id.str.match(r"^chatcmpl-[0-9a-f-]{36}$").all()
    responses = rows[rows.call_type == "aresponses"]
    assert responses.request_id.str.match(r"^resp_[0-9a-f]{48}$").all()
    # fallback: completionStartTime is endTime, or 1 ms below it (prisma floors, Postgres rounds)
    broken = rows[(rows.kind == "broken_stream") & rows.cst.notna()]
    gap_ms = (broken.end - broken.cst).dt.total_seconds() * 1000
    assert set(gap_ms.round(3)) == {0.0, 1.0}
    # startTime is late (after the upstream headers); the trace has the proxy's real start
    joined = streams[streams.kind == "broken_stream"].merge(
        traces[traces.stream_seq == 0], left_on="request_id", right_on="litellm_call_id"
    )
    assert len(joined) > 50
    start = joined.start.dt.tz_localize("UTC")
    assert (joined.request_start_at < start - timedelta(milliseconds=50)).all()
    assert (joined.first_chunk_at > start).all()
    assert (joined.response_id.str.startswith("msg_")).all()
    # SpendLogs timestamps carry milliseconds only
    assert (rows.start.dt.microsecond % 1000 == 0).all() and (rows.end.dt.microsecond % 1000 == 0).all()


def test_new_era_rows_carry_provider_ids_and_the_call_id_column(db_url: str) -> None:
    result = _write(db_url)
    assert result.era == "new" and result.truth is not None
    rows = _fetch(db_url, 'SELECT request_id, call_type, litellm_call_id, "startTime" AS start, "endTime" AS end,'
                          ' "completionStartTime" AS cst, created_at, updated_at FROM "LiteLLM_SpendLogs"')
    rows = rows.merge(result.truth[["request_id", "kind"]], on="request_id")
    assert rows.litellm_call_id.str.match(UUID4.pattern).all()
    native = rows[rows.call_type == "anthropic_messages"]
    assert native.request_id.str.match(r"^msg_(bdrk_|vrtx_)?01[0-9A-Za-z]{22}$").all()
    fallback = rows[(rows.kind == "broken_stream") & rows.cst.notna()]
    assert (fallback.cst == fallback.end).all()
    assert (rows.created_at > rows.end).all() and (rows.created_at == rows.updated_at).all()
    traces = _traces(db_url)
    broken = rows[rows.kind == "broken_stream"].merge(traces, on="litellm_call_id")
    start = broken.start.dt.tz_localize("UTC")
    # 1.109+: startTime is the request start (rounded to the millisecond)
    assert ((broken.request_start_at - start).abs() <= timedelta(microseconds=500)).all()


def test_trace_evidence_is_consistent_with_the_instants(db_url: str) -> None:
    _write(db_url)
    traces = _traces(db_url)
    assert set(traces.outcome) <= {"completed", "upstream_error"}
    with_chunks = traces[traces.chunk_count > 0]
    for row in with_chunks.itertuples():
        kinds = list(row.event_kinds)
        assert set(kinds) <= set(EVENT_KINDS)
        assert row.chunk_offsets_us[0] == 0
        assert list(row.chunk_offsets_us) == sorted(row.chunk_offsets_us)
        assert len(row.event_offsets_us) == len(kinds) == min(row.event_count, EVIDENCE_CAP)
        assert len(row.chunk_offsets_us) == min(row.chunk_count, EVIDENCE_CAP)
        assert row.truncated == (row.event_count > EVIDENCE_CAP or row.chunk_count > EVIDENCE_CAP)
        first_event_us = (row.first_event_at - row.first_chunk_at) // timedelta(microseconds=1)
        assert row.event_offsets_us[0] == first_event_us
        if row.first_visible_at is not None and "visible" in kinds:
            visible_us = (row.first_visible_at - row.first_chunk_at) // timedelta(microseconds=1)
            assert row.event_offsets_us[kinds.index("visible")] == visible_us
        if row.first_output_at is None:
            assert "output" not in kinds and "visible" not in kinds
    empty = traces[traces.chunk_count == 0]
    assert len(empty) > 0 and (empty.outcome == "upstream_error").all()
    for column in ("first_chunk_at", "first_event_at", "first_output_at", "first_visible_at", "last_chunk_at"):
        assert empty[column].isna().all(), column  # a stream without a byte has no instant at all
    unknown = traces[traces.route == "/cohere/v2/chat"]
    assert len(unknown) > 0 and unknown.first_output_at.isna().all() and unknown.first_chunk_at.notna().any()


def test_retried_calls_have_a_failed_stream_before_the_completed_one(old_db_url: str) -> None:
    result = _write(old_db_url, rows=6000)
    traces = _traces(old_db_url)
    calls = traces.groupby("litellm_call_id").agg(n=("stream_seq", "size"), outcomes=("outcome", tuple))
    retried = calls[calls.n == 2]
    assert len(retried) > 0
    assert any(o == ("upstream_error", "completed") for o in retried.outcomes)
    assert any(o == ("completed", "completed") for o in retried.outcomes)  # agentic rounds
    assert result.kinds["retried_stream"] > 0


def _db_digest(url: str) -> str:
    spend = _fetch(url, 'SELECT * FROM "LiteLLM_SpendLogs" ORDER BY request_id')
    traces = _fetch(url, "SELECT * FROM ttft_reconcile.stream_traces ORDER BY litellm_call_id, stream_seq")
    digest = hashlib.sha256()
    digest.update(spend.drop(columns=[c for c in ("created_at", "updated_at") if c in spend]).to_csv().encode())
    digest.update(traces.to_csv().encode())
    return digest.hexdigest()


def test_same_seed_same_data_other_seed_other_data(pg_admin_url: str) -> None:
    from tests import services

    template = services.ensure_template(pg_admin_url, "old")
    names = [services.clone_database(pg_admin_url, template) for _ in range(3)]
    try:
        urls = [services.with_database(pg_admin_url, name) for name in names]
        for url, seed in zip(urls, (9, 9, 10), strict=True):
            _write(url, rows=1500, seed=seed)
        digests = [_db_digest(url) for url in urls]
        assert digests[0] == digests[1]
        assert digests[0] != digests[2]
    finally:
        for name in names:
            services.drop_database(pg_admin_url, name)


def test_metadata_size_is_configurable_and_does_not_compress_away(old_db_url: str) -> None:
    _write(old_db_url, rows=1000, metadata_bytes=2600, keep_truth=False)
    sizes = _fetch(
        old_db_url,
        'SELECT avg(pg_column_size(metadata)) AS stored, avg(length(metadata::text)) AS text,'
        " pg_table_size('\"LiteLLM_SpendLogs\"') AS table_bytes FROM \"LiteLLM_SpendLogs\"",
    )
    assert 2500 <= float(sizes.text[0]) <= 2800
    assert float(sizes.stored[0]) >= 2000  # TOAST compression cannot shrink it much
    assert int(sizes.table_bytes[0]) / 1000 >= 2000


def test_bad_specs_are_refused(old_db_url: str) -> None:
    with pytest.raises(ValueError, match="litellm_call_id"):
        _write(old_db_url, era="new")
    with pytest.raises(ValueError, match="unknown kinds"):
        _write(old_db_url, shares={"broken_stream": 1.0, "nonsense": 1.0})
    with pytest.raises(ValueError, match="positive share"):
        _write(old_db_url, shares={"broken_stream": 0.0})


@pytest.mark.parametrize("policy", ["first_chunk", "first_visible"])
def test_the_job_agrees_with_the_ground_truth(any_era_db_url: str, policy: str) -> None:
    """Every row: the job's outcome counts and the final completionStartTime match the truth."""
    result = _write(any_era_db_url, rows=4000, seed=21)
    assert result.truth is not None
    settings = JobSettings(database=parse_database_url(any_era_db_url), policy=policy, batch_size=700)
    summary = job.backfill(settings, SINCE, UNTIL)
    got = {name: count for name, count in summary.outcomes.items() if count}
    assert got == result.expected_outcomes(policy)
    assert summary.candidates == int(result.truth["candidate"].sum())
    stored = _fetch(any_era_db_url, 'SELECT request_id, "completionStartTime" AS cst FROM "LiteLLM_SpendLogs"')
    merged = result.truth.merge(stored, on="request_id")
    expected = merged[f"cst_{policy}"]
    same = (merged["cst"] == expected) | (merged["cst"].isna() & expected.isna())
    assert same.all(), merged.loc[~same, ["kind", f"outcome_{policy}", "cst", f"cst_{policy}"]].head()
