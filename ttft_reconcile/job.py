"""The batch job: `run` (incremental), `backfill` (sliced, multi-process) and `rollback`.

Data flows one way: scan → load traces → classify → guarded write + audit + checkpoint, one
transaction per batch. Every window is half-open [since, until); instants are UTC.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ttft_reconcile import __version__, batch_sql, dashboard, queries
from ttft_reconcile import outcomes as oc
from ttft_reconcile.db import (
    SessionLimits,
    SpendLogsShape,
    describe_db_error,
    inspect_spend_logs,
    make_engine,
    transaction,
)
from ttft_reconcile.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LANE_HELD,
    DatabaseUnavailable,
    Interrupted,
    LaneHeld,
    ReconcileError,
    SchemaMissing,
    UsageError,
)
from ttft_reconcile.lanes import LaneLock, hold_lane, resolve_mode
from ttft_reconcile.migrate import migration_state
from ttft_reconcile.pipeline import STALE_STAGE, DecideAhead
from ttft_reconcile.queries import Position
from ttft_reconcile.rollup import BackgroundRefresh
from ttft_reconcile.settings import JobSettings
from ttft_reconcile.signals import StopFlag, graceful_signals
from ttft_reconcile.summary import RunSummary
from ttft_reconcile.timeparse import to_aware_utc, to_naive_utc

log = logging.getLogger(__name__)

RUN_LANE = "run"
ROLLBACK_LANE = "rollback"
# A run row still `running` with no heartbeat for this long belongs to a killed process.
ABANDONED_AFTER = timedelta(hours=1)
# A throttled batch wait heartbeats at least this often.
KEEPALIVE_EVERY = timedelta(seconds=20)
# A running run heartbeats with every batch, every KEEPALIVE_EVERY of a throttle wait and every
# refreshed day, so one silent this long is dead to `rollback` (and `--force` overrides).
LIVE_WITHIN = timedelta(minutes=15)
REFRESH_TIMEOUT = timedelta(minutes=10)
# A day marked for a rollup refresh this long ago whose marker has not refreshed it (it died)
# is refreshed by whichever job runs next.
PENDING_STALE = timedelta(minutes=10)
HELD_SLICE_POLL = timedelta(seconds=1)
HELD_SLICE_WARN = timedelta(seconds=30)  # a wait for other workers' slices this long is logged


@dataclass(frozen=True)
class Progress:
    """Reported after every committed batch (and once per claimed slice)."""

    mode: str
    batches: int
    scanned: int
    outcomes: dict[str, int]
    position: datetime | None  # naive UTC "startTime" reached
    since: datetime
    until: datetime
    slices_done: int = 0
    slices_total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Tally:
    """Counts accumulated over batches."""

    candidates: int = 0
    batches: int = 0
    outcomes: dict[str, int] = field(default_factory=oc.empty_counts)
    days: set[date] = field(default_factory=set)  # UTC days the batches changed
    unrefreshed: set[date] = field(default_factory=set)  # ... and not yet handed to a BackgroundRefresh

    def add(self, scanned: int, counts: dict[str, int]) -> None:
        self.candidates += scanned
        self.batches += 1
        for key, value in counts.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + value


@dataclass
class _Context:
    engine: Engine
    settings: JobSettings
    shape: SpendLogsShape
    run_id: int
    stop: StopFlag
    progress: ProgressCallback | None
    lock: LaneLock | None = None
    mode: str = "backfill"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _schema_description(shape: SpendLogsShape) -> str:
    parts = [shape.schema]
    parts.append("litellm_call_id" if shape.has_litellm_call_id else "no litellm_call_id")
    if shape.partitioned:
        parts.append("partitioned")
    return ", ".join(parts)


def _prepare(engine: Engine, settings: JobSettings, *, sync_settings: bool = False) -> SpendLogsShape:
    """Check our schema is migrated and find LiteLLM's table; keep settings and partitions current."""
    with transaction(engine, settings.limits) as conn:
        state = migration_state(conn)
        if state.current is None:
            raise SchemaMissing("the ttft_reconcile schema is not installed; run `ttft-reconcile migrate` first")
        if not state.up_to_date:
            raise SchemaMissing(
                f"the ttft_reconcile schema is at revision {state.current}, this version needs {state.head};"
                " run `ttft-reconcile migrate`"
            )
        shape = inspect_spend_logs(conn, settings.litellm_schema)
    if not settings.dry_run:
        _housekeeping(engine, settings, sync_settings=sync_settings)
    return shape


