"""Synthetic LiteLLM traffic: SpendLogs rows shaped as LiteLLM writes them, the matching stream
traces, and the ground truth the job's answers are checked against.

Writes with COPY into LiteLLM's real `"LiteLLM_SpendLogs"` of either schema era (columns are
detected) and into `ttft_reconcile.stream_traces`. Deterministic for a seed. Internally every
instant is an integer count of microseconds since the Unix epoch (UTC); SpendLogs gets naive UTC
`timestamp(3)` text rounded to the millisecond, traces get `timestamptz` with `+00`.

Row kinds (the `kind` column of the ground truth):
- `broken_stream`: a stream whose row fell back to completionStartTime = endTime (or 1 ms below,
  1.82.3 era), with its trace: the job repairs it.
- `broken_untraced`: the same, written before the capture existed: no trace.
- `healthy_stream`: a real first token was stamped: not a candidate.
- `non_streaming`: completionStartTime = endTime by design (chatcmpl- ids in the 1.82.3 era,
  Bedrock `/invoke` and Vertex `:rawPredict` URLs; otherwise no evidence either way).
- `other_call_type`: acompletion, aembedding, ...: never candidates.
- `no_first_output`: malformed traces: no bytes at all, framing then an error, or tool-call only.
- `out_of_bounds`: the trace's instants lie outside [startTime, endTime] (clock step).
- `retried_stream`: two streams for one call: stream 0 failed, 1 completed (or an agentic loop
  with two completed rounds: the first counts).
- `ambiguous`: two join strategies point at different calls.
- `confirmed`: a one-chunk stream whose first chunk arrived within 1 ms of endTime.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import numpy as np
import pandas as pd
import psycopg

from ttft_reconcile import synth_model as model

KINDS: Final[tuple[str, ...]] = model.KINDS
DEFAULT_SHARES: Final[dict[str, float]] = {
    "broken_stream": 0.30,
    "broken_untraced": 0.06,
    "healthy_stream": 0.14,
    "non_streaming": 0.12,
    "other_call_type": 0.28,
    "no_first_output": 0.03,
    "out_of_bounds": 0.02,
    "retried_stream": 0.03,
    "ambiguous": 0.01,
    "confirmed": 0.01,
}
CHUNK_ROWS: Final = 20_000  # rows generated and copied per step (fixed: part of determinism)


@dataclass(frozen=True)
class SynthSpec:
    """What to write. `since`/`until` are aware UTC (naive is taken as UTC); `shares` are relative
    weights per kind (missing kinds get 0); `metadata_bytes` is the approximate JSON size per row."""

    rows: int
    since: datetime
    until: datetime
    seed: int = 0
    era: str | None = None  # "old" (1.82.3) | "new" (1.105+) | None: from the schema's columns
    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    metadata_bytes: int = 1200
    litellm_schema: str = "public"
    keep_truth: bool = True
    evidence: bool = True  # fill chunk_offsets_us / event_offsets_us / event_kinds


@dataclass(frozen=True)
class SynthResult:
    """What was written. `truth` has one row per SpendLogs row (None unless keep_truth)."""

    era: str
    rows: int
    traces: int
    kinds: dict[str, int]
    since: datetime
    until: datetime
    seconds: float  # wall clock, all of it
    generate_cpu_seconds: float  # CPU time spent building rows (Python)
    copy_seconds: float  # wall clock spent in COPY (the server ingesting)
    truth: pd.DataFrame | None

    def expected_outcomes(self, policy: str = "first_chunk") -> dict[str, int]:
        """Outcome counts the job should report for the whole window under `policy`."""
        if self.truth is None:
            raise ValueError("generated with keep_truth=False")
        column = self.truth[f"outcome_{policy}"]
        counts = column[column != ""].value_counts()
        return {str(k): int(v) for k, v in counts.items()}


SPEND_COLUMNS: Final[tuple[str, ...]] = (
    "request_id", "call_type", "api_key", "spend", "total_tokens", "prompt_tokens", "completion_tokens",
    "startTime", "endTime", "completionStartTime", "model", "model_id", "model_group",
    "custom_llm_provider", "api_base", "user", "metadata", "cache_hit", "cache_key", "request_tags",
    "team_id", "end_user", "requester_ip_address", "messages", "response", "proxy_server_request",
    "session_id", "status", "request_duration_ms",
)
NEW_ERA_COLUMNS: Final[tuple[str, ...]] = ("created_at", "updated_at", "litellm_call_id")
TRACE_COLUMNS: Final[tuple[str, ...]] = (
    "litellm_call_id", "stream_seq", "response_id", "route", "call_type", "provider", "model",
    "litellm_version", "capture_version", "request_start_at", "api_call_start_at", "first_chunk_at",
    "first_event_at", "first_output_at", "first_visible_at", "last_chunk_at", "chunk_count",
    "event_count", "bytes_total", "outcome", "chunk_offsets_us", "event_offsets_us", "event_kinds",
    "truncated", "recorded_at",
)


def _raw(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind a psycopg or SQLAlchemy connection."""
    if isinstance(conn, psycopg.Connection):
        return conn
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def spend_logs_columns(conn: Any, schema: str = "public") -> frozenset[str]:
    """Column names of `"LiteLLM_SpendLogs"` in `schema` (empty when the table is absent)."""
    rows = _raw(conn).execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, "LiteLLM_SpendLogs"),
    ).fetchall()
    return frozenset(str(r[0]) for r in rows)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _epoch_us(value: datetime) -> int:
    return int(round(_aware(value).timestamp() * 1_000_000))


