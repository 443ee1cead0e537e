"""`export`: corrections as CSV or JSON lines, so tracing backends (Langfuse, OTel) can be re-fed.

One record per correction whose SpendLogs "startTime" is in [since, until): request id, call id,
old and new first-token instants (ISO 8601, UTC), TTFT in ms under each origin (SpendLogs'
"startTime" as the UI shows it, the proxy's request start, the upstream API call start as
Prometheus measures it) and the policy. Rows stream from a server-side cursor.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import dashboard_queries as q

FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class ExportRecord:
    request_id: str
    litellm_call_id: str | None
    start_time: str
    old_completion_start_time: str | None
    new_completion_start_time: str
    ttft_ms: float
    ttft_ms_from_request_start: float | None
    ttft_ms_from_api_call_start: float | None
    policy: str
    model_group: str | None
    call_type: str | None
    run_id: int
    status: str


COLUMNS = tuple(f.name for f in fields(ExportRecord))


def _iso(value: datetime | None) -> str | None:
    """Naive UTC (SpendLogs' convention) → ISO 8601 with an explicit UTC offset, ms precision."""
    if value is None:
        return None
    aware = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return aware.isoformat(timespec="milliseconds")


def iter_corrections(
    conn: Connection, since: datetime, until: datetime, *, include_reverted: bool = False, batch_size: int = 5000
) -> Iterator[ExportRecord]:
    """Corrections in [since, until) by "startTime" (aware UTC bounds), oldest first."""
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
        text(q.EXPORT_CORRECTIONS), {"since": since, "until": until, "include_reverted": include_reverted}
    )
    for r in result:
        yield ExportRecord(
            request_id=r.request_id, litellm_call_id=r.litellm_call_id, start_time=_iso(r.start_time) or "",
            old_completion_start_time=_iso(r.old_completion_start_time),
            new_completion_start_time=_iso(r.new_completion_start_time) or "", ttft_ms=float(r.ttft_ms),
            ttft_ms_from_request_start=r.ttft_ms_from_request_start,
            ttft_ms_from_api_call_start=r.ttft_ms_from_api_call_start, policy=r.policy,
            model_group=r.model_group, call_type=r.call_type, run_id=int(r.run_id), status=r.status,
        )


def write_csv(records: Iterable[ExportRecord], out: IO[str]) -> int:
    """A header and one line per record (empty cell for NULL); returns the record count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for record in records:
        writer.writerow(["" if v is None else v for v in asdict(record).values()])
        count += 1
    return count


def write_jsonl(records: Iterable[ExportRecord], out: IO[str]) -> int:
    """One JSON object per line; returns the record count."""
    count = 0
    for record in records:
        out.write(json.dumps(asdict(record)) + "\n")
        count += 1
    return count


def write(records: Iterable[ExportRecord], out: IO[str], fmt: str) -> int:
    writers: dict[str, Any] = {"csv": write_csv, "jsonl": write_jsonl}
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return int(writers[fmt](records, out))