def _housekeeping(engine: Engine, settings: JobSettings, *, sync_settings: bool) -> None:
    """Day partitions for the traces ahead of time, and the settings the SQL dashboard reads."""
    today = _now()
    try:
        with transaction(engine, settings.limits) as conn:
            queries.ensure_trace_partitions(conn, today - timedelta(days=1), today + timedelta(days=7))
            closed = queries.close_abandoned_runs(conn, ABANDONED_AFTER)
            if closed:
                log.info("marked %d run(s) with no heartbeat for %s as failed (abandoned)", closed, ABANDONED_AFTER)
            swept = batch_sql.drop_stale_staged(conn, STALE_STAGE.total_seconds())
            if swept:
                log.info("deleted %d staged row(s) older than %s (decided by a command that was killed)",
                         swept, STALE_STAGE)
            if sync_settings:
                # Only the cron `run` defines what the dashboard counts: an ad-hoc backfill with
                # other call types or tolerance must not change report, Grafana and explain.
                _sync_dashboard_settings(conn, settings)
    except sa_exc.OperationalError as error:
        # Not fatal: traces still land in the default partition.
        log.warning("could not prepare trace partitions/settings: %s", describe_db_error(error))


def _sync_dashboard_settings(conn: Connection, settings: JobSettings) -> None:
    dashboard.sync_settings(
        conn,
        call_types=settings.call_types,
        tolerance_ms=settings.tolerance_ms,
        litellm_schema=settings.litellm_schema,
    )


def _refresh_limits(settings: JobSettings) -> SessionLimits:
    """A rollup refresh reads whole days of SpendLogs: it may run longer than a batch."""
    return replace(settings.limits, statement_timeout=max(settings.limits.statement_timeout, REFRESH_TIMEOUT))


def _refresh_days(engine: Engine, settings: JobSettings, days: set[date], run_id: int,
                  since: datetime | None = None, until: datetime | None = None) -> None:
    """Rebuild ttft_daily for the touched UTC days, and for days still pending from a job that died
    before its refresh (in [since, until), or left for PENDING_STALE): each run of consecutive
    days (a week at most, `dashboard.MAX_DAYS_PER_REFRESH`) in one statement and transaction."""
    if settings.dry_run:
        return
    window_first = to_naive_utc(since).date() if since is not None else date.max
    window_last = (to_naive_utc(until) - timedelta(microseconds=1)).date() if until is not None else date.min
    with transaction(engine, settings.limits) as conn:
        days = set(days) | dashboard.pending_days(conn, window_first, window_last, PENDING_STALE)
    for first, last in dashboard.day_ranges(days):
        with transaction(engine, _refresh_limits(settings)) as conn:
            queries.heartbeat_run(conn, run_id)
            dashboard.refresh_day_range(conn, first, last)
    if window_first > window_last:
        return
    # Days of this window skipped above because another session held their mark: wait for it. A
    # refresh that commits has done them; a killed job's statement ends within a second.
    try:
        with transaction(engine, _refresh_limits(settings)) as conn:
            late = dashboard.pending_days_waiting(conn, window_first, window_last)
            for first, last in dashboard.day_ranges(late):
                dashboard.refresh_day_range(conn, first, last)
    except sa_exc.OperationalError as error:
        if not isinstance(error.orig, psycopg.errors.LockNotAvailable):
            raise
        log.warning("ttft_daily of some days in this window stays pending: another session held them"
                    " longer than --lock-timeout; the next command rebuilds them")


def _new_run(
    engine: Engine,
    settings: JobSettings,
    shape: SpendLogsShape,
    *,
    mode: str,
    since: datetime | None,
    until: datetime | None,
    backfill_id: int | None = None,
    policy: str | None = None,
) -> int:
    with transaction(engine, settings.limits) as conn:
        return queries.insert_run(
            conn,
            mode=mode,
            dry_run=settings.dry_run,
            since=since,
            until=until,
            policy=policy if policy is not None else settings.policy,
            tolerance_ms=settings.tolerance_ms,
            call_types=settings.call_types,
            version=__version__,
            litellm_schema=_schema_description(shape),
            host=socket.gethostname(),
            worker=settings.worker,
            pid=os.getpid(),
            backfill_id=backfill_id,
        )


def _finish_run(engine: Engine, settings: JobSettings, run_id: int, status: str, error: str | None = None) -> None:
    """Record the run's end; best effort when the database itself is the failure."""
    try:
        with transaction(engine, settings.limits) as conn:
            queries.finish_run(conn, run_id, status=status, error=error)
    except sa_exc.SQLAlchemyError as failure:
        _log_follow_up_failure(f"record the end of run {run_id}", failure)


def _log_follow_up_failure(what: str, error: sa_exc.SQLAlchemyError) -> None:
    """A best-effort write after a failure failed too. When the database is unreachable the
    command's own one-line error already says so: log at INFO instead of adding lines."""
    described = describe_db_error(error)
    level = logging.INFO if isinstance(described, DatabaseUnavailable) else logging.WARNING
    log.log(level, "could not %s: %s", what, described)