def write_synthetic(conn: Any, spec: SynthSpec) -> SynthResult:
    """Write `spec.rows` SpendLogs rows and their traces with COPY; the caller commits."""
    started = time.monotonic()
    raw = _raw(conn)
    since, until = _aware(spec.since), _aware(spec.until)
    if spec.rows < 0 or since >= until:
        raise ValueError("need rows >= 0 and since < until")
    columns = spend_logs_columns(raw, spec.litellm_schema)
    if not columns:
        raise ValueError(f'"LiteLLM_SpendLogs" not found in schema {spec.litellm_schema!r}')
    era = spec.era or ("new" if "litellm_call_id" in columns else "old")
    if era not in ("old", "new"):
        raise ValueError(f"era must be 'old' or 'new', not {era!r}")
    if era == "new" and "litellm_call_id" not in columns:
        raise ValueError("era 'new' needs a SpendLogs table with the litellm_call_id column")
    extra = tuple(c for c in NEW_ERA_COLUMNS if c in columns)
    shares = np.array([max(0.0, float(spec.shares.get(k, 0.0))) for k in KINDS])
    if shares.sum() <= 0:
        raise ValueError("at least one kind needs a positive share")
    unknown = set(spec.shares) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds: {', '.join(sorted(unknown))}")
    shares = shares / shares.sum()

    first_day = (since - timedelta(days=1)).date()
    last_day = (until + timedelta(days=1)).date()
    raw.execute("SELECT ttft_reconcile.ensure_trace_partitions(%s, %s)", (first_day, last_day))

    ctx = model.Context(
        era=era,
        since_us=_epoch_us(since),
        until_us=_epoch_us(until),
        rows=spec.rows,
        shares=shares,
        metadata_bytes=spec.metadata_bytes,
        has_call_id_column="litellm_call_id" in columns,
        evidence=spec.evidence,
    )
    rng = np.random.default_rng(spec.seed)
    kinds_total = dict.fromkeys(KINDS, 0)
    traces_total = 0
    truth_parts: list[pd.DataFrame] = []
    spend_sql = (
        f'COPY "{spec.litellm_schema}"."LiteLLM_SpendLogs" ('
        + ", ".join(f'"{c}"' for c in SPEND_COLUMNS + extra)
        + ") FROM STDIN"
    )
    trace_sql = f"COPY ttft_reconcile.stream_traces ({', '.join(TRACE_COLUMNS)}) FROM STDIN"
    # Generation (Python) overlaps with COPY (the server): the next chunk is built in a worker
    # thread while this one streams. One worker, chunks in order: still deterministic.
    starts = list(range(0, spec.rows, CHUNK_ROWS))
    copy_seconds = generate_cpu = 0.0
    with raw.cursor() as cur, ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(model.generate_chunk, ctx, rng, lo, min(CHUNK_ROWS, spec.rows - lo), extra)
                   for lo in starts[:1]]
        for number in range(len(starts)):
            chunk = pending.pop(0).result()
            if number + 1 < len(starts):
                lo = starts[number + 1]
                pending.append(pool.submit(model.generate_chunk, ctx, rng, lo,
                                           min(CHUNK_ROWS, spec.rows - lo), extra))
            copy_started = time.monotonic()
            with cur.copy(spend_sql) as copy:
                copy.write(chunk.spend_text)
            if chunk.trace_text:
                with cur.copy(trace_sql) as copy:
                    copy.write(chunk.trace_text)
            copy_seconds += time.monotonic() - copy_started
            generate_cpu += chunk.cpu_seconds
            traces_total += chunk.traces
            for name, count in chunk.kinds.items():
                kinds_total[name] += count
            if spec.keep_truth:
                truth_parts.append(chunk.truth)
    truth = pd.concat(truth_parts, ignore_index=True) if truth_parts else (
        model.empty_truth() if spec.keep_truth else None
    )
    return SynthResult(
        era=era,
        rows=spec.rows,
        traces=traces_total,
        kinds=kinds_total,
        since=since,
        until=until,
        seconds=time.monotonic() - started,
        generate_cpu_seconds=generate_cpu,
        copy_seconds=copy_seconds,
        truth=truth,
    )
