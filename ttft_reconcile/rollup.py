"""The `ttft_daily` rollup rebuilt while a backfill goes on.

A backfill's slices end at UTC midnights, so once a worker has finished a slice, no other slice
of the backfill writes the days it touched. Those days are rebuilt here, one day per
transaction, on a connection of their own in a background thread: the server rebuilds them on
one core while the next batches run on the other, instead of rebuilding every day after the
last batch (and a dashboard fills in as a long backfill goes).

A refresh that fails leaves its day marked in `rollup_pending` (its transaction rolled back), so
the command's closing refresh, which takes the pending days of its window, does it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from datetime import date

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ttft_reconcile import dashboard
from ttft_reconcile.db import Cancellable, SessionLimits, describe_db_error, transaction
from ttft_reconcile.signals import StopFlag

log = logging.getLogger(__name__)

_STOP = date.min  # the queue's end marker (no rollup day is 0001-01-01)
_POLL_S = 0.1  # how often a waiting `close` looks for a stop request, seconds
_CANCEL_WAIT_S = 2.0  # how long `abandon` waits for a cancelled rebuild to roll back, seconds


class BackgroundRefresh:
    """Rebuilds the UTC days handed to `submit` in a thread; `close` waits for all of them.

    No heartbeat is written from here: the batches heartbeat the run, and an UPDATE of the run row
    held for a whole refresh would make the next batch's UPDATE of it wait.
    """

    def __init__(self, engine: Engine, limits: SessionLimits) -> None:
        self._engine = engine
        self._limits = limits
        self._days: queue.SimpleQueue[date] = queue.SimpleQueue()
        self._abandoned = False
        self._failed = False
        self._busy = Cancellable("the rollup rebuild")  # the connection of a rebuild under way
        self._thread = threading.Thread(target=self._work, name="ttft-rollup", daemon=True)
        self._thread.start()

    def submit(self, days: Iterable[date]) -> None:
        """Queue these days for a rebuild (after the transaction that last changed them committed)."""
        for day in sorted(set(days)):
            self._days.put(day)

    def close(self, stop: StopFlag) -> bool:
        """Wait until every submitted day is rebuilt (or has failed, and stays pending). A stop
        request meanwhile abandons the rest; returns False then."""
        self._days.put(_STOP)
        while self._thread.is_alive():
            if stop.requested:
                self.abandon()
                return False
            self._thread.join(_POLL_S)
        return True

    def abandon(self) -> None:
        """Stop now (the command is failing or was interrupted): a rebuild under way is cancelled on
        the server (it would otherwise run on after we exit, and hold the rollup's lock against the
        re-issued command) and rolls back; queued days are skipped. They all stay pending for the
        next command."""
        self._abandoned = True
        self._days.put(_STOP)
        self._busy.cancel()
        self._thread.join(_CANCEL_WAIT_S)

    def _work(self) -> None:
        while (day := self._days.get()) != _STOP:
            if self._abandoned or self._failed:
                continue  # skipped days stay pending: the closing refresh or the next command takes them
            try:
                started = time.monotonic()
                with transaction(self._engine, self._limits) as conn, self._busy.running_on(conn):
                    # One core for the rollup: parallel workers would take the batches' core.
                    conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
                    rows = dashboard.refresh_day_range(conn, day, day)
                log.debug("ttft_daily refreshed for %s behind the batches: %d row(s) in %.2f s", day, rows,
                          time.monotonic() - started)
            except sa_exc.SQLAlchemyError as error:
                self._failed = True
                if not self._abandoned:
                    log.info("ttft_daily refresh of %s left for the end of the run: %s", day,
                             describe_db_error(error))
            except Exception as error:  # a thread's exception would only print a traceback
                self._failed = True
                log.warning("ttft_daily refresh of %s left for the end of the run: %r", day, error)