def _throttle(ctx: _Context, scanned: int, started: float, keepalive: KeepAlive | None) -> None:
    """Hold the batch rate to --max-rows-per-second. A stop request ends the wait at once; a long
    wait heartbeats (every KEEPALIVE_EVERY, or a third of a shorter slice lease or lane lease) so
    the run looks alive and no other worker reclaims its slice or lane."""
    settings = ctx.settings
    if not settings.max_rows_per_second or scanned <= 0:
        return
    deadline = started + scanned / settings.max_rows_per_second
    every = min(KEEPALIVE_EVERY, settings.slice_lease / 3, settings.lease_ttl / 3)
    while not ctx.stop.requested:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        _pause(ctx.stop, min(every, timedelta(seconds=left)))
        if ctx.stop.requested or deadline - time.monotonic() <= 0:
            return
        if ctx.lock is not None:
            ctx.lock.check()
        with transaction(ctx.engine, settings.limits) as conn:
            if ctx.lock is not None:
                ctx.lock.renew(conn)
            queries.heartbeat_run(conn, ctx.run_id)
            if keepalive is not None:
                keepalive(conn)


CommitHook = Callable[[Connection, Position, int], None]
KeepAlive = Callable[[Connection], None]


def _reconcile_range(
    ctx: _Context,
    tally: _Tally,
    *,
    since: datetime,
    until: datetime,
    after: Position | None,
    on_commit: CommitHook | None,
    keepalive: KeepAlive | None = None,
    slices: tuple[int, int] = (0, 0),
    ahead: bool = False,
) -> bool:
    """Walk [since, until) (naive UTC) in keyset batches; returns False when stopped by a signal.

    With `ahead` (a backfill that writes), the next batch is decided on a second connection while
    this one is written (`pipeline.DecideAhead`); otherwise each batch is decided and written in
    its own transaction."""
    settings = ctx.settings
    decide = {"call_types": settings.call_types, "tolerance_ms": settings.tolerance_ms,
              "policy": settings.policy, "hold_rolled_back": ctx.mode == "run"}  # `run` never undoes a rollback
    decider = None
    # A throttled backfill waits between batches anyway: deciding ahead would only hold staged rows.
    if ahead and not settings.dry_run and settings.max_rows_per_second is None:
        decider = DecideAhead(ctx.engine, settings.limits, ctx.shape, ctx.stop, since=since, until=until,
                              after=after, limit=settings.batch_size, **decide)
    try:
        return _walk_batches(ctx, tally, decider, decide, since=since, until=until, after=after,
                             on_commit=on_commit, keepalive=keepalive, slices=slices)
    finally:
        if decider is not None:
            decider.close()


def _walk_batches(
    ctx: _Context,
    tally: _Tally,
    decider: DecideAhead | None,
    decide: dict[str, Any],
    *,
    since: datetime,
    until: datetime,
    after: Position | None,
    on_commit: CommitHook | None,
    keepalive: KeepAlive | None,
    slices: tuple[int, int],
) -> bool:
    settings, shape = ctx.settings, ctx.shape
    position = after
    while True:
        if ctx.stop.requested:
            return False
        started = time.monotonic()
        if ctx.lock is not None:
            ctx.lock.check()
        decided = decider.take() if decider is not None else None
        if decider is not None and decided is None:
            return False  # stopped while the batch was being decided
        ctx.stop.in_batch = True
        try:
            with transaction(ctx.engine, settings.limits) as conn:
                if ctx.lock is not None:
                    ctx.lock.renew(conn)
                if decided is None:
                    decided = batch_sql.decide_batch(conn, shape, since=since, until=until, after=position,
                                                     limit=settings.batch_size, stage=not settings.dry_run,
                                                     **decide)
                if decided.last is None:
                    ctx.stop.in_batch = False
                    return True
                if settings.dry_run:
                    batch = batch_sql.dry_result(decided)
                else:
                    batch = batch_sql.write_batch(conn, shape, decided, run_id=ctx.run_id, policy=settings.policy)
                    dashboard.mark_pending(conn, batch.days)
                scanned = batch.scanned
                counts = batch.counts()
                queries.add_run_counts(conn, ctx.run_id, scanned, counts)
                position = decided.last
                if on_commit is not None and not settings.dry_run:
                    on_commit(conn, position, scanned)
        except batch_sql.StageLost as lost:
            # Nothing of the batch was written: decide it again, here, and the rest of the range too.
            ctx.stop.in_batch = False
            log.warning("%s; deciding it again (and the rest of this range in turn)", lost)
            if decider is not None:
                decider.close()
            decider = None
            continue
        ctx.stop.in_batch = False
        tally.add(scanned, counts)
        tally.days.update(batch.days)
        tally.unrefreshed.update(batch.days)
        if ctx.progress is not None:
            ctx.progress(
                Progress(
                    mode=ctx.mode,
                    batches=tally.batches,
                    scanned=tally.candidates,
                    outcomes=dict(tally.outcomes),
                    position=position.start_time,
                    since=since,
                    until=until,
                    slices_done=slices[0],
                    slices_total=slices[1],
                )
            )
        _throttle(ctx, scanned, started, keepalive)
        if scanned < settings.batch_size:
            return True


def _summary(
    ctx_run_id: int,
    mode: str,
    settings: JobSettings,
    tally: _Tally,
    *,
    since: datetime | None,
    until: datetime | None,
    started: datetime,
    status: str,
    checkpoint: datetime | None = None,
    worker_run_ids: tuple[int, ...] = (),
    message: str = "",
    policy: str | None = None,
) -> RunSummary:
    finished = _now()
    return RunSummary(
        run_id=ctx_run_id,
        mode=mode,
        since=to_aware_utc(since) if since else None,
        until=to_aware_utc(until) if until else None,
        policy=policy if policy is not None else settings.policy,
        candidates=tally.candidates,
        outcomes=dict(tally.outcomes),
        duration_seconds=(finished - started).total_seconds(),
        dry_run=settings.dry_run,
        started_at=started,
        finished_at=finished,
        status=status,
        checkpoint=to_aware_utc(checkpoint) if checkpoint else None,
        touched_days=tuple(sorted(tally.days)),
        worker=settings.worker,
        worker_run_ids=worker_run_ids or (ctx_run_id,),
        batches=tally.batches,
        message=message,
    )


def _guarded(engine: Engine, settings: JobSettings, run_id: int, body: Callable[[], RunSummary],
             stop: StopFlag | None = None) -> RunSummary:
    """Run `body`, recording failure or interruption on the run row before re-raising."""
    try:
        summary = body()
    except Interrupted:
        _finish_run(engine, settings, run_id, "interrupted", "stopped by signal")
        raise
    except KeyboardInterrupt:
        # A second signal: whatever batch was open rolled back; between batches nothing was open.
        what = ("the open batch transaction was rolled back" if stop is None or stop.in_batch
                else "no batch was open; every batch written so far is committed")
        _finish_run(engine, settings, run_id, "interrupted", f"interrupted; {what}")
        raise Interrupted(f"interrupted; {what}; run {run_id} recorded as interrupted; re-run to resume") from None
    except sa_exc.SQLAlchemyError as error:
        translated = describe_db_error(error, settings.database)
        _finish_run(engine, settings, run_id, "failed", str(translated))
        raise translated from error
    except ReconcileError as error:
        _finish_run(engine, settings, run_id, "failed", str(error))
        raise
    except Exception as error:
        _finish_run(engine, settings, run_id, "failed", f"{type(error).__name__}: {error}")
        raise
    _finish_run(engine, settings, run_id, summary.status)
    return summary


def _interrupted(stop: StopFlag, tally: _Tally, run_id: int) -> Interrupted:
    what = (
        f"after committing batch {tally.batches} ({tally.candidates} rows scanned)"
        if tally.batches
        else "before any batch was written"
    )
    return Interrupted(
        f"interrupted by {stop.reason} {what}; run {run_id} recorded as interrupted; re-run to resume"
    )


# --- run ------------------------------------------------------------------------------------


def run_incremental(
    settings: JobSettings,
    *,
    now: datetime | None = None,
    stop: StopFlag | None = None,
    progress: ProgressCallback | None = None,
) -> RunSummary:
    """One incremental pass: [checkpoint - lookback, now - settle), one process per lane."""
    stop = stop or StopFlag()
    now = now or _now()
    engine = make_engine(settings.database)
    try:
        shape = _prepare(engine, settings, sync_settings=True)
        mode = resolve_mode(settings.lock_mode, settings.database.pgbouncer)
        with hold_lane(
            engine, RUN_LANE, mode=mode, holder=settings.worker, ttl=settings.lease_ttl, limits=settings.limits
        ) as lock:
            with transaction(engine, settings.limits) as conn:
                checkpoint = queries.read_checkpoint(conn, RUN_LANE)
            until = to_naive_utc(now - settings.settle)
            if checkpoint is not None:
                since = checkpoint.start_time - settings.lookback
            else:
                since = to_naive_utc(now - settings.initial_window)
            since = min(since, until)
            run_id = _new_run(engine, settings, shape, mode="run", since=to_aware_utc(since),
                              until=to_aware_utc(until))
            ctx = _Context(engine, settings, shape, run_id, stop, progress, lock, mode="run")

            def body() -> RunSummary:
                started = _now()
                tally = _Tally()

                def on_commit(conn: Connection, position: Position, scanned: int) -> None:
                    queries.write_checkpoint(conn, RUN_LANE, position, run_id)

                finished = _reconcile_range(ctx, tally, since=since, until=until, after=None, on_commit=on_commit)
                if not finished:
                    raise _interrupted(stop, tally, run_id)
                if not settings.dry_run:
                    lock.check()
                    with transaction(engine, settings.limits) as conn:
                        lock.renew(conn)
                        queries.write_checkpoint(conn, RUN_LANE, Position(until, ""), run_id)
                _refresh_days(engine, settings, tally.days, run_id, since, until)
                return _summary(run_id, "run", settings, tally, since=since, until=until, started=started,
                                status="succeeded", checkpoint=until)

            return _guarded(engine, settings, run_id, body, stop)
    finally:
        engine.dispose()


# --- backfill ---------------------------------------------------------------------------------


EARLIEST = datetime(2015, 1, 1, tzinfo=timezone.utc)  # LiteLLM's SpendLogs start in 2023
LONGEST_WINDOW = timedelta(days=3660)
FUTURE_SLACK = timedelta(minutes=10)  # clocks disagree a little; --until may reach this far ahead


def _check_window(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    since, until = to_aware_utc(since), to_aware_utc(until)
    if since >= until:
        raise UsageError(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
    if since < EARLIEST:
        raise UsageError(f"--since {since.date()} is before {EARLIEST.year}: check the year")
    if until - since > LONGEST_WINDOW:
        raise UsageError(f"the window is longer than {LONGEST_WINDOW.days} days: check the dates, or split it")
    if until > _now() + FUTURE_SLACK:
        # Its slices would be marked done before their rows exist, and re-issuing it would do nothing.
        raise UsageError(f"--until ({until.isoformat()}) is in the future: a backfill covers history;"
                         " the cron `run` covers what comes next")
    return since, until


def backfill(
    settings: JobSettings,
    since: datetime,
    until: datetime,
    *,
    workers: int = 1,
    restart: bool = False,
    stop: StopFlag | None = None,
    progress: ProgressCallback | None = None,
) -> RunSummary:
    """Reconcile [since, until) once, resumably. `workers` > 1 starts that many local processes;
    any process started with the same window and policy joins the same backfill."""
    since, until = _check_window(since, until)
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if settings.dry_run:
        return _dry_run_window(settings, since, until, stop=stop or StopFlag(), progress=progress)
    if workers == 1:
        return _backfill_worker(settings, since, until, restart=restart, stop=stop or StopFlag(),
                                progress=progress)
    return _backfill_pool(settings, since, until, workers=workers, restart=restart, stop=stop or StopFlag())


def _dry_run_window(
    settings: JobSettings, since: datetime, until: datetime, *, stop: StopFlag, progress: ProgressCallback | None
) -> RunSummary:
    engine = make_engine(settings.database)
    try:
        shape = _prepare(engine, settings)
        run_id = _new_run(engine, settings, shape, mode="backfill", since=since, until=until)
        ctx = _Context(engine, settings, shape, run_id, stop, progress)

        def body() -> RunSummary:
            started = _now()
            tally = _Tally()
            finished = _reconcile_range(ctx, tally, since=to_naive_utc(since), until=to_naive_utc(until),
                                        after=None, on_commit=None)
            if not finished:
                raise _interrupted(stop, tally, run_id)
            return _summary(run_id, "backfill", settings, tally, since=since, until=until, started=started,
                            status="succeeded")

        return _guarded(engine, settings, run_id, body, stop)
    finally:
        engine.dispose()


class SliceLost(ReconcileError):
    """Another worker reclaimed our slice (we stopped heartbeating); the batch rolled back."""


def _backfill_worker(
    settings: JobSettings,
    since: datetime,
    until: datetime,
    *,
    restart: bool,
    stop: StopFlag,
    progress: ProgressCallback | None,
) -> RunSummary:
    engine = make_engine(settings.database)
    try:
        shape = _prepare(engine, settings)
        with transaction(engine, settings.limits) as conn:
            backfill_id, total = queries.get_or_create_backfill(
                conn,
                since=since,
                until=until,
                policy=settings.policy,
                tolerance_ms=settings.tolerance_ms,
                call_types=settings.call_types,
                slice_size=settings.slice_size,
            )
            if restart:
                queries.restart_backfill(conn, backfill_id)
            finished_before = queries.backfill_finished_at(conn, backfill_id)
        run_id = _new_run(engine, settings, shape, mode="backfill", since=since, until=until,
                          backfill_id=backfill_id)
        note = (
            f"the backfill of this window and policy (backfill id {backfill_id}) finished at"
            f" {finished_before.isoformat()};"
            " nothing to do (--restart redoes it)"
            if finished_before is not None
            else ""
        )
        ctx = _Context(engine, settings, shape, run_id, stop, progress)

        def body() -> RunSummary:
            refresher = None if settings.dry_run else BackgroundRefresh(engine, _refresh_limits(settings))
            try:
                return walk_slices(_Tally(), refresher)
            except BaseException:
                if refresher is not None:
                    refresher.abandon()
                raise

        def walk_slices(tally: _Tally, refresher: BackgroundRefresh | None) -> RunSummary:
            started = _now()
            waiting_logged = False
            waiting_since: datetime | None = None
            while not stop.requested:
                with transaction(engine, settings.limits) as conn:
                    piece = queries.claim_slice(
                        conn, backfill_id=backfill_id, worker=settings.worker, run_id=run_id,
                        lease=settings.slice_lease,
                    )
                    done, total_now = queries.backfill_progress(conn, backfill_id)
                    queries.heartbeat_run(conn, run_id)
                if piece is None and done >= total_now:
                    break
                if piece is None:
                    # Other workers hold the rest: wait until they finish it, or until a dead
                    # worker's lease lapses and we can take its slice over. Sibling workers of one
                    # command meet this at every run's end: a warning only when the wait is long.
                    if waiting_since is None:
                        waiting_since = _now()
                        log.info("%d slice(s) of this backfill (backfill id %d) are held by other workers;"
                                 " waiting for them", total_now - done, backfill_id)
                    if not waiting_logged and _now() - waiting_since >= HELD_SLICE_WARN:
                        log.warning("%d slice(s) of this backfill (backfill id %d) have been held by other"
                                    " workers, this command's or another's, for %s; waiting for them (a silent"
                                    " worker's slice is reclaimed after %s)", total_now - done,
                                    backfill_id, HELD_SLICE_WARN, settings.slice_lease)
                        waiting_logged = True
                    _pause(stop, min(HELD_SLICE_POLL, settings.slice_lease))
                    continue
                waiting_since = None
                log.info("slice %d of backfill id %d: %s .. %s", piece.slice_no, backfill_id,
                         piece.since.isoformat(), piece.until.isoformat())

                def on_commit(conn: Connection, position: Position | None, scanned: int,
                              piece: queries.Slice = piece) -> None:
                    if not queries.advance_slice(conn, piece, settings.worker, position, scanned):
                        raise SliceLost(f"slice {piece.slice_no} was taken over by another worker")

                def keepalive(conn: Connection, piece: queries.Slice = piece) -> None:
                    on_commit(conn, None, 0, piece)  # heartbeat only: the position stays

                try:
                    finished = _reconcile_range(
                        ctx, tally, since=to_naive_utc(piece.since), until=to_naive_utc(piece.until),
                        after=piece.position, on_commit=on_commit, keepalive=keepalive, slices=(done, total_now),
                        ahead=settings.decide_ahead,
                    )
                except (ReconcileError, sa_exc.SQLAlchemyError, KeyboardInterrupt):
                    _release(engine, settings, piece)
                    raise
                if not finished:
                    _release(engine, settings, piece)
                    break
                with transaction(engine, settings.limits) as conn:
                    queries.finish_slice(conn, piece, settings.worker)
                if refresher is not None:
                    # Slices end at UTC midnights: no other slice writes the days this one touched.
                    refresher.submit(tally.unrefreshed)
                    tally.unrefreshed.clear()
                if progress is not None:
                    progress(Progress("backfill", tally.batches, tally.candidates, dict(tally.outcomes), None,
                                      to_naive_utc(since), to_naive_utc(until), done + 1, total_now))
            if stop.requested:
                raise _interrupted(stop, tally, run_id)
            with transaction(engine, settings.limits) as conn:
                queries.finish_backfill_if_done(conn, backfill_id)
            if refresher is not None and not refresher.close(stop):
                raise _interrupted(stop, tally, run_id)
            # Days whose rebuild failed above are still pending: this refresh takes them.
            _refresh_days(engine, settings, tally.unrefreshed, run_id, since, until)
            return _summary(run_id, "backfill", settings, tally, since=since, until=until, started=started,
                            status="succeeded", message=note)

        return _guarded(engine, settings, run_id, body, stop)
    finally:
        engine.dispose()


def _pause(stop: StopFlag, delay: timedelta) -> None:
    """Sleep up to `delay`, returning early when a stop is requested."""
    deadline = time.monotonic() + delay.total_seconds()
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _release(engine: Engine, settings: JobSettings, piece: queries.Slice) -> None:
    """Best effort: a slice we cannot hand back is reclaimed after --slice-lease anyway."""
    try:
        with transaction(engine, settings.limits) as conn:
            queries.release_slice(conn, piece, settings.worker)
    except sa_exc.SQLAlchemyError as error:
        _log_follow_up_failure(f"release slice {piece.slice_no} (reclaimed after --slice-lease)", error)


def _pool_worker(settings: JobSettings, since: datetime, until: datetime, restart: bool) -> RunSummary:
    """Body of a child process of `backfill --workers N`."""
    stop = StopFlag()
    with graceful_signals(stop):
        return _backfill_worker(settings, since, until, restart=restart, stop=stop, progress=None)


def _stop_with_parent() -> None:
    """Linux: get SIGTERM (a graceful stop after the current batch) when the parent dies, so a
    SIGKILLed `backfill --workers N` leaves no orphans working on. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _pool_entry(reports: Any, index: int, settings: JobSettings, since: datetime, until: datetime,
                restart: bool) -> None:
    """Child process entry: report a summary or (exit code, one-line message) to the parent."""
    # Signals reach a worker only through the parent (below), once per signal the parent got: a
    # terminal's Ctrl-C, sent to the whole process group, would otherwise count twice.
    os.setsid()
    _stop_with_parent()
    try:
        reports.put((index, "ok", _pool_worker(settings, since, until, restart)))
    except ReconcileError as error:
        reports.put((index, str(error.exit_code), str(error)))
    except KeyboardInterrupt:
        reports.put((index, str(EXIT_INTERRUPTED), "interrupted; the open transaction was rolled back"))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which fails the command
        reports.put((index, str(EXIT_FAILED), f"{type(error).__name__}: {error}"))


def _pool_error(code: int, message: str) -> ReconcileError:
    kind: type[ReconcileError] = {EXIT_INTERRUPTED: Interrupted, EXIT_LANE_HELD: LaneHeld, 2: UsageError}.get(
        code, ReconcileError)
    return kind(message)


def _signal_workers(procs: list[Any], reason: str | None) -> None:
    """Pass a stop on to the live workers with the signal the parent received."""
    signum = signal.Signals[reason] if reason in ("SIGINT", "SIGTERM") else signal.SIGTERM
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signum)


def _backfill_pool(
    settings: JobSettings, since: datetime, until: datetime, *, workers: int, restart: bool, stop: StopFlag
) -> RunSummary:
    """Run `workers` child processes. A child that dies without reporting (SIGKILL, OOM) fails
    the command instead of hanging it; a stop request is passed on to the children."""
    started = _now()
    context = multiprocessing.get_context("spawn")
    reports = context.SimpleQueue()
    base = settings.worker
    procs = [
        context.Process(target=_pool_entry, name=f"{base}/w{index}",
                        args=(reports, index, replace(settings, worker=f"{base}/w{index}", decide_ahead=False),
                              since, until, restart and index == 0))
        for index in range(workers)
    ]
    for proc in procs:
        proc.start()
    forwarded = False
    got: dict[int, tuple[str, object]] = {}  # worker index -> ("ok", summary) | (exit code, message)
    try:
        while True:
            while not reports.empty():  # drain as we go: a full pipe would block a reporting child
                index, status, payload = reports.get()
                got[index] = (status, payload)
            alive = [proc for proc in procs if proc.is_alive()]
            if not alive:
                break
            if stop.requested and not forwarded:
                _signal_workers(procs, stop.reason)  # first stop: finish the current batch
                forwarded = True
            multiprocessing.connection.wait([proc.sentinel for proc in alive], timeout=0.2)
    except KeyboardInterrupt:
        _signal_workers(procs, "SIGINT")  # second stop: the workers roll their batch back
        for proc in procs:
            proc.join(timeout=60)
        raise
    while not reports.empty():
        index, status, payload = reports.get()
        got[index] = (status, payload)
    errors: list[tuple[int, str]] = []
    results: list[RunSummary] = []
    for index, proc in enumerate(procs):
        if index not in got:
            how = f"signal {-proc.exitcode}" if proc.exitcode and proc.exitcode < 0 else f"exit {proc.exitcode}"
            errors.append((EXIT_FAILED, f"backfill worker {proc.name} died ({how}) before reporting; re-issue the"
                                        " backfill to finish its slice (reclaimed after --slice-lease)"))
        elif got[index][0] == "ok":
            summary = got[index][1]
            assert isinstance(summary, RunSummary)
            results.append(summary)
        else:
            errors.append((int(got[index][0]), str(got[index][1])))
    if errors:
        rank = {2: 0, EXIT_INTERRUPTED: 1, EXIT_FAILED: 2, EXIT_LANE_HELD: 3}
        code, message = min(errors, key=lambda item: rank.get(item[0], 2))
        if code == EXIT_INTERRUPTED:
            # every interrupted worker says what it had committed (one may have had no batch yet)
            message = "; ".join(sorted({m for c, m in errors if c == EXIT_INTERRUPTED},
                                       key=lambda m: "before any batch" in m))
        raise _pool_error(code, message)
    tally = _Tally()
    for result in results:
        tally.candidates += result.candidates
        tally.batches += result.batches
        for key, value in result.outcomes.items():
            tally.outcomes[key] = tally.outcomes.get(key, 0) + value
        tally.days.update(result.touched_days)
    run_ids = tuple(sorted(r.run_id for r in results))
    notes = sorted({r.message for r in results if r.message})
    # Each worker's corrections belong to its own run: say so, and how to undo them all at once.
    notes.append(f"worker runs {', '.join(map(str, run_ids))}; `rollback --since {since.isoformat()}"
                 f" --until {until.isoformat()}` undoes them all")
    return _summary(min(run_ids), "backfill", settings, tally, since=since, until=until, started=started,
                    status="succeeded", worker_run_ids=run_ids, message="; ".join(notes))


# --- rollback ---------------------------------------------------------------------------------


def rollback(
    settings: JobSettings,
    *,
    run_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    stop: StopFlag | None = None,
    force: bool = False,
) -> RunSummary:
    """Restore the exact old values of a run's (or a window's) corrections, where still ours.

    Refuses (LaneHeld) while an overlapping run looks alive, unless `force`."""
    if run_id is None and (since is None or until is None):
        raise UsageError("rollback needs --run-id N, or both --since and --until")
    if run_id is not None and (since is not None or until is not None):
        raise UsageError("rollback takes either --run-id or --since/--until, not both")
    if since is not None and until is not None:
        since, until = _check_window(since, until)
    stop = stop or StopFlag()
    engine = make_engine(settings.database)
    try:
        shape = _prepare(engine, settings)
        if run_id is not None:
            with transaction(engine, settings.limits) as conn:
                target = queries.run_row(conn, run_id)
            if target is None:
                raise UsageError(f"no run with id {run_id}")
            if target["mode"] == "rollback":
                raise UsageError(f"run {run_id} is itself a rollback; roll back the run it undid by re-running it")
            target_was_dry_run = bool(target["dry_run"])
            # Its rows can be written again by any live run over the same window, not just by itself.
            check_since, check_until = target["window_since"], target["window_until"]
        else:
            target_was_dry_run = False
            check_since, check_until = since, until
        with transaction(engine, settings.limits) as conn:
            busy = queries.live_runs(conn, run_id=run_id, since=check_since, until=check_until,
                                     silent_for=LIVE_WITHIN)
        if busy and not force:
            # Rolling back under a live run would undo only what it had written so far.
            minutes = int(LIVE_WITHIN.total_seconds() // 60)
            runs = f"run {busy[0]} is" if len(busy) == 1 else f"runs {', '.join(map(str, busy))} are"
            raise LaneHeld(
                f"{runs} still writing corrections here (heartbeat within {minutes} min); wait for them to"
                " finish or stop them, then roll back (--force if you know they are dead)"
            )
        mode = resolve_mode(settings.lock_mode, settings.database.pgbouncer)
        with hold_lane(engine, ROLLBACK_LANE, mode=mode, holder=settings.worker, ttl=settings.lease_ttl,
                       limits=settings.limits) as lock:
            this_run = _new_run(engine, settings, shape, mode="rollback", since=since, until=until,
                                policy="rollback")

            def body() -> RunSummary:
                started = _now()
                tally = _Tally(outcomes=oc.empty_counts(oc.ROLLBACK_OUTCOMES + ("missing",)))
                after: tuple[datetime, int] | None = None
                while True:
                    if stop.requested:
                        raise _interrupted(stop, tally, this_run)
                    lock.check()
                    with transaction(engine, settings.limits) as conn:
                        lock.renew(conn)
                        result = queries.rollback_batch(
                            conn, shape, rollback_run_id=this_run, target_run_id=run_id,
                            since=to_naive_utc(since) if since else None,
                            until=to_naive_utc(until) if until else None,
                            after=after, limit=settings.batch_size,
                        )
                        counts = {oc.REVERTED: result.reverted, oc.CHANGED: result.changed,
                                  "missing": result.missing}
                        queries.add_run_counts(conn, this_run, result.selected, counts)
                        if settings.dry_run:
                            conn.rollback()
                        else:
                            dashboard.mark_pending(conn, (d.date() for d in result.days))
                    tally.add(result.selected, counts)
                    tally.days.update(d.date() for d in result.days)
                    if result.last is None or result.selected < settings.batch_size:
                        break
                    after = result.last
                _refresh_days(engine, settings, tally.days, this_run, since, until)
                return _summary(this_run, "rollback", settings, tally, since=since, until=until,
                                started=started, status="succeeded", policy="rollback",
                                message=_rollback_message(run_id, target_was_dry_run, tally, settings.dry_run))

            return _guarded(engine, settings, this_run, body, stop)
    finally:
        engine.dispose()


def _rollback_message(run_id: int | None, target_was_dry_run: bool, tally: _Tally, dry_run: bool) -> str:
    """The rollback's summary line: what it undid, or why there was nothing to undo."""
    what = f"run {run_id}" if run_id is not None else "the window"
    if target_was_dry_run:
        return f"nothing to roll back: run {run_id} was a dry run and changed nothing"
    if tally.outcomes.get(oc.REVERTED, 0) == 0:
        changed = tally.outcomes.get(oc.CHANGED, 0)
        why = (f"{changed} value(s) were changed by someone else since and are left alone" if changed
               else "no applied corrections are left (already rolled back, or it repaired nothing)")
        return f"nothing to roll back in {what}: {why}"
    if dry_run:
        return f"would roll back {what} (dry run: nothing changed)"
    return f"rolled back {what}"
